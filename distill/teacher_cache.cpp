#include "distill/teacher_cache.h"

#include <ATen/core/grad_mode.h>

#include <limits>
#include <string>
#include <vector>

#include "formats/error.h"

namespace linearize {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSequences = "sequences";  // int32 [N, 2]: (epoch, sequence) of each row
constexpr const char* kIds = "ids";              // int32 [N, T]
constexpr const char* kLogProbs = "top_k_log_probs";
constexpr const char* kTokenIds = "top_k_ids";
constexpr const char* kOtherLogMass = "other_log_mass";
constexpr const char* kTeacher = "teacher";      // int32 [1, 8]: the fingerprint's 32 bytes

// 64 hex digits as a row of 8 int32 (HDF5 stores the bits; equality is all that is asked of them).
at::Tensor fingerprint_row(const std::string& hex) {
  TORCH_CHECK(hex.size() == 64, "teacher cache: the fingerprint must be 64 hex digits");
  auto row = at::empty({1, 8}, at::kInt);
  for (int i = 0; i < 8; ++i)
    row[0][i] = static_cast<std::int32_t>(static_cast<std::uint32_t>(std::stoul(hex.substr(8 * static_cast<std::size_t>(i), 8), nullptr, 16)));
  return row;
}

}  // namespace

TeacherTopK teacher_top_k(const at::Tensor& logits, std::int64_t k) {
  const auto log_probs = at::log_softmax(logits.narrow(1, 0, logits.size(1) - 1).to(at::kFloat), -1);
  auto [values, ids] = log_probs.topk(k, -1);
  // log of the mass outside the top k, summed from the tokens themselves (not 1 - sum, which cancels).
  auto other = log_probs.scatter(-1, ids, -std::numeric_limits<float>::infinity()).logsumexp(-1);
  return {std::move(values), std::move(ids), std::move(other)};
}

at::Tensor top_k_kl_per_row(const at::Tensor& teacher_log_probs, const at::Tensor& teacher_ids,
                            const at::Tensor& teacher_other_log_mass, const at::Tensor& student_log_probs) {
  const auto p = teacher_log_probs.exp(), p_other = teacher_other_log_mass.exp();
  const auto q_in = student_log_probs.gather(1, teacher_ids);
  // log q_o from the student's own tokens outside S; the lowest finite value (not -inf) where S is the whole
  // vocabulary keeps the value and its gradient finite there, and p_o = 0 then weighs it out.
  const auto q_other = student_log_probs.scatter(1, teacher_ids, std::numeric_limits<float>::lowest()).logsumexp(1);
  // xlogy: 0 log 0 = 0 where a teacher probability underflows.
  return (at::xlogy(p, p) - p * q_in).sum(1) + at::xlogy(p_other, p_other) - p_other * q_other;
}

TeacherCacheSummary write_teacher_cache(const fs::path& path, const CausalLM& teacher, const std::string& fingerprint,
                                        std::int64_t top_k, std::int64_t batches, const std::function<KeyedRows()>& next,
                                        const std::function<void(std::int64_t done)>& on_batch) {
  TORCH_CHECK(batches > 0 && top_k > 0, "write_teacher_cache: nothing to cache");
  const at::NoGradGuard no_grad;
  Hdf5Writer writer(path);
  TeacherCacheSummary summary;
  double other_mass = 0;
  std::int64_t positions = 0;
  for (std::int64_t b = 0; b < batches; ++b) {
    const auto rows = next();
    const auto R = rows.ids.size(0), T = rows.ids.size(1);
    const auto top = teacher_top_k(teacher.forward(rows.ids), top_k);
    if (b == 0) {
      const auto k = top.ids.size(2);
      writer.create_dataset(kSequences, at::kInt, {2});
      writer.create_dataset(kIds, at::kInt, {T});
      writer.create_dataset(kLogProbs, at::kFloat, {T - 1, k});
      writer.create_dataset(kTokenIds, at::kInt, {T - 1, k});
      writer.create_dataset(kOtherLogMass, at::kFloat, {T - 1});
      writer.create_dataset(kTeacher, at::kInt, {8});
      writer.append(kTeacher, fingerprint_row(fingerprint));
    }
    const auto sequence = at::arange(rows.first_sequence, rows.first_sequence + R, at::kLong);
    writer.append(kSequences, at::stack({at::full({R}, rows.epoch, at::kLong), sequence}, 1).to(at::kInt));
    writer.append(kIds, rows.ids.to(at::kInt));
    writer.append(kLogProbs, top.log_probs);
    writer.append(kTokenIds, top.ids.to(at::kInt));
    writer.append(kOtherLogMass, top.other_log_mass);
    other_mass += top.other_log_mass.exp().sum().item<double>();
    positions += top.other_log_mass.numel();
    summary.rows += R;
    if (on_batch) on_batch(b + 1);
  }
  writer.close();
  summary.mean_other_mass = other_mass / static_cast<double>(positions);
  summary.bytes = static_cast<std::int64_t>(fs::file_size(path));
  return summary;
}

TeacherCache::TeacherCache(const fs::path& path, const std::string& fingerprint, std::int64_t top_k, std::int64_t seq_len)
    : path_(path), reader_(path) {
  const auto stale = [&](const std::string& field, const std::string& what) {
    throw InputError(path.string(), field, what + ": it was made by another run; remove the file to rebuild it");
  };
  if (!at::equal(reader_.read(kTeacher, 0, 1), fingerprint_row(fingerprint)))
    stale(kTeacher, "holds another teacher's outputs (source files or compute dtype)");
  const auto shape = reader_.shape(kLogProbs);  // an InputError naming file and dataset when absent
  if (shape.size() != 3 || shape[2] != top_k) stale(kLogProbs, "holds the top " + std::to_string(shape.back()) + ", the run asks for " + std::to_string(top_k));
  if (shape[1] != seq_len - 1) stale(kLogProbs, "holds " + std::to_string(shape[1] + 1) + "-token rows, the run's are " + std::to_string(seq_len));
  for (const auto* name : {kIds, kTokenIds, kOtherLogMass, kSequences})
    if (reader_.shape(name).front() != shape[0]) stale(name, "has another row count than " + std::string(kLogProbs));
  const auto keys = reader_.read(kSequences, 0, shape[0]).to(at::kLong);
  const auto* k = keys.data_ptr<std::int64_t>();
  for (std::int64_t row = 0; row < shape[0]; ++row) row_of_[{k[2 * row], k[2 * row + 1]}] = row;
}

TeacherTopK TeacherCache::rows(std::int64_t epoch, std::int64_t first_sequence, const at::Tensor& ids) const {
  std::vector<std::int64_t> rows;
  for (std::int64_t r = 0; r < ids.size(0); ++r) {
    const auto found = row_of_.find({epoch, first_sequence + r});
    if (found == row_of_.end())
      throw InputError(path_.string(), kSequences,
                       "holds no row for sequence " + std::to_string(first_sequence + r) + " of epoch " + std::to_string(epoch) +
                           " (made for other steps, batch size or world size): remove the file to rebuild it");
    rows.push_back(found->second);
  }
  const auto read = [&](const char* name) {
    std::vector<at::Tensor> parts;
    for (std::size_t i = 0; i < rows.size();) {  // runs of consecutive rows in one read
      std::size_t j = i + 1;
      while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
      parts.push_back(reader_.read(name, rows[i], rows[j - 1] + 1));
      i = j;
    }
    return at::cat(parts);
  };
  if (!at::equal(read(kIds), ids.cpu().to(at::kInt)))
    throw InputError(path_.string(), kIds, "differ from the batch's at sequence " + std::to_string(first_sequence) + " of epoch " +
                                               std::to_string(epoch) + " (made from other data or seed): remove the file to rebuild it");
  return {read(kLogProbs), read(kTokenIds).to(at::kLong), read(kOtherLogMass)};
}

}  // namespace linearize
