// Run records: metrics.jsonl lines parse and survive a resume without duplicates, the progress line (live
// and plain, rate and ETA from an injected clock), and report.html's structure and escaping.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <regex>
#include <sstream>

#include "distill/metrics.h"
#include "test_util.h"

namespace linearize {
namespace {

using nlohmann::json;

std::vector<json> read_records(const std::filesystem::path& path) {
  std::vector<json> records;
  std::istringstream in(test::read_file(path));
  for (std::string line; std::getline(in, line);) records.push_back(json::parse(line));  // throws if a line is not JSON
  return records;
}

TEST(MetricsLogTest, OneFlushedJsonRecordPerLine) {
  test::TempDir dir;
  MetricsLog log(dir / "metrics.jsonl");
  for (int step = 1; step <= 3; ++step) {
    log.append({{"step", step * 10}, {"stage", "stage1"}, {"loss", 1.0 / step}, {"note", "a \"quoted\"\nline"}});
    EXPECT_EQ(read_records(dir / "metrics.jsonl").size(), static_cast<std::size_t>(step));  // visible before close
  }
  const auto records = read_records(dir / "metrics.jsonl");
  EXPECT_EQ(records[2]["step"], 30);
  EXPECT_EQ(records[0]["note"], "a \"quoted\"\nline");
}

TEST(MetricsLogTest, ResumeDropsRecordsAfterTheCheckpointAndATornLine) {
  test::TempDir dir;
  test::write_file(dir / "metrics.jsonl", "{\"step\": 10}\n{\"step\": 20}\n{\"step\": 30}\n{\"step\": 4");
  {
    MetricsLog log(dir / "metrics.jsonl", 20);
    log.append({{"step", 30}, {"resumed", true}});
  }
  const auto records = read_records(dir / "metrics.jsonl");
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[1]["step"], 20);
  EXPECT_EQ(records[2], (json{{"step", 30}, {"resumed", true}}));
}

std::string captured(const std::function<void(std::FILE*)>& write) {
  char* buffer = nullptr;
  std::size_t size = 0;
  std::FILE* out = open_memstream(&buffer, &size);
  write(out);
  std::fclose(out);
  std::string text(buffer, size);
  std::free(buffer);
  return text;
}

TEST(ProgressReporterTest, PlainLinesWithRateAndEta) {
  double now = 100;
  const auto text = captured([&](std::FILE* out) {
    ProgressReporter progress(out, false, [&] { return now; });
    progress.start("stage1", 20, 120);  // resumed at step 20: the rate counts from there
    progress.update(20, 1.5, 0);
    now = 110;
    progress.update(30, 0.123456, 51200);  // 10 steps in 10 s: 90 left take 90 s
  });
  EXPECT_EQ(text, "stage1  step 20/120  loss 1.5\nstage1  step 30/120  loss 0.12346  5.1k tok/s  ETA 0:01:30\n");
}

TEST(ProgressReporterTest, LiveLineIsRewrittenInPlace) {
  double now = 0;
  const auto text = captured([&](std::FILE* out) {
    ProgressReporter progress(out, true, [&] { return now; });
    progress.start("stage2", 0, 10);
    now = 3600;
    progress.update(1, 2, 100);
    now = 7200;
    progress.update(2, 1, 200);
    progress.finish();
  });
  EXPECT_EQ(text, "\rstage2  step 1/10  loss 2  0 tok/s  ETA 9:00:00\x1b[K\rstage2  step 2/10  loss 1  0 tok/s  ETA 8:00:00\x1b[K\n");
}

// Every opened tag is closed in order (void elements are written self-closed): a malformed document
// would render as a broken page or drop charts.
void expect_balanced(const std::string& html) {
  std::vector<std::string> open;
  const std::regex tag("<(/?)([a-zA-Z]+)[^>]*?(/?)>");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), tag); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    if (m[3] == "/") continue;
    if (m[1] == "/") {
      ASSERT_FALSE(open.empty()) << "stray </" << m[2] << ">";
      ASSERT_EQ(open.back(), m[2].str());
      open.pop_back();
    } else {
      open.push_back(m[2]);
    }
  }
  EXPECT_TRUE(open.empty()) << open.size() << " unclosed, first " << open.front();
}

TEST(ReportTest, HtmlHasTheSeriesAsInlineSvgAndEscapesText) {
  Report report;
  report.title = "Run <tiny> & \"friends\"";
  report.summary = {{"recipe", "lolcats"}, {"KL <= 0.1", "yes"}};
  report.curves.push_back({"Stage 1 loss", "step", "MSE x 1000", true,
                           {{"train", {{0, 10}, {10, 1}, {20, 0.1}, {30, NAN}, {40, 0}}}, {"validation", {{0, 12}, {20, 0.2}}}}});
  report.bars.push_back({"Per-layer error", "relative error", {"layer 0", "layer 1"}, {{"before", {0.5, 0.7}}, {"after", {0.05, 0.07}}}});
  const std::string html = render_report_html(report);
  expect_balanced(html);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://", html.find("<body")), html.find("http://www.w3.org/2000/svg"));  // only the SVG namespace
  EXPECT_NE(html.find("<h1>Run &lt;tiny&gt; &amp; &quot;friends&quot;</h1>"), std::string::npos);
  EXPECT_NE(html.find("<th>KL &lt;= 0.1</th>"), std::string::npos);
  EXPECT_NE(html.find(">train</text>"), std::string::npos);
  EXPECT_NE(html.find(">validation</text>"), std::string::npos);
  EXPECT_NE(html.find("MSE x 1000 (log scale)"), std::string::npos);
  // Log scale from 0.1 to 12: the train curve keeps its three positive finite points, the first at the
  // left edge; NaN and 0 (no logarithm) are left out.
  const std::regex polyline("<polyline[^>]*points=\"([^\"]*)\"");
  std::vector<std::string> points;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), polyline); it != std::sregex_iterator(); ++it) points.push_back((*it)[1]);
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(std::count(points[0].begin(), points[0].end(), ','), 3);
  EXPECT_EQ(points[0].substr(0, 5), "64.0,");
  // Bars: four rects with a tooltip each, the tallest (0.7) filling the plot height.
  EXPECT_NE(html.find("<title>before, layer 1: 0.7</title>"), std::string::npos);
  EXPECT_NE(html.find("height=\"224.0\" fill=\"#1f77b4\"><title>before, layer 1"), std::string::npos);

  test::TempDir dir;
  write_report_html(dir / "report.html", report);
  EXPECT_EQ(test::read_file(dir / "report.html"), html);
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"report.html"});
}

// A 30-layer bar chart labels every second layer (at most 16 labels fit under the plot), starting at 0.
TEST(ReportTest, ManyBarsLabelEveryKthCategory) {
  Report report;
  BarChart chart{"Per-layer loss", "MSE", {}, {{"after", {}}}};
  for (int i = 0; i < 30; ++i) {
    chart.labels.push_back("layer " + std::to_string(i));
    chart.bars[0].second.push_back(0.1 * (i + 1));
  }
  report.bars.push_back(chart);
  const std::string html = render_report_html(report);
  EXPECT_NE(html.find(">layer 0</text>"), std::string::npos);
  EXPECT_NE(html.find(">layer 28</text>"), std::string::npos);
  EXPECT_EQ(html.find(">layer 1</text>"), std::string::npos);
  EXPECT_EQ(html.find(">layer 29</text>"), std::string::npos);
  EXPECT_NE(html.find("<title>after, layer 29: 3</title>"), std::string::npos) << "every bar keeps its tooltip";
}

}  // namespace
}  // namespace linearize
