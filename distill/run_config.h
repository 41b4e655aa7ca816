// The YAML run file of `linearize distill` (docs/distillation.md#run-file) as typed structs with defaults.
//
// Every key has a default (below); `model`, `out`, `recipe.name` and `data.files` are required. Keys are
// checked against the schema before any work: an unknown key, or a value of the wrong type, throws
// InputError naming the file (or "--set"), the dotted key path, and for unknown keys the nearest known one.
// `recipe.params` is free-form: it is handed to the recipe registry, which checks it.
// Defaults follow LoLCATs (stage 1 MSE x 1000 at lr 1e-2, stage 2 LoRA r 8 / alpha 16 on q,k,v,o at lr
// 1e-4, micro-batch 1 x accumulation 8, 1024-token packed sequences, ReduceLROnPlateau x0.1 patience 10;
// LoLCATs, arXiv 2410.10254) with HF Trainer's gradient clipping at 1.0.
// Relative paths are used as written (relative to the working directory), not to the YAML file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "converter/verify/thresholds.h"

namespace linearize {

enum class Stage1Loss { kMse, kXent };         // LoLCATs output MSE, or Hedgehog attention-weight cross-entropy
enum class Stage1Mode { kJoint, kLayerwise };  // all layers at once, or layer by layer from cached inputs
enum class Stage2Loss { kCe, kKl, kCeKl };     // next-token CE, KL(teacher || student), or their sum
enum class Schedule { kConstant, kCosine, kPlateau };
enum class DeviceType { kCpu, kCuda };
enum class ComputeDtype { kAuto, kFp32, kBf16 };  // auto: bf16 autocast on CUDA, fp32 on CPU

std::string to_string(Stage1Loss value);
std::string to_string(Stage1Mode value);
std::string to_string(Stage2Loss value);
std::string to_string(Schedule value);
std::string to_string(DeviceType value);
std::string to_string(ComputeDtype value);

// The optimiser and learning-rate schedule of one stage (AdamW).
struct Optimization {
  double lr = 1e-4;
  double weight_decay = 0.0;
  Schedule schedule = Schedule::kPlateau;
  std::int64_t warmup = 0;           // optimiser steps of linear warm-up (cosine, constant)
  double plateau_factor = 0.1;       // lr multiplier when the validation loss stops improving
  std::int64_t plateau_patience = 10;  // evaluations without improvement before reducing
  double min_lr = 0.0;
  std::int64_t grad_accum = 8;       // micro-batches per optimiser step
  double clip = 1.0;                 // max global gradient norm; 0 disables clipping
  std::int64_t steps = 1000;         // optimiser steps
};

struct DataConfig {
  std::vector<std::string> files;    // text / JSONL / pre-tokenized (distill/data.h)
  std::string tokenizer;             // a directory with tokenizer.json; empty: the model's
  std::int64_t seq_len = 1024;
  std::int64_t batch_size = 1;       // sequences per micro-batch
  double validation_fraction = 0.05; // of the documents, held out for validation and the final verify
  // Validation runs the student and the source over these at every log step (and before and after training):
  // at most this many sequences of the split, the same ones every time, so its cost stays a few forwards.
  std::int64_t validation_sequences = 16;
};

struct Stage1Config {
  bool enabled = true;
  Stage1Loss loss = Stage1Loss::kMse;
  double factor = 1000.0;            // loss = factor x mean over layers of the per-layer loss
  Stage1Mode mode = Stage1Mode::kJoint;
  Optimization optim;                // lr 1e-2 by default (see run_config.cpp)
};

struct LoraConfig {
  std::int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  bool rslora = false;               // scale alpha / sqrt(r) instead of alpha / r
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj"};
};

struct Stage2Config {
  bool enabled = true;
  LoraConfig lora;
  Stage2Loss loss = Stage2Loss::kCe;
  bool merge = false;                // fold the adapters into the exported weights instead of adapter/
  // The KL loss's teacher from a cache (distill/teacher_cache.h) instead of a teacher forward each step:
  // its top_k log-probabilities per position and the mass outside them. 0: no cache.
  std::int64_t teacher_cache_top_k = 0;
  std::string teacher_cache_path;    // empty: <out>/teacher_logits.h5
  Optimization optim;
};

struct DeviceConfig {
  DeviceType type = DeviceType::kCpu;
  ComputeDtype dtype = ComputeDtype::kAuto;
  // Multi-process runs (distill/distributed.h): the longest a rank waits for the others in a collective,
  // the rendezvous and rank 0's conversion included; a dead or hung rank ends the job after it.
  std::int64_t timeout_s = 600;
  // Keep only each block's input in the forward and recompute the block in the backward (both stages;
  // kernels/checkpoint.h): training memory of one block's intermediates instead of every block's.
  bool activation_checkpointing = false;
};

struct CheckpointConfig {
  std::string dir;                   // empty: <out>/checkpoints
  std::int64_t every = 100;          // optimiser steps between checkpoints (and one at every stop)
  std::int64_t keep = 3;             // newest complete checkpoints kept
};

// The export's `linearize eval` (docs/distillation.md#eval) at the end of the run: <out>/eval.json and its charts
// in report.html. Off without a text.
struct EvalConfig {
  std::string text;                                 // held-out text file; empty: no eval
  std::vector<std::int64_t> lengths{512, 1024, 2048};  // windows and passkey prompts, <= max_position_embeddings
};

struct RecipeConfig {
  std::string name;
  nlohmann::json params = nlohmann::json::object();  // free-form, for the recipe registry
};

struct RunConfig {
  std::string model;                 // the source HF directory
  std::string out;                   // the export directory
  RecipeConfig recipe;
  DataConfig data;
  Stage1Config stage1;
  Stage2Config stage2;
  DeviceConfig device;
  CheckpointConfig checkpoint;
  VerifyThresholds verify;           // the export's verify: verify.max_kl, min_top1, min_gen_agree; the rest verify's defaults
  EvalConfig eval;
  std::uint64_t seed = 0;
  std::int64_t log_every = 10;       // optimiser steps between metrics records

  RunConfig();  // the defaults above (stage 1's lr differs from stage 2's)

  // Parses the YAML file, applies `overrides` ("a.b=value", value in YAML syntax, e.g. "[q_proj, v_proj]")
  // in order, and validates. Throws InputError for anything wrong.
  static RunConfig load(const std::filesystem::path& path, const std::vector<std::string>& overrides = {});
  // The same from YAML text; `source` names it in errors and is the path a `base:` is relative to.
  static RunConfig parse(const std::string& yaml, const std::string& source,
                         const std::vector<std::string>& overrides = {});

  // Applies one "a.b=value" override (errors name "--set").
  void set(const std::string& assignment);
  // Required keys present and values in range; `source` names the config in errors.
  void validate(const std::string& source) const;
  // The effective config as YAML, keys in schema order; parse(dump()) gives an equal config.
  std::string dump() const;

  // Every leaf key path in schema order ("model", ..., "stage2.lora.r", ...).
  static std::vector<std::string> keys();
};

}  // namespace linearize
