// L0: the files hold what the config promises, finite, and the copies are the source's bytes. Every pass over
// the files releases each tensor's pages once read, so reading two models' files side by side does not make
// them both resident.
#include <cstring>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/model/weights.h"
#include "converter/recipes/program_recorder.h"
#include "converter/verify/check.h"
#include "formats/checkpoint.h"
#include "formats/error.h"
#include "formats/sha256.h"

namespace linearize::checks {
namespace {

void check_finite(const CheckpointWeights& weights, ReportBuilder& r) {
  Differences non_finite;
  for (const auto& name : weights.names()) {
    const auto t = weights.tensor(name);
    const bool finite = !t.is_floating_point() || at::isfinite(t).all().item<bool>();
    weights.release(name);
    non_finite.note(finite, name);
  }
  r.add("tensors finite (no NaN/Inf)", static_cast<double>(non_finite.count), "==", 0, non_finite.detail(""));
}

// The tensors copied from the source against the sha256 the conversion recorded in model.safetensors.
void check_copied_hashes(const CheckpointWeights& weights, ReportBuilder& r) {
  const auto& shard = weights.shards().front();
  const auto it = shard.metadata().find(kCopiedTensorsMetadataKey);
  if (it == shard.metadata().end()) {
    r.add("copied tensors match their recorded sha256", 1, "==", 0, "model.safetensors has no recorded hashes");
    return;
  }
  Differences changed;
  const auto recorded = nlohmann::json::parse(it->second);
  for (const auto& [name, hash] : recorded.items()) {
    const auto t = weights.contains(name) ? weights.tensor(name) : at::Tensor();
    const bool same = t.defined() && sha256_hex(t.data_ptr(), t.nbytes()) == hash.get<std::string>();
    if (t.defined()) weights.release(name);
    changed.note(same, name);
  }
  r.add("copied tensors match their recorded sha256", static_cast<double>(changed.count), "==", 0,
        changed.detail(std::to_string(recorded.size()) + " tensors"));
}

// The transformers files run the export elsewhere; a changed one would compute something L5 never checked.
void check_hf_files(const std::filesystem::path& dir, const nlohmann::json& recorded, ReportBuilder& r) {
  Differences changed;
  for (const auto& [name, hash] : recorded.items()) {
    const auto path = dir / name;
    changed.note(std::filesystem::is_regular_file(path) && sha256_file(path) == hash.get<std::string>(), name);
  }
  r.add("transformers files match their recorded sha256", static_cast<double>(changed.count), "==", 0,
        changed.detail(std::to_string(recorded.size()) + " files"));
}

// Every source tensor byte for byte in the export, but those a distill export merged its LoRA into on purpose.
void check_source_bytes(const CheckpointWeights& weights, const std::filesystem::path& source_dir, const ModelConfig& config,
                        ReportBuilder& r) {
  const auto source = CheckpointWeights::open(source_dir);
  const auto merged = merged_lora_tensors(config);
  Differences differ;
  for (const auto& name : source.names()) {
    if (merged.count(name)) continue;
    const auto a = source.tensor(name);
    const auto b = weights.contains(name) ? weights.tensor(name) : at::Tensor();
    const bool same = b.defined() && a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
                      std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
    source.release(name);
    if (b.defined()) weights.release(name);
    differ.note(same, name);
  }
  r.add("copied tensors bit-identical to the source", static_cast<double>(differ.count), "==", 0,
        differ.detail(std::to_string(source.names().size() - merged.size()) + " tensors" +
                      (merged.empty() ? "" : " (" + std::to_string(merged.size()) + " with LoRA merged left out)")));
}

// The recipe's program as convert recorded it (config.json linearize.program), which the transformers files
// interpret, against the program the recipe states now for this config and parameters: an edited or stale
// record would run another mixer there than here. Compared as expressions, so a binary whose compiler
// evaluates a primitive's arguments in another order (numbering the values otherwise) agrees.
bool same_program(const nlohmann::json& recorded, const nlohmann::json& expected) {
  try {
    return recorded.at("kind") == expected.at("kind") && recorded.at("tensors") == expected.at("tensors") &&
           recipes::program_expression(recorded) == recipes::program_expression(expected);
  } catch (const nlohmann::json::exception&) {
    return false;  // not a program record
  } catch (const std::out_of_range&) {
    return false;  // an input no op makes
  }
}

void check_program(const ModelConfig& config, ReportBuilder& r) {
  const auto recipe = recipe_of(config);
  if (!recipe.recipe->describe) return;  // a recipe without a program (a test's) records none
  const auto& lin = config.linearize;
  const bool recorded = lin.contains("program");
  const bool same = recorded && same_program(lin["program"], recipe.recipe->describe(config, recipe.params));
  r.add("mixer program matches the recipe's", same ? 0 : 1, "==", 0,
        !recorded ? "config.json has no linearize.program"
                  : same ? recipe.recipe->name : "the recorded program differs from " + recipe.recipe->name + "'s");
}

// Missing or misshapen tensors stop verify: nothing after L0 could load the model.
void check_structure(VerifyContext& c) {
  const auto& dir = c.options.model;
  const auto weights = CheckpointWeights::open(dir);
  const auto expected = expected_tensors(c.config);  // a config that cannot say what to expect is bad input
  try {
    check_tensors(weights, expected);
    c.report.add("tensors present with expected shapes", 0, "==", 0);
  } catch (const InputError& e) {
    c.report.add("tensors present with expected shapes", 1, "==", 0, e.what());
    c.stop = true;
    return;
  }
  check_finite(weights, c.report);
  const auto& lin = c.config.linearize;
  if (lin.is_null()) return;  // a plain checkpoint copied nothing
  check_copied_hashes(weights, c.report);
  if (lin.contains(kHfFilesKey)) check_hf_files(dir, lin[kHfFilesKey], c.report);
  check_program(c.config, c.report);
  if (c.options.source) check_source_bytes(weights, *c.options.source, c.config, c.report);
}

}  // namespace

const Check kStructureCheck{"L0", "", 0, check_structure};

}  // namespace linearize::checks
