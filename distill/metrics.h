// Run records (docs/distillation.md#metrics-and-report): metrics.jsonl (one JSON object per log step, flushed at once, so a
// killed run keeps everything it logged), the progress line, and report.html (loss curves and per-layer
// bars as inline SVG: no JavaScript, nothing fetched from the network).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace linearize {

class MetricsLog {
 public:
  // Appends to `path` (created if missing). With `resume_step`, first drops the records whose "step" lies
  // beyond it: they were logged after the checkpoint the run resumes from and will be logged again.
  explicit MetricsLog(std::filesystem::path path, std::optional<std::int64_t> resume_step = std::nullopt);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  void append(const nlohmann::json& record);  // one line; throws std::runtime_error naming the file on failure

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

// The process's peak resident memory (VmHWM, bytes) since the last reset_peak_rss(), or since it started
// where the kernel refuses the reset; 0 where /proc is unavailable. Training records log it per stage.
std::int64_t peak_rss_bytes();
void reset_peak_rss();  // Linux >= 4.0: /proc/self/clear_refs "5"

// "stage1  step 120/1000  loss 0.01234  5.1k tok/s  ETA 0:12:34". Live (a TTY): rewritten in place with \r;
// otherwise one plain line per update, for logs.
class ProgressReporter {
 public:
  using Clock = std::function<double()>;  // seconds, monotonic
  ProgressReporter(std::FILE* out, bool live, Clock clock = {});  // a null `out` shows nothing
  static bool is_tty(std::FILE* out);

  // A stage starts (or resumes) at `first_step` of `total_steps`; rates and the ETA count from here.
  void start(const std::string& stage, std::int64_t first_step, std::int64_t total_steps);
  // `tokens` processed since start().
  void update(std::int64_t step, double loss, std::int64_t tokens);
  void finish();  // ends a live line

 private:
  std::FILE* out_;
  bool live_;
  Clock clock_;
  std::string stage_;
  std::int64_t first_step_ = 0, total_steps_ = 0;
  double start_time_ = 0;
  bool line_open_ = false;
};

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite y values are left out
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_y = false;  // losses span decades; needs y > 0 (other points are left out)
  std::vector<Series> series;
};

struct BarChart {
  std::string title, y_label;
  std::vector<std::string> labels;                             // one group per label (e.g. a layer)
  std::vector<std::pair<std::string, std::vector<double>>> bars;  // per series: a value per label
};

// A grid of fractions in [0, 1] (passkey accuracy by length and depth): each cell shaded from white (0) to
// dark (1) and labelled with its value; NaN cells are left blank.
struct HeatMap {
  std::string title, x_label, y_label;
  std::vector<std::string> columns, rows;
  std::vector<std::vector<double>> values;  // [row][column]
};

struct Table {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

struct Report {
  std::string title;
  std::vector<std::pair<std::string, std::string>> summary;  // a key / value table
  std::vector<LineChart> curves;
  std::vector<BarChart> bars;
  std::vector<HeatMap> heatmaps;
  std::vector<Table> tables;
};

std::string render_report_html(const Report& report);
void write_report_html(const std::filesystem::path& path, const Report& report);  // atomically

}  // namespace linearize
