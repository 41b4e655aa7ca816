#include "distill/report.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <string>

#include "converter/model_config.h"
#include "distill/metrics.h"

namespace linearize {
namespace fs = std::filesystem;
namespace {

std::vector<nlohmann::json> read_records(const fs::path& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) records.push_back(nlohmann::json::parse(line));
  return records;
}

}  // namespace

void write_report(const fs::path& out, const RunConfig& config, const DistillResult& result,
                  const std::vector<std::int64_t>& layers, const EvalResult* eval) {
  Report report;
  report.title = "linearize distill: " + config.recipe.name + " on " + config.model;
  report.summary = {{"model", config.model}, {"recipe", config.recipe.name}, {"steps", std::to_string(result.step)}};
  auto figure = [](double v) { return std::to_string(v); };
  // What trained and what stayed as the source had it (a MoE source's experts and routers among the latter).
  std::string targets;
  for (const auto& t : config.stage2.lora.targets) targets += (targets.empty() ? "" : ", ") + t;
  report.summary.emplace_back("trained", "the recipe's tensors (stage 1), LoRA on " + targets + " (stage 2)");
  const auto source = load_model_config(fs::path(config.model) / "config.json");
  std::int64_t routed = 0;
  for (std::int64_t i = 0; i < source.num_hidden_layers; ++i) routed += source.is_sparse(i) ? 1 : 0;
  report.summary.emplace_back("frozen", routed == 0 ? "every source weight"
                                                    : "every source weight, the experts and routers of " + std::to_string(routed) +
                                                          " MoE layers included (no router drift)");
  if (result.initial_transfer_loss && result.final_transfer_loss) {
    report.summary.emplace_back("stage 1 validation loss", figure(*result.initial_transfer_loss) + " -> " +
                                                               figure(*result.final_transfer_loss));
  }
  const std::vector<std::pair<std::string, std::optional<QualityFigures>>> columns{
      {"training-free", result.before}, {"after stage 1", result.after_stage1}, {"final", result.after}};
  for (const auto& [label, q] : columns) {
    if (!q) continue;
    report.summary.emplace_back("perplexity, " + label, figure(q->student_perplexity) + " (teacher " +
                                                           figure(q->teacher_perplexity) + ")");
    report.summary.emplace_back("KL(teacher || student), " + label, figure(q->kl));
  }
  // Rank 0's records, then the layer plans other ranks trained in a block-parallel stage 1 (their
  // stage-2 records repeat rank 0's; their per-layer validation predates the broadcast, rank 0 logs the
  // final one).
  auto records = read_records(out / "metrics.jsonl");
  std::vector<fs::path> rank_logs;
  for (const auto& entry : fs::directory_iterator(out))
    if (entry.is_directory() && entry.path().filename().string().rfind("rank", 0) == 0 && fs::exists(entry.path() / "metrics.jsonl"))
      rank_logs.push_back(entry.path() / "metrics.jsonl");
  std::sort(rank_logs.begin(), rank_logs.end());
  for (const auto& log : rank_logs)
    for (auto& r : read_records(log))
      if (r.value("stage", std::string()).rfind("stage1.", 0) == 0) {
        r.erase("val_layer_loss");
        records.push_back(std::move(r));
      }
  std::map<std::string, LineChart> curves;
  std::vector<double> first_layers, last_layers;
  for (const auto& r : records) {
    const auto stage = r.value("stage", std::string("stage1"));
    auto& curve = curves.try_emplace(stage, LineChart{stage == "stage2" ? "stage 2: LoRA" : "stage 1: attention transfer (" + stage + ")",
                                                      "optimiser step", "loss", true, {{"training", {}}, {"validation", {}}}})
                      .first->second;
    const auto step = static_cast<double>(r.value("step", std::int64_t{0}));
    if (r.contains("loss")) curve.series[0].points.emplace_back(step, r["loss"].get<double>());
    if (r.contains("val_loss")) curve.series[1].points.emplace_back(step, r["val_loss"].get<double>());
    if (r.contains("val_layer_loss")) {
      last_layers = r["val_layer_loss"].get<std::vector<double>>();
      if (first_layers.empty()) first_layers = last_layers;
    }
  }
  for (auto& [stage, curve] : curves) report.curves.push_back(std::move(curve));
  if (!layers.empty()) {
    const auto loss_name = to_string(config.stage1.loss);
    BarChart bars{"per-layer stage 1 loss (" + loss_name + ", validation)", loss_name, {}, {{"before", first_layers}, {"after", last_layers}}};
    for (const auto layer : layers) bars.labels.push_back("layer " + std::to_string(layer));
    report.bars.push_back(std::move(bars));
  }
  if (eval) {  // the trained student's quality by position, passkey grids and generations (linearize eval's charts)
    auto figures = eval_report(*eval, "");
    for (auto& [key, value] : figures.summary) report.summary.emplace_back("eval: " + key, std::move(value));
    for (auto& chart : figures.curves) report.curves.push_back(std::move(chart));
    report.heatmaps = std::move(figures.heatmaps);
    report.tables = std::move(figures.tables);
  }
  write_report_html(out / "report.html", report);
}

}  // namespace linearize
