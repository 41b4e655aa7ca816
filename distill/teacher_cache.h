// Stage 2's KL teacher computed once and cached (docs/distillation.md#teacher-cache; stage2.teacher_cache), instead of a
// teacher forward every step. Full next-token distributions cannot be kept (a 128K vocabulary is 512 MB
// of fp32 per 1024-token sequence), so per predicted position the cache keeps the teacher's k most
// probable tokens S, their log-probabilities, and the log of the mass p_o = 1 - sum_S p_i outside them.
// The loss is then the KL between the two distributions coarsened to S plus one outcome "other":
//   KL_k(p || q) = sum_{i in S} p_i log(p_i / q_i) + p_o log(p_o / q_o),   q_o = 1 - sum_S q_i.
// By the chain rule of KL (Cover & Thomas, Thm 2.5.3, with the partition {S, other}):
//   KL(p || q) = KL_k(p || q) + p_o KL(p|o || q|o),
// p|o and q|o the distributions restricted to the tokens outside S and renormalised. So KL_k never
// exceeds the full KL, equals it when p_o = 0 (k = vocab), and the part it does not see is weighted by p_o:
// the cache reports the teacher's mean p_o.
//
// Rows are keyed by their data position (epoch, sequence index in the epoch's packing) and carry their
// ids, so a lookup is checked against the batch it serves; the file also carries the teacher's fingerprint
// (a sha256 the caller derives from the source files' hashes and the compute dtype). A cache made from
// other data, another seed, another top_k or another teacher is refused with the file named, never used.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>

#include "converter/model/causal_lm.h"
#include "formats/hdf5_store.h"

namespace linearize {

// The teacher's top k of rows of sequences: log-probabilities [R, T-1, k] fp32 (descending), their token
// ids [R, T-1, k] int64, and log p_o [R, T-1] fp32 (-inf where nothing lies outside), for positions
// 0..T-2 (the ones with a next token, in shifted_log_probs' order once flattened).
struct TeacherTopK {
  at::Tensor log_probs, ids, other_log_mass;
};

// Of logits [R, T, V]: the top k (k <= V) of each position's log-softmax in fp32.
TeacherTopK teacher_top_k(const at::Tensor& logits, std::int64_t k);

// KL_k above per row: the teacher's log-probabilities [N, k], ids [N, k] and log p_o [N] against the
// student's log-probabilities [N, V] -> [N], differentiable in the student's.
at::Tensor top_k_kl_per_row(const at::Tensor& teacher_log_probs, const at::Tensor& teacher_ids,
                            const at::Tensor& teacher_other_log_mass, const at::Tensor& student_log_probs);

// Rows of one batch to cache: ids [R, T] (this rank's rows) and the data position of the first.
struct KeyedRows {
  std::int64_t epoch = 0, first_sequence = 0;
  at::Tensor ids;
};

struct TeacherCacheSummary {
  std::int64_t rows = 0;
  double mean_other_mass = 0;  // the teacher's mean p_o over the cached positions
  std::int64_t bytes = 0;      // of the file
};

// Runs `teacher` (identified by `fingerprint`, 64 hex digits) on `batches` batches from next() and writes
// their top k to `path` (temporary file + rename: whole or absent). on_batch(batches done) after each.
TeacherCacheSummary write_teacher_cache(const std::filesystem::path& path, const CausalLM& teacher,
                                        const std::string& fingerprint, std::int64_t top_k, std::int64_t batches,
                                        const std::function<KeyedRows()>& next,
                                        const std::function<void(std::int64_t done)>& on_batch = {});

class TeacherCache {
 public:
  // Opens and checks the file: its teacher must be `fingerprint`, its top k `top_k` and its rows `seq_len`
  // long (else an InputError naming the file and asking for its removal).
  TeacherCache(const std::filesystem::path& path, const std::string& fingerprint, std::int64_t top_k, std::int64_t seq_len);

  // The cached rows of sequences first, first+1, ... of `epoch`, one per row of ids [R, T] (compared with
  // the cached ids); CPU tensors.
  TeacherTopK rows(std::int64_t epoch, std::int64_t first_sequence, const at::Tensor& ids) const;

 private:
  std::filesystem::path path_;
  Hdf5Reader reader_;
  std::map<std::pair<std::int64_t, std::int64_t>, std::int64_t> row_of_;  // (epoch, sequence) -> row
};

}  // namespace linearize
