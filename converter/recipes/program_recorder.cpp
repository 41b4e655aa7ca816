#include "converter/recipes/program_recorder.h"

namespace linearize::recipes {

ProgramRecorder::Value ProgramRecorder::op(const char* name, const std::vector<Value>& in, const nlohmann::json& attributes) {
  nlohmann::json entry = {{"op", name}, {"in", in}, {"out", ++last_}};
  entry.update(attributes);
  ops_.push_back(std::move(entry));
  return last_;
}

Heads<ProgramRecorder::Value> ProgramRecorder::project_heads(Value x) {
  const Value q = last_ + 1, k = last_ + 2, v = last_ + 3;
  ops_.push_back({{"op", "project_heads"}, {"in", {x}}, {"out", {q, k, v}}});
  last_ = v;
  return {q, k, v};
}

ProgramRecorder::Value ProgramRecorder::linear(Value v, const std::string& weight, const std::string& bias) {
  return op("linear", {v}, {{"weight", weight}, {"bias", bias}});
}

std::vector<ProgramRecorder::Value> ProgramRecorder::short_conv(const std::vector<HeadsOf<Value>>& heads,
                                                                const std::string& weight, const std::string& bias) {
  nlohmann::json in = nlohmann::json::array(), counts = nlohmann::json::array(), out = nlohmann::json::array();
  std::vector<Value> values;
  for (const auto& h : heads) {
    in.push_back(h.heads);
    counts.push_back(h.count);
    values.push_back(++last_);
    out.push_back(values.back());
  }
  ops_.push_back({{"op", "short_conv"}, {"in", in}, {"out", out}, {"heads", counts}, {"weight", weight}, {"bias", bias}});
  return values;
}

nlohmann::json ProgramRecorder::to_json(const Recurrence& r) {
  static const char* const kDecay[] = {"none", "per_head", "per_channel", "fixed"};
  return {{"state_heads", r.state_heads}, {"key_dim", r.key_dim},     {"value_dim", r.value_dim},
          {"groups", r.groups},           {"scale", r.scale},         {"normalize", r.normalize},
          {"decay", kDecay[static_cast<int>(r.decay)]}, {"fixed_log_decay", r.fixed_log_decay}};
}

}  // namespace linearize::recipes
