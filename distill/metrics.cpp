#include "distill/metrics.h"

#include "formats/markup.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <stdexcept>

#include "formats/atomic_file.h"

namespace linearize {

std::int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:  123456 kB"
  return 0;
}

void reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}
namespace {

using nlohmann::json;

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

std::string duration(double seconds) {
  const auto s = static_cast<long long>(std::llround(std::max(0.0, seconds)));
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return buffer;
}

std::string rate(double per_second) {
  if (per_second >= 1e6) return format("%.1fM", per_second / 1e6);
  if (per_second >= 1e3) return format("%.1fk", per_second / 1e3);
  return format("%.0f", per_second);
}

// Chart geometry, in SVG user units.
constexpr double kWidth = 640, kHeight = 300, kLeft = 64, kRight = 16, kTop = 32, kBottom = 44;
constexpr double kPlotWidth = kWidth - kLeft - kRight, kPlotHeight = kHeight - kTop - kBottom;
// Category labels under a bar chart: 560 px of plot fit ~16 labels like "layer 12" at font-size 11.
constexpr std::size_t kMaxAxisLabels = 16;
const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};

const char* color(std::size_t i) { return kColors[i % (sizeof kColors / sizeof kColors[0])]; }

struct Range {
  double lo = 0, hi = 1;
  double to_unit(double v) const { return (v - lo) / (hi - lo); }
};

Range range_of(double lo, double hi) {
  if (!(lo < hi)) return {lo - 1, lo + 1};  // empty or one value
  return {lo, hi};
}

std::string svg_open(const std::string& title) {
  return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + format("%.0f", kWidth) + "\" height=\"" + format("%.0f", kHeight) +
         "\" viewBox=\"0 0 " + format("%.0f", kWidth) + " " + format("%.0f", kHeight) + "\" role=\"img\">\n<title>" + escape_markup(title) +
         "</title>\n<text x=\"" + format("%.1f", kWidth / 2) + "\" y=\"18\" text-anchor=\"middle\" font-weight=\"bold\">" + escape_markup(title) +
         "</text>\n<rect x=\"" + format("%.1f", kLeft) + "\" y=\"" + format("%.1f", kTop) + "\" width=\"" + format("%.1f", kPlotWidth) +
         "\" height=\"" + format("%.1f", kPlotHeight) + "\" fill=\"none\" stroke=\"#999\"/>\n";
}

// Five y ticks with labels; `label` turns a tick's axis value into the number shown.
std::string y_axis(const Range& y, const std::string& y_label, const std::function<double(double)>& label) {
  std::string svg;
  for (int i = 0; i <= 4; ++i) {
    const double v = y.lo + (y.hi - y.lo) * i / 4.0, py = kTop + kPlotHeight * (1 - y.to_unit(v));
    svg += "<line x1=\"" + format("%.1f", kLeft - 4) + "\" x2=\"" + format("%.1f", kLeft) + "\" y1=\"" + format("%.1f", py) + "\" y2=\"" +
           format("%.1f", py) + "\" stroke=\"#999\"/><text x=\"" + format("%.1f", kLeft - 6) + "\" y=\"" + format("%.1f", py + 4) +
           "\" text-anchor=\"end\" font-size=\"11\">" + format("%.3g", label(v)) + "</text>\n";
  }
  svg += "<text transform=\"translate(14," + format("%.1f", kTop + kPlotHeight / 2) + ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" +
         escape_markup(y_label) + "</text>\n";
  return svg;
}

std::string legend(const std::vector<std::string>& names) {
  std::string svg;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const double y = kTop + 14 + 14.0 * static_cast<double>(i);
    svg += "<rect x=\"" + format("%.1f", kWidth - kRight - 150) + "\" y=\"" + format("%.1f", y - 9) + "\" width=\"10\" height=\"10\" fill=\"" +
           color(i) + "\"/><text x=\"" + format("%.1f", kWidth - kRight - 136) + "\" y=\"" + format("%.1f", y) + "\" font-size=\"11\">" +
           escape_markup(names[i]) + "</text>\n";
  }
  return svg;
}

std::string line_chart_svg(const LineChart& chart) {
  const auto keep = [&](double y) { return std::isfinite(y) && (!chart.log_y || y > 0); };
  const auto axis_y = [&](double y) { return chart.log_y ? std::log10(y) : y; };
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (const auto& series : chart.series) {
    for (const auto& [x, y] : series.points) {
      if (!keep(y) || !std::isfinite(x)) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, axis_y(y)), y_hi = std::max(y_hi, axis_y(y));
    }
  }
  const Range x = range_of(x_lo, x_hi), y = range_of(y_lo, y_hi);
  std::string svg = svg_open(chart.title);
  svg += y_axis(y, chart.y_label + (chart.log_y ? " (log scale)" : ""), [&](double v) { return chart.log_y ? std::pow(10.0, v) : v; });
  for (int i = 0; i <= 4; ++i) {
    const double v = x.lo + (x.hi - x.lo) * i / 4.0, px = kLeft + kPlotWidth * x.to_unit(v);
    svg += "<text x=\"" + format("%.1f", px) + "\" y=\"" + format("%.1f", kTop + kPlotHeight + 16) + "\" text-anchor=\"middle\" font-size=\"11\">" +
           format("%.6g", v) + "</text>\n";
  }
  svg += "<text x=\"" + format("%.1f", kLeft + kPlotWidth / 2) + "\" y=\"" + format("%.1f", kHeight - 6) + "\" text-anchor=\"middle\" font-size=\"12\">" +
         escape_markup(chart.x_label) + "</text>\n";
  std::vector<std::string> names;
  for (std::size_t s = 0; s < chart.series.size(); ++s) {
    std::string points;
    for (const auto& [px, py] : chart.series[s].points) {
      if (!keep(py) || !std::isfinite(px)) continue;
      points += (points.empty() ? "" : " ") + format("%.1f", kLeft + kPlotWidth * x.to_unit(px)) + "," +
                format("%.1f", kTop + kPlotHeight * (1 - y.to_unit(axis_y(py))));
    }
    svg += "<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"" + std::string(color(s)) + "\" points=\"" + points + "\"/>\n";
    names.push_back(chart.series[s].name);
  }
  return svg + legend(names) + "</svg>\n";
}

std::string bar_chart_svg(const BarChart& chart) {
  double hi = 0;
  for (const auto& [name, values] : chart.bars) {
    for (double v : values) {
      if (std::isfinite(v)) hi = std::max(hi, v);
    }
  }
  const Range y{0, hi > 0 ? hi : 1};
  std::string svg = svg_open(chart.title) + y_axis(y, chart.y_label, [](double v) { return v; });
  const double group = kPlotWidth / static_cast<double>(std::max<std::size_t>(1, chart.labels.size()));
  const double bar = group * 0.8 / static_cast<double>(std::max<std::size_t>(1, chart.bars.size()));
  std::vector<std::string> names;
  for (std::size_t s = 0; s < chart.bars.size(); ++s) {
    const auto& [name, values] = chart.bars[s];
    names.push_back(name);
    for (std::size_t i = 0; i < values.size() && i < chart.labels.size(); ++i) {
      if (!std::isfinite(values[i])) continue;
      const double h = kPlotHeight * y.to_unit(std::max(0.0, values[i]));
      svg += "<rect x=\"" + format("%.1f", kLeft + group * (static_cast<double>(i) + 0.1) + bar * static_cast<double>(s)) + "\" y=\"" +
             format("%.1f", kTop + kPlotHeight - h) + "\" width=\"" + format("%.1f", bar) + "\" height=\"" + format("%.1f", h) + "\" fill=\"" +
             color(s) + "\"><title>" + escape_markup(name + ", " + chart.labels[i] + ": " + format("%.6g", values[i])) + "</title></rect>\n";
    }
  }
  // At most ~kMaxAxisLabels labels fit under the plot (a 30-layer chart's ran into each other): every k-th.
  const std::size_t every = (chart.labels.size() + kMaxAxisLabels - 1) / kMaxAxisLabels;
  for (std::size_t i = 0; i < chart.labels.size(); i += std::max<std::size_t>(every, 1)) {
    svg += "<text x=\"" + format("%.1f", kLeft + group * (static_cast<double>(i) + 0.5)) + "\" y=\"" + format("%.1f", kTop + kPlotHeight + 16) +
           "\" text-anchor=\"middle\" font-size=\"11\">" + escape_markup(chart.labels[i]) + "</text>\n";
  }
  return svg + legend(names) + "</svg>\n";
}

std::string heatmap_svg(const HeatMap& map) {
  const double columns = static_cast<double>(std::max<std::size_t>(1, map.columns.size()));
  const double rows = static_cast<double>(std::max<std::size_t>(1, map.rows.size()));
  const double cell_w = kPlotWidth / columns, cell_h = kPlotHeight / rows;
  std::string svg = svg_open(map.title);
  for (std::size_t r = 0; r < map.values.size() && r < map.rows.size(); ++r) {
    const double y = kTop + cell_h * static_cast<double>(r);
    for (std::size_t c = 0; c < map.values[r].size() && c < map.columns.size(); ++c) {
      const double v = map.values[r][c], x = kLeft + cell_w * static_cast<double>(c);
      if (!std::isfinite(v)) continue;
      const int shade = static_cast<int>(std::lround(255 * (1 - std::clamp(v, 0.0, 1.0))));  // 1: dark blue, 0: white
      svg += "<rect x=\"" + format("%.1f", x) + "\" y=\"" + format("%.1f", y) + "\" width=\"" + format("%.1f", cell_w) + "\" height=\"" +
             format("%.1f", cell_h) + "\" fill=\"rgb(" + std::to_string(shade) + "," + std::to_string(shade) + ",255)\" stroke=\"#fff\"/>" +
             "<text x=\"" + format("%.1f", x + cell_w / 2) + "\" y=\"" + format("%.1f", y + cell_h / 2 + 4) + "\" text-anchor=\"middle\" font-size=\"11\" fill=\"" +
             (v > 0.5 ? "#fff" : "#000") + "\">" + format("%.2f", v) + "</text>\n";
    }
  }
  for (std::size_t c = 0; c < map.columns.size(); ++c)
    svg += "<text x=\"" + format("%.1f", kLeft + cell_w * (static_cast<double>(c) + 0.5)) + "\" y=\"" + format("%.1f", kTop + kPlotHeight + 16) +
           "\" text-anchor=\"middle\" font-size=\"11\">" + escape_markup(map.columns[c]) + "</text>\n";
  for (std::size_t r = 0; r < map.rows.size(); ++r)
    svg += "<text x=\"" + format("%.1f", kLeft - 6) + "\" y=\"" + format("%.1f", kTop + cell_h * (static_cast<double>(r) + 0.5) + 4) +
           "\" text-anchor=\"end\" font-size=\"11\">" + escape_markup(map.rows[r]) + "</text>\n";
  svg += "<text x=\"" + format("%.1f", kLeft + kPlotWidth / 2) + "\" y=\"" + format("%.1f", kHeight - 6) + "\" text-anchor=\"middle\" font-size=\"12\">" +
         escape_markup(map.x_label) + "</text>\n<text transform=\"translate(14," + format("%.1f", kTop + kPlotHeight / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" + escape_markup(map.y_label) + "</text>\n";
  return svg + "</svg>\n";
}

std::string table_html(const Table& table) {
  std::string html = "<h2>" + escape_markup(table.title) + "</h2>\n<table>\n<tr>";
  for (const auto& h : table.header) html += "<th>" + escape_markup(h) + "</th>";
  html += "</tr>\n";
  for (const auto& row : table.rows) {
    html += "<tr>";
    for (const auto& cell : row) html += "<td>" + escape_markup(cell) + "</td>";
    html += "</tr>\n";
  }
  return html + "</table>\n";
}

}  // namespace

MetricsLog::MetricsLog(std::filesystem::path path, std::optional<std::int64_t> resume_step) : path_(std::move(path)) {
  if (resume_step && std::filesystem::exists(path_)) {
    std::ifstream in(path_);
    std::string kept, line;
    while (std::getline(in, line)) {
      // A torn last line (killed mid-write) does not parse and is dropped with the later records.
      const json record = json::parse(line, nullptr, false);
      if (record.is_discarded() || !record.is_object()) continue;
      if (record.value("step", std::int64_t{0}) <= *resume_step) kept += line + "\n";
    }
    write_file_atomic(path_, kept);
  }
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr) throw std::runtime_error(path_.string() + ": cannot open for appending");
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::append(const json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    throw std::runtime_error(path_.string() + ": write failed");
  }
}

ProgressReporter::ProgressReporter(std::FILE* out, bool live, Clock clock) : out_(out), live_(live), clock_(std::move(clock)) {
  if (!clock_) {
    clock_ = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  }
}

bool ProgressReporter::is_tty(std::FILE* out) { return ::isatty(::fileno(out)) == 1; }

void ProgressReporter::start(const std::string& stage, std::int64_t first_step, std::int64_t total_steps) {
  finish();
  stage_ = stage;
  first_step_ = first_step;
  total_steps_ = total_steps;
  start_time_ = clock_();
}

void ProgressReporter::update(std::int64_t step, double loss, std::int64_t tokens) {
  if (out_ == nullptr) return;
  const double elapsed = clock_() - start_time_;
  const auto done = static_cast<double>(step - first_step_);
  std::string line = stage_ + "  step " + std::to_string(step) + "/" + std::to_string(total_steps_) + "  loss " + format("%.5g", loss);
  if (elapsed > 0 && done > 0) {
    line += "  " + rate(static_cast<double>(tokens) / elapsed) + " tok/s  ETA " +
            duration(elapsed / done * static_cast<double>(total_steps_ - step));
  }
  if (live_) {
    std::fprintf(out_, "\r%s\x1b[K", line.c_str());  // erase what a longer previous line left
    line_open_ = true;
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

void ProgressReporter::finish() {
  if (line_open_) {
    std::fputc('\n', out_);
    std::fflush(out_);
    line_open_ = false;
  }
}


std::string render_report_html(const Report& report) {
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>" + escape_markup(report.title) +
                     "</title>\n<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;text-align:left;vertical-align:top}</style>\n</head>\n<body>\n<h1>" +
                     escape_markup(report.title) + "</h1>\n";
  if (!report.summary.empty()) {
    html += "<table>\n";
    for (const auto& [key, value] : report.summary) html += "<tr><th>" + escape_markup(key) + "</th><td>" + escape_markup(value) + "</td></tr>\n";
    html += "</table>\n";
  }
  for (const auto& chart : report.curves) html += "<figure>\n" + line_chart_svg(chart) + "</figure>\n";
  for (const auto& chart : report.bars) html += "<figure>\n" + bar_chart_svg(chart) + "</figure>\n";
  for (const auto& map : report.heatmaps) html += "<figure>\n" + heatmap_svg(map) + "</figure>\n";
  for (const auto& table : report.tables) html += table_html(table);
  return html + "</body>\n</html>\n";
}

void write_report_html(const std::filesystem::path& path, const Report& report) { write_file_atomic(path, render_report_html(report)); }

}  // namespace linearize
