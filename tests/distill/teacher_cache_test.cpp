// Stage 2's loss with the head computed a slice of positions at a time (checkpointed blocks) equals the
// whole head's, for every loss kind, live or cached teacher, and its gradients do too.
// Stage 2's teacher cache (distill/teacher_cache.h): KL_k equals the full KL when k is the vocabulary and
// otherwise falls short of it by exactly p_o KL(p|o || q|o) (the chain rule it rests on, checked in fp64),
// with finite gradients equal to the full KL's at k = V; the HDF5 file gives back, by data position, what
// the teacher computed, and refuses rows of another run (other teacher, top k, sequences or ids) naming the file.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "converter/next_token.h"
#include "converter/model/lora.h"
#include "distill/stage2_loss.h"
#include "distill/teacher_cache.h"
#include "formats/error.h"
#include "test_util.h"

namespace linearize {
namespace {

constexpr std::int64_t kRows = 40, kVocab = 100;

struct Pair {
  at::Tensor teacher, student;  // log-probabilities [N, V], fp32
};

// Peaked teacher rows (logits x 3) and a student near them, as in distillation.
Pair distributions() {
  at::manual_seed(3);
  const auto logits = at::randn({kRows, kVocab}) * 3;
  return {at::log_softmax(logits, -1), at::log_softmax(logits + at::randn({kRows, kVocab}) * 0.5, -1)};
}

at::Tensor kl_k(const Pair& d, std::int64_t k) {
  const auto top = teacher_top_k(d.teacher.unsqueeze(1).repeat({1, 2, 1}), k);  // [N, 2, V]: one predicted position each
  return top_k_kl_per_row(top.log_probs.select(1, 0), top.ids.select(1, 0), top.other_log_mass.select(1, 0), d.student);
}

TEST(TeacherCache, TopKKlIsTheFullKlWithTheWholeVocabulary) {
  const auto d = distributions();
  const auto exact = kl_per_row(d.teacher.to(at::kDouble), d.student.to(at::kDouble));
  const auto full = kl_k(d, kVocab);
  // fp32 terms p (log p - log q) summed over 100 tokens in another order than the fp64 reference: rounding
  // of a few u = 6e-8 per term relative to the largest (|log p - log q| <= ~10 here); 1e-5 absolute on KLs of
  // order 0.1-1 is over tenfold that, and a missing or misweighted token moves a row by 1e-3 or more.
  EXPECT_LE((full.to(at::kDouble) - exact).abs().max().item<double>(), 1e-5);
  EXPECT_GT(exact.min().item<double>(), 1e-3);  // the comparison is not between zeros
}

TEST(TeacherCache, TopKKlFallsShortByTheWeightedKlOfTheRest) {
  const auto d = distributions();
  constexpr std::int64_t k = 10;
  const auto p = d.teacher.to(at::kDouble), q = d.student.to(at::kDouble);
  const auto in_top = at::zeros_like(p, at::kBool).scatter_(1, std::get<1>(p.topk(k, -1)), true);
  // p|o, q|o: the distributions outside the teacher's top k, renormalised; p_o the teacher's mass there.
  const auto rest = [&](const at::Tensor& lp) { return at::log_softmax(lp.masked_fill(in_top, -INFINITY), -1); };
  const auto p_other = p.exp().masked_fill(in_top, 0).sum(-1);
  const auto tail = (rest(p).exp() * (rest(p) - rest(q))).masked_fill(in_top, 0).sum(-1);
  const auto expected = kl_per_row(p, q) - p_other * tail;
  const auto actual = kl_k(d, k).to(at::kDouble);
  EXPECT_LE((actual - expected).abs().max().item<double>(), 1e-5);  // fp32 rounding, as above
  EXPECT_TRUE((actual <= kl_per_row(p, q) + 1e-6).all().item<bool>());  // never above the full KL
  EXPECT_GT((p_other * tail).max().item<double>(), 1e-3);  // the rest weighs enough to be seen
}

TEST(TeacherCache, GradientsAtTheWholeVocabularyAreTheFullKls) {
  const auto d = distributions();
  const auto student_logits = d.student.clone().requires_grad_(true);
  kl_k({d.teacher, at::log_softmax(student_logits, -1)}, kVocab).sum().backward();
  const auto cached = student_logits.grad().clone();
  student_logits.mutable_grad().reset();
  kl_per_row(d.teacher, at::log_softmax(student_logits, -1)).sum().backward();
  EXPECT_TRUE(at::isfinite(cached).all().item<bool>()) << "the empty 'other' outcome must not poison the gradient";
  // Both are q - p per logit up to fp32 rounding (u per term).
  EXPECT_LE((cached - student_logits.grad()).abs().max().item<double>(), 1e-6);
}

TEST(TeacherCache, RowsComeBackByDataPositionAndOtherRunsAreRefused) {
  test::TempDir dir;
  const auto teacher = CausalLM::load(test::fixtures_dir() / "tiny-llama");
  const auto vocab = teacher.config().vocab_size;
  at::manual_seed(5);
  const std::vector<at::Tensor> batches{at::randint(0, vocab, {3, 12}, at::kLong), at::randint(0, vocab, {3, 12}, at::kLong)};
  const auto path = dir / "teacher.h5";
  std::size_t next = 0;
  const std::string fingerprint(64, 'a'), other_teacher = std::string(63, 'a') + "b";
  const auto summary = write_teacher_cache(path, teacher, fingerprint, 16, 2, [&] {
    const auto b = static_cast<std::int64_t>(next);
    return KeyedRows{/*epoch=*/b, /*first_sequence=*/6 - 3 * b, batches[next++]};  // epoch 0 rows 6-8, epoch 1 rows 3-5
  });
  EXPECT_EQ(summary.rows, 6);
  EXPECT_GT(summary.mean_other_mass, 0.0);
  EXPECT_LT(summary.mean_other_mass, 1.0);

  const TeacherCache cache(path, fingerprint, 16, 12);
  const auto expected = teacher_top_k(teacher.forward(batches[1]), 16);
  const auto got = cache.rows(1, 4, batches[1].narrow(0, 1, 2));
  EXPECT_TRUE(at::equal(got.log_probs, expected.log_probs.narrow(0, 1, 2)));
  EXPECT_TRUE(at::equal(got.ids, expected.ids.narrow(0, 1, 2)));
  EXPECT_TRUE(at::equal(got.other_log_mass, expected.other_log_mass.narrow(0, 1, 2)));

  const auto refused = [&](const std::function<void()>& action, const std::string& field) {
    try {
      action();
    } catch (const InputError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      EXPECT_NE(message.find(field), std::string::npos) << message;
      EXPECT_NE(message.find("remove the file"), std::string::npos) << message;
      return;
    }
    ADD_FAILURE() << "accepted: " << field;
  };
  refused([&] { TeacherCache(path, other_teacher, 16, 12); }, "teacher");
  refused([&] { TeacherCache(path, fingerprint, 8, 12); }, "top_k_log_probs");
  refused([&] { TeacherCache(path, fingerprint, 16, 64); }, "top_k_log_probs");
  refused([&] { cache.rows(0, 8, batches[0]); }, "sequences");              // rows 8-10: 9 and 10 were never cached
  refused([&] { cache.rows(0, 6, batches[1]); }, "ids");                    // the position of other ids
}

TEST(Stage2Loss, TheHeadInSlicesEqualsTheWholeHead) {
  auto student = CausalLM::load(test::fixtures_dir() / "tiny-llama");
  const auto teacher = CausalLM::load(test::fixtures_dir() / "tiny-llama");
  const auto vocab = student.config().vocab_size;
  const auto adapters = attach_lora(student, {"q_proj", "v_proj", "down_proj"}, {4, 8.0, 0.0, false},
                                    at::make_generator<at::CPUGeneratorImpl>(1));
  at::manual_seed(2);
  std::vector<at::Tensor> params;
  for (const auto& a : adapters) {
    const at::NoGradGuard no_grad;
    a->b().normal_(0, 0.05);  // B != 0: A gets gradients too
    params.push_back(a->a());
    params.push_back(a->b());
  }
  const auto ids = at::randint(0, vocab, {2, 40}, at::kLong);
  auto labels = ids.clone();
  labels.narrow(1, 0, 12).fill_(-100);  // a prompt without loss: the first slices have no predicted rows
  const auto cached = teacher_top_k(teacher.forward(ids), 32);
  for (const auto kind : {Stage2Loss::kCe, Stage2Loss::kKl, Stage2Loss::kCeKl}) {
    for (const bool use_cache : {false, true}) {
      const auto run = [&](bool sliced) {
        student.set_checkpoint_blocks(sliced);
        for (auto& p : params) p.mutable_grad().reset();
        // 7 positions a slice: 78 predicted positions in 12 slices, the last one short.
        const auto loss = stage2_loss(student, teacher, ids, labels, kind, use_cache ? &cached : nullptr, 7 * vocab);
        loss.backward();
        std::vector<at::Tensor> grads;
        for (const auto& p : params) grads.push_back(p.grad().clone());
        return std::pair{loss.item<double>(), grads};
      };
      const auto [whole, whole_grads] = run(false);
      const auto [sliced, sliced_grads] = run(true);
      const std::string what = "loss " + to_string(kind) + (use_cache ? ", cached teacher" : ", live teacher");
      // The same terms summed slice by slice: fp32 rounding of a sum of 78 terms (u = 6e-8 each, relative).
      EXPECT_NEAR(sliced, whole, 1e-6 * std::abs(whole)) << what;
      for (std::size_t i = 0; i < params.size(); ++i) {
        // Each row's gradient is the same computation; the head's GEMMs see 7 rows instead of 78 (another
        // blocking of the same dot products): fp32 rounding, far below the 1e-5 of the largest gradient that
        // a dropped or double-counted slice (a share of 1/12 of it) would exceed.
        const double scale = whole_grads[i].abs().max().item<double>();
        EXPECT_GT(scale, 0.0) << what;
        EXPECT_LE((sliced_grads[i] - whole_grads[i]).abs().max().item<double>(), 1e-5 * scale) << what << " tensor " << i;
      }
    }
  }
}

}  // namespace
}  // namespace linearize
