#include "converter/recipes/program_recorder.h"

#include <map>
#include <set>
#include <stdexcept>
#include <utility>

namespace linearize::recipes {

ProgramRecorder::Value ProgramRecorder::op(const char* name, const std::vector<Value>& in, const nlohmann::json& attributes) {
  nlohmann::json entry = {{"op", name}, {"in", in}, {"out", ++last_}};
  entry.update(attributes);
  ops_.push_back(std::move(entry));
  return last_;
}

Heads<ProgramRecorder::Value> ProgramRecorder::projection(const char* name, Value x) {
  const Value q = last_ + 1, k = last_ + 2, v = last_ + 3;
  ops_.push_back({{"op", name}, {"in", {x}}, {"out", {q, k, v}}});
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

namespace {

// Spells out values: each op's outputs (an op with several names them by index) by its name, attributes and
// the expressions of its inputs; 0 is none.
class Expressions {
 public:
  explicit Expressions(const nlohmann::json& record) {
    for (const auto& op : record.at("ops")) {
      const auto& out = op.at("out");
      if (out.is_array())
        for (std::size_t i = 0; i < out.size(); ++i) producer_[out[i].get<std::int64_t>()] = {&op, static_cast<int>(i)};
      else
        producer_[out.get<std::int64_t>()] = {&op, -1};
    }
    input_ = record.at("input").get<std::int64_t>();
  }

  std::string of(std::int64_t value) {
    if (value == 0) return "none";
    if (value == input_) return "x";
    if (const auto it = spelled_.find(value); it != spelled_.end()) return it->second;
    if (!open_.insert(value).second) throw std::out_of_range("program record: value " + std::to_string(value) + " depends on itself");
    const auto [op, index] = producer_.at(value);
    nlohmann::json attributes = *op;
    for (const char* key : {"op", "in", "out"}) attributes.erase(key);
    if (attributes.contains("phi_k")) attributes["phi_k"] = program_expression(attributes["phi_k"]);
    std::string e = op->at("op").get<std::string>() + attributes.dump() + "(";
    for (const auto& in : op->at("in")) e += of(in.get<std::int64_t>()) + ",";
    e += ")";
    if (index >= 0) e += "[" + std::to_string(index) + "]";
    open_.erase(value);
    return spelled_[value] = e;
  }

 private:
  std::map<std::int64_t, std::pair<const nlohmann::json*, int>> producer_;
  std::map<std::int64_t, std::string> spelled_;
  std::set<std::int64_t> open_;  // being spelled: met again, the record has a cycle
  std::int64_t input_ = 0;
};

}  // namespace

std::string program_expression(const nlohmann::json& record) {
  return Expressions(record).of(record.at("output").get<std::int64_t>());
}

nlohmann::json ProgramRecorder::to_json(const Recurrence& r) {
  static const char* const kDecay[] = {"none", "per_head", "per_channel", "fixed"};
  return {{"state_heads", r.state_heads}, {"key_dim", r.key_dim},     {"value_dim", r.value_dim},
          {"groups", r.groups},           {"scale", r.scale},         {"normalize", r.normalize},
          {"decay", kDecay[static_cast<int>(r.decay)]}, {"fixed_log_decay", r.fixed_log_decay}};
}

}  // namespace linearize::recipes
