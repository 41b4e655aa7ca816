#include "distill/run_config.h"

#include "converter/recipes/recipe.h"
#include "formats/nearest_name.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include <yaml-cpp/yaml.h>

#include "formats/error.h"

namespace linearize {
namespace {

using nlohmann::json;

template <class E>
using EnumNames = std::vector<std::pair<E, const char*>>;

const EnumNames<Stage1Loss> kStage1Losses = {{Stage1Loss::kMse, "mse"}, {Stage1Loss::kXent, "xent"}};
const EnumNames<Stage1Mode> kStage1Modes = {{Stage1Mode::kJoint, "joint"}, {Stage1Mode::kLayerwise, "layerwise"}};
const EnumNames<Stage2Loss> kStage2Losses = {{Stage2Loss::kCe, "ce"}, {Stage2Loss::kKl, "kl"}, {Stage2Loss::kCeKl, "ce+kl"}};
const EnumNames<Schedule> kSchedules = {{Schedule::kConstant, "constant"}, {Schedule::kCosine, "cosine"}, {Schedule::kPlateau, "plateau"}};
const EnumNames<DeviceType> kDeviceTypes = {{DeviceType::kCpu, "cpu"}, {DeviceType::kCuda, "cuda"}};
const EnumNames<ComputeDtype> kDtypes = {{ComputeDtype::kAuto, "auto"}, {ComputeDtype::kFp32, "fp32"}, {ComputeDtype::kBf16, "bf16"}};

// The projections of a decoder layer, by their HF module names: every registered family has these seven
// (converter/architectures/decoder_tensors.cpp).
const std::vector<std::string> kLoraTargets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

constexpr const char* kRecipeParams = "recipe.params";  // the one free-form key

template <class E>
std::string enum_name(const EnumNames<E>& names, E value) {
  for (const auto& [e, name] : names) {
    if (e == value) return name;
  }
  return "?";
}

std::pair<std::string, std::string> split_last(const std::string& path) {
  const auto dot = path.rfind('.');
  if (dot == std::string::npos) return {"", path};
  return {path.substr(0, dot), path.substr(dot + 1)};
}

// The known key nearest to `key`: twice the edit distance of the last component, plus one when it sits
// under another parent, so the same name in another section (a misplaced `r` under stage2 -> stage2.lora.r)
// beats a one-letter change among siblings (stage2.lr); ties go to the whole path's distance, then to
// schema order.
std::string nearest(const std::string& key, const std::vector<std::string>& known) {
  const auto [parent, last] = split_last(key);
  std::string best;
  std::pair<std::size_t, std::size_t> best_score{SIZE_MAX, SIZE_MAX};
  for (const auto& candidate : known) {
    const auto [candidate_parent, candidate_last] = split_last(candidate);
    const std::pair<std::size_t, std::size_t> score{2 * edit_distance(last, candidate_last) + (parent == candidate_parent ? 0 : 1),
                                                    edit_distance(key, candidate)};
    if (score < best_score) {
      best_score = score;
      best = candidate;
    }
  }
  return best;
}

std::string describe(const YAML::Node& node) {
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a list";
  if (node.IsNull()) return "nothing (null)";
  return "'" + node.Scalar() + "'";
}

[[noreturn]] void expected(const std::string& source, const std::string& path, const std::string& what, const YAML::Node& node) {
  throw InputError(source, path, "expected " + what + ", got " + describe(node));
}

bool is_quoted(const YAML::Node& node) { return node.Tag() == "!"; }  // yaml-cpp tags quoted scalars "!"

std::optional<std::int64_t> parse_int(const std::string& text) {
  std::int64_t value = 0;
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

std::optional<double> parse_double(const std::string& text) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

std::optional<bool> parse_bool(const std::string& text) {
  if (text == "true" || text == "True") return true;
  if (text == "false" || text == "False") return false;
  return std::nullopt;
}

bool is_null_word(const std::string& text) { return text.empty() || text == "~" || text == "null" || text == "Null"; }

json yaml_to_json(const YAML::Node& node) {
  if (node.IsMap()) {
    json object = json::object();
    for (const auto& item : node) object[item.first.Scalar()] = yaml_to_json(item.second);
    return object;
  }
  if (node.IsSequence()) {
    json array = json::array();
    for (const auto& item : node) array.push_back(yaml_to_json(item));
    return array;
  }
  if (node.IsNull()) return nullptr;
  const std::string& text = node.Scalar();
  if (is_quoted(node)) return text;
  if (is_null_word(text)) return nullptr;
  if (const auto b = parse_bool(text)) return *b;
  if (const auto i = parse_int(text)) return *i;
  if (const auto d = parse_double(text)) return *d;
  return text;
}

// The shortest decimal text that reads back as exactly `value` (yaml-cpp would print 17 digits).
std::string shortest_double(double value) {
  char buffer[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  return buffer;
}

// Strings that would read back as something else (numbers, booleans, null) are quoted.
void emit_string(YAML::Emitter& out, const std::string& text) {
  if (is_null_word(text) || parse_bool(text) || parse_double(text) || parse_int(text)) out << YAML::DoubleQuoted;
  out << text;
}

void emit_json(YAML::Emitter& out, const json& value) {
  if (value.is_object()) {
    out << YAML::BeginMap;
    for (const auto& [key, item] : value.items()) {
      out << YAML::Key << key << YAML::Value;
      emit_json(out, item);
    }
    out << YAML::EndMap;
  } else if (value.is_array()) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& item : value) emit_json(out, item);
    out << YAML::EndSeq;
  } else if (value.is_string()) {
    emit_string(out, value.get<std::string>());
  } else if (value.is_boolean()) {
    out << (value.get<bool>() ? "true" : "false");
  } else if (value.is_number_integer()) {
    out << value.get<std::int64_t>();
  } else if (value.is_number()) {
    out << shortest_double(value.get<double>());
  } else {
    out << YAML::Null;
  }
}

// One key of the schema bound to a member of one RunConfig.
struct Field {
  std::string path;
  std::function<void(const YAML::Node&, const std::string& source)> load;
  std::function<void(YAML::Emitter&)> emit;
};

class Schema {
 public:
  explicit Schema(RunConfig& c) {
    text("model", c.model);
    text("out", c.out);
    text("recipe.name", c.recipe.name);
    add(kRecipeParams, [&p = c.recipe.params](const YAML::Node& node, const std::string& source) {
          if (!node.IsMap() && !node.IsNull()) expected(source, kRecipeParams, "a mapping", node);
          p = node.IsNull() ? json::object() : yaml_to_json(node);
        },
        [&p = c.recipe.params](YAML::Emitter& out) {
          if (p.empty()) {
            out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
          } else {
            emit_json(out, p);
          }
        });
    text_list("data.files", c.data.files);
    text("data.tokenizer", c.data.tokenizer);
    integer("data.seq_len", c.data.seq_len);
    integer("data.batch_size", c.data.batch_size);
    real("data.validation_fraction", c.data.validation_fraction);
    integer("data.validation_sequences", c.data.validation_sequences);
    boolean("stage1.enabled", c.stage1.enabled);
    choice("stage1.loss", c.stage1.loss, kStage1Losses);
    real("stage1.factor", c.stage1.factor);
    choice("stage1.mode", c.stage1.mode, kStage1Modes);
    optimization("stage1", c.stage1.optim);
    boolean("stage2.enabled", c.stage2.enabled);
    integer("stage2.lora.r", c.stage2.lora.r);
    real("stage2.lora.alpha", c.stage2.lora.alpha);
    real("stage2.lora.dropout", c.stage2.lora.dropout);
    boolean("stage2.lora.rslora", c.stage2.lora.rslora);
    text_list("stage2.lora.targets", c.stage2.lora.targets);
    choice("stage2.loss", c.stage2.loss, kStage2Losses);
    boolean("stage2.merge", c.stage2.merge);
    integer("stage2.teacher_cache.top_k", c.stage2.teacher_cache_top_k);
    text("stage2.teacher_cache.path", c.stage2.teacher_cache_path);
    optimization("stage2", c.stage2.optim);
    choice("device.type", c.device.type, kDeviceTypes);
    choice("device.dtype", c.device.dtype, kDtypes);
    integer("device.timeout_s", c.device.timeout_s);
    boolean("device.activation_checkpointing", c.device.activation_checkpointing);
    text("checkpoint.dir", c.checkpoint.dir);
    integer("checkpoint.every", c.checkpoint.every);
    integer("checkpoint.keep", c.checkpoint.keep);
    optional_real("verify.max_kl", c.verify.max_kl);
    optional_real("verify.min_top1", c.verify.min_top1);
    optional_real("verify.min_gen_agree", c.verify.min_gen_agree);
    text("eval.text", c.eval.text);
    integer_list("eval.lengths", c.eval.lengths);
    add("seed", [&v = c.seed](const YAML::Node& node, const std::string& source) {
          const auto i = node.IsScalar() ? parse_int(node.Scalar()) : std::nullopt;
          if (!i || *i < 0) expected(source, "seed", "a non-negative integer", node);
          v = static_cast<std::uint64_t>(*i);
        },
        [&v = c.seed](YAML::Emitter& out) { out << v; });
    integer("log_every", c.log_every);

    for (const auto& field : fields_) {
      for (auto parent = split_last(field.path).first; !parent.empty(); parent = split_last(parent).first) sections_.insert(parent);
    }
  }

  const std::vector<Field>& fields() const { return fields_; }
  const Field* find(const std::string& path) const {
    for (const auto& field : fields_) {
      if (field.path == path) return &field;
    }
    return nullptr;
  }
  bool is_section(const std::string& path) const { return sections_.count(path) != 0; }

  std::vector<std::string> all_keys() const {
    std::vector<std::string> keys;
    for (const auto& field : fields_) keys.push_back(field.path);
    keys.insert(keys.end(), sections_.begin(), sections_.end());
    return keys;
  }
  [[noreturn]] void unknown(const std::string& source, const std::string& path) const {
    throw InputError(source, path, "unknown key; did you mean '" + nearest(path, all_keys()) + "'?");
  }

  // Loads a YAML mapping found at `prefix` (empty at the top), checking every key against the schema.
  void load_map(const YAML::Node& map, const std::string& prefix, const std::string& source) const {
    std::set<std::string> seen;
    for (const auto& item : map) {
      if (!item.first.IsScalar()) throw InputError(source, prefix.empty() ? "(top level)" : prefix, "keys must be plain names");
      const std::string path = prefix.empty() ? item.first.Scalar() : prefix + "." + item.first.Scalar();
      if (!seen.insert(path).second) throw InputError(source, path, "duplicate key");
      if (const Field* field = find(path)) {
        field->load(item.second, source);
      } else if (is_section(path)) {
        if (item.second.IsNull()) continue;  // "stage1:" with nothing under it keeps the defaults
        if (!item.second.IsMap()) expected(source, path, "a mapping", item.second);
        load_map(item.second, path, source);
      } else {
        unknown(source, path);
      }
    }
  }

 private:
  using Load = std::function<void(const YAML::Node&, const std::string&)>;
  void add(const std::string& path, Load load, std::function<void(YAML::Emitter&)> emit) {
    fields_.push_back({path, std::move(load), std::move(emit)});
  }

  void text(const std::string& path, std::string& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          if (!node.IsScalar()) expected(source, path, "a string", node);
          v = node.Scalar();
        },
        [&v](YAML::Emitter& out) { emit_string(out, v); });
  }
  void text_list(const std::string& path, std::vector<std::string>& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          if (!node.IsSequence()) expected(source, path, "a list of strings", node);
          std::vector<std::string> items;
          for (const auto& item : node) {
            if (!item.IsScalar()) expected(source, path + "[" + std::to_string(items.size()) + "]", "a string", item);
            items.push_back(item.Scalar());
          }
          v = std::move(items);
        },
        [&v](YAML::Emitter& out) {
          out << YAML::Flow << YAML::BeginSeq;
          for (const auto& item : v) emit_string(out, item);
          out << YAML::EndSeq;
        });
  }
  void integer_list(const std::string& path, std::vector<std::int64_t>& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          if (!node.IsSequence()) expected(source, path, "a list of integers", node);
          std::vector<std::int64_t> items;
          for (const auto& item : node) {
            const auto i = item.IsScalar() ? parse_int(item.Scalar()) : std::nullopt;
            if (!i) expected(source, path + "[" + std::to_string(items.size()) + "]", "an integer", item);
            items.push_back(*i);
          }
          v = std::move(items);
        },
        [&v](YAML::Emitter& out) {
          out << YAML::Flow << YAML::BeginSeq;
          for (const auto item : v) out << item;
          out << YAML::EndSeq;
        });
  }
  void integer(const std::string& path, std::int64_t& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          const auto i = node.IsScalar() ? parse_int(node.Scalar()) : std::nullopt;
          if (!i) expected(source, path, "an integer", node);
          v = *i;
        },
        [&v](YAML::Emitter& out) { out << v; });
  }
  static double read_real(const YAML::Node& node, const std::string& source, const std::string& path) {
    const auto d = node.IsScalar() && !is_quoted(node) ? parse_double(node.Scalar()) : std::nullopt;
    if (!d) expected(source, path, "a finite number", node);
    return *d;
  }
  void real(const std::string& path, double& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) { v = read_real(node, source, path); },
        [&v](YAML::Emitter& out) { out << shortest_double(v); });
  }
  void optional_real(const std::string& path, std::optional<double>& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          if (node.IsNull() || (node.IsScalar() && !is_quoted(node) && is_null_word(node.Scalar()))) {
            v.reset();
          } else {
            v = read_real(node, source, path);
          }
        },
        [&v](YAML::Emitter& out) {
          if (v) {
            out << shortest_double(*v);
          } else {
            out << YAML::Null;
          }
        });
  }
  void boolean(const std::string& path, bool& v) {
    add(path, [&v, path](const YAML::Node& node, const std::string& source) {
          const auto b = node.IsScalar() ? parse_bool(node.Scalar()) : std::nullopt;
          if (!b) expected(source, path, "true or false", node);
          v = *b;
        },
        [&v](YAML::Emitter& out) { out << (v ? "true" : "false"); });
  }
  template <class E>
  void choice(const std::string& path, E& v, const EnumNames<E>& names) {
    add(path, [&v, &names, path](const YAML::Node& node, const std::string& source) {
          std::string allowed;
          for (const auto& [e, name] : names) {
            if (node.IsScalar() && node.Scalar() == name) {
              v = e;
              return;
            }
            allowed += (allowed.empty() ? "" : ", ") + std::string(name);
          }
          expected(source, path, "one of " + allowed, node);
        },
        [&v, &names](YAML::Emitter& out) { out << enum_name(names, v); });
  }
  void optimization(const std::string& stage, Optimization& o) {
    real(stage + ".lr", o.lr);
    real(stage + ".weight_decay", o.weight_decay);
    choice(stage + ".schedule", o.schedule, kSchedules);
    integer(stage + ".warmup", o.warmup);
    real(stage + ".plateau_factor", o.plateau_factor);
    integer(stage + ".plateau_patience", o.plateau_patience);
    real(stage + ".min_lr", o.min_lr);
    integer(stage + ".grad_accum", o.grad_accum);
    real(stage + ".clip", o.clip);
    integer(stage + ".steps", o.steps);
  }

  std::vector<Field> fields_;
  std::set<std::string> sections_;
};

YAML::Node parse_yaml(const std::string& text, const std::string& source, const std::string& field) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw InputError(source, field.empty() ? "line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1) : field,
                     "not valid YAML: " + e.msg);
  }
}

// Checks a value against a predicate, naming the key and the rule in the error.
template <class T, class Rule>
void require(const std::string& source, const std::string& path, const T& value, Rule ok, const std::string& rule) {
  if (!ok(value)) throw InputError(source, path, "must be " + rule);
}

void validate_optimization(const std::string& source, const std::string& stage, const Optimization& o) {
  const auto positive = [](double v) { return v > 0; };
  const auto non_negative = [](auto v) { return v >= 0; };
  require(source, stage + ".lr", o.lr, positive, "> 0");
  require(source, stage + ".weight_decay", o.weight_decay, non_negative, ">= 0");
  require(source, stage + ".warmup", o.warmup, non_negative, ">= 0");
  require(source, stage + ".plateau_factor", o.plateau_factor, [](double v) { return v > 0 && v < 1; }, "in (0, 1)");
  require(source, stage + ".plateau_patience", o.plateau_patience, non_negative, ">= 0");
  require(source, stage + ".min_lr", o.min_lr, [&](double v) { return v >= 0 && v <= o.lr; }, "in [0, lr]");
  require(source, stage + ".grad_accum", o.grad_accum, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, stage + ".clip", o.clip, non_negative, ">= 0 (0 disables clipping)");
  require(source, stage + ".steps", o.steps, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, stage + ".warmup", o.warmup, [&](std::int64_t v) { return v < o.steps; }, "< steps");
}

}  // namespace

std::string to_string(Stage1Loss value) { return enum_name(kStage1Losses, value); }
std::string to_string(Stage1Mode value) { return enum_name(kStage1Modes, value); }
std::string to_string(Stage2Loss value) { return enum_name(kStage2Losses, value); }
std::string to_string(Schedule value) { return enum_name(kSchedules, value); }
std::string to_string(DeviceType value) { return enum_name(kDeviceTypes, value); }
std::string to_string(ComputeDtype value) { return enum_name(kDtypes, value); }

RunConfig::RunConfig() {
  // LoLCATs stage 1 (distill_alpaca_clean_xent0_mse1000_lr1e-2.yaml): lr 1e-2; stage 2 keeps 1e-4.
  stage1.optim.lr = 1e-2;
}

namespace {

// The file's text; errors go to (source, field), naming the path unless it is the source itself.
std::string read_file(const std::filesystem::path& path, const std::string& source, const std::string& field) {
  const std::string what = path.string() == source ? "" : "'" + path.string() + "' ";
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw InputError(source, field, what + "cannot be read");
  std::string text;
  char buffer[4096];
  for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, file)) > 0;) text.append(buffer, n);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) throw InputError(source, field, what + "read error");
  return text;
}

// A file's identity for cycle detection: its canonical path where the filesystem gives one, else the path as
// written (a file that cannot be read is then reported by read_file, naming it).
std::filesystem::path file_identity(const std::filesystem::path& path) {
  std::error_code error;
  auto canonical = std::filesystem::weakly_canonical(path, error);
  return error ? path.lexically_normal() : canonical;
}

// Loads one run file's keys into the config; `base: FILE` (relative to this file's folder) is loaded first, so
// this file's keys replace the base's one key at a time (docs/distillation.md#run-file). `chain` holds the files
// being loaded, to refuse a cycle.
void load_run_file(const Schema& schema, const std::string& text, const std::string& source,
                   std::vector<std::filesystem::path>& chain) {
  const YAML::Node root = parse_yaml(text, source, "");
  if (!root.IsMap()) throw InputError(source, "(top level)", "expected a mapping of keys, got " + describe(root));
  const YAML::Node base = root["base"];
  if (!base) {
    schema.load_map(root, "", source);
    return;
  }
  if (!base.IsScalar() || base.Scalar().empty()) expected(source, "base", "a file name", base);
  if (chain.empty()) chain.push_back(file_identity(source));
  const auto path = std::filesystem::path(source).parent_path() / base.Scalar();
  const auto identity = file_identity(path);
  if (std::find(chain.begin(), chain.end(), identity) != chain.end())
    throw InputError(source, "base", "'" + path.string() + "' is already being loaded (a cycle of bases)");
  chain.push_back(identity);
  load_run_file(schema, read_file(path, source, "base"), path.string(), chain);
  chain.pop_back();
  YAML::Node own = YAML::Clone(root);
  own.remove("base");
  if (own["base"]) throw InputError(source, "base", "duplicate key");
  schema.load_map(own, "", source);
}

}  // namespace

RunConfig RunConfig::load(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  return parse(read_file(path, path.string(), "(file)"), path.string(), overrides);
}

RunConfig RunConfig::parse(const std::string& yaml, const std::string& source, const std::vector<std::string>& overrides) {
  RunConfig config;
  std::vector<std::filesystem::path> chain;
  load_run_file(Schema(config), yaml, source, chain);
  for (const auto& assignment : overrides) config.set(assignment);
  // Missing required keys are the file's fault unless an override could have set them.
  config.validate(source);
  return config;
}

void RunConfig::set(const std::string& assignment) {
  constexpr const char* kSource = "--set";
  const auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0) throw InputError(kSource, assignment, "expected KEY=VALUE, e.g. stage2.lora.r=16");
  const std::string key = assignment.substr(0, equals);
  const YAML::Node value = parse_yaml(assignment.substr(equals + 1), kSource, key);
  const Schema schema(*this);
  if (const Field* field = schema.find(key)) {
    field->load(value, kSource);
    return;
  }
  const std::string params_prefix = std::string(kRecipeParams) + ".";
  if (key.compare(0, params_prefix.size(), params_prefix) == 0) {
    json* target = &recipe.params;
    std::string rest = key.substr(params_prefix.size());
    for (auto dot = rest.find('.'); dot != std::string::npos; dot = rest.find('.')) {
      json& child = (*target)[rest.substr(0, dot)];
      if (!child.is_object()) child = json::object();
      target = &child;
      rest = rest.substr(dot + 1);
    }
    if (rest.empty()) throw InputError(kSource, key, "empty parameter name");
    (*target)[rest] = yaml_to_json(value);
    return;
  }
  if (schema.is_section(key)) throw InputError(kSource, key, "is a section: set one of its keys (see --dump-config)");
  schema.unknown(kSource, key);
}

void RunConfig::validate(const std::string& source) const {
  const auto missing = [&](const std::string& path) { throw InputError(source, path, "missing required key"); };
  if (model.empty()) missing("model");
  if (out.empty()) missing("out");
  if (recipe.name.empty()) missing("recipe.name");
  if (data.files.empty()) missing("data.files");
  if (!stage1.enabled && !stage2.enabled) throw InputError(source, "stage1.enabled", "both stages are disabled: nothing to do");

  require(source, "data.seq_len", data.seq_len, [](std::int64_t v) { return v >= 2; }, ">= 2 (a next-token target needs two tokens)");
  require(source, "data.batch_size", data.batch_size, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, "data.validation_fraction", data.validation_fraction, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)");
  require(source, "data.validation_sequences", data.validation_sequences, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, "stage1.factor", stage1.factor, [](double v) { return v > 0; }, "> 0");
  validate_optimization(source, "stage1", stage1.optim);
  require(source, "stage2.lora.r", stage2.lora.r, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, "stage2.lora.alpha", stage2.lora.alpha, [](double v) { return v > 0; }, "> 0");
  require(source, "stage2.lora.dropout", stage2.lora.dropout, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)");
  if (stage2.lora.targets.empty()) throw InputError(source, "stage2.lora.targets", "must name at least one projection");
  std::set<std::string> targets;
  for (const auto& target : stage2.lora.targets) {
    if (std::find(kLoraTargets.begin(), kLoraTargets.end(), target) == kLoraTargets.end()) {
      throw InputError(source, "stage2.lora.targets", "unknown projection '" + target + "'; did you mean '" + nearest(target, kLoraTargets) + "'?");
    }
    if (!targets.insert(target).second) throw InputError(source, "stage2.lora.targets", "'" + target + "' is listed twice");
  }
  validate_optimization(source, "stage2", stage2.optim);
  require(source, "stage2.teacher_cache.top_k", stage2.teacher_cache_top_k, [](std::int64_t v) { return v >= 0; }, ">= 0");
  if (stage2.teacher_cache_top_k > 0 && stage2.loss == Stage2Loss::kCe)
    throw InputError(source, "stage2.teacher_cache.top_k", "caches the teacher of the KL loss, and stage2.loss is ce: set it to kl or ce+kl, or top_k to 0");
  if (stage2.teacher_cache_top_k == 0 && !stage2.teacher_cache_path.empty())
    throw InputError(source, "stage2.teacher_cache.path", "names a cache, and stage2.teacher_cache.top_k is 0 (no cache): set top_k");
  require(source, "device.timeout_s", device.timeout_s, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, "checkpoint.every", checkpoint.every, [](std::int64_t v) { return v >= 1; }, ">= 1");
  require(source, "checkpoint.keep", checkpoint.keep, [](std::int64_t v) { return v >= 1; }, ">= 1");
  if (!eval.text.empty()) {
    require(source, "eval.lengths", eval.lengths.size(), [](std::size_t n) { return n >= 1; }, "at least one length");
    for (const auto length : eval.lengths) require(source, "eval.lengths", length, [](std::int64_t v) { return v >= 2; }, ">= 2 each");
    auto sorted = eval.lengths;
    std::sort(sorted.begin(), sorted.end());
    require(source, "eval.lengths", sorted, [](const std::vector<std::int64_t>& v) { return std::adjacent_find(v.begin(), v.end()) == v.end(); },
            "distinct");
  }
  if (verify.max_kl) require(source, "verify.max_kl", *verify.max_kl, [](double v) { return v >= 0; }, ">= 0");
  if (verify.min_top1) require(source, "verify.min_top1", *verify.min_top1, [](double v) { return v >= 0 && v <= 1; }, "in [0, 1]");
  if (verify.min_gen_agree)
    require(source, "verify.min_gen_agree", *verify.min_gen_agree, [](double v) { return v >= 0 && v <= 1; }, "in [0, 1]");
  require(source, "log_every", log_every, [](std::int64_t v) { return v >= 1; }, ">= 1");
}

std::string RunConfig::dump() const {
  RunConfig copy = *this;  // the schema binds mutable references
  const Schema schema(copy);
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::vector<std::string> open;  // the sections whose mappings are open, outermost first
  for (const auto& field : schema.fields()) {
    std::vector<std::string> parts;
    for (std::size_t begin = 0, dot = 0; dot != std::string::npos; begin = dot + 1) {
      dot = field.path.find('.', begin);
      parts.push_back(field.path.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    }
    std::size_t common = 0;
    while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
    for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
    for (; open.size() + 1 < parts.size(); open.push_back(parts[open.size()])) out << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
    out << YAML::Key << parts.back() << YAML::Value;
    field.emit(out);
  }
  for (; !open.empty(); open.pop_back()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> RunConfig::keys() {
  RunConfig config;
  const Schema schema(config);
  std::vector<std::string> keys;
  for (const auto& field : schema.fields()) keys.push_back(field.path);
  return keys;
}

}  // namespace linearize
