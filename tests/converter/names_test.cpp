// The names module against the Hugging Face names transformers writes (literal strings here, the oracle)
// and its parsers against names that only look right.
#include <gtest/gtest.h>

#include "converter/names.h"

namespace linearize {
namespace {

using names::Capture;
using names::LayerModule;

TEST(Names, CheckpointTensorsAreTransformersNames) {
  EXPECT_EQ(names::weight(3, LayerModule::q_proj), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(names::bias(0, LayerModule::k_proj), "model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(names::weight(11, LayerModule::k_norm), "model.layers.11.self_attn.k_norm.weight");
  EXPECT_EQ(names::weight(2, LayerModule::down_proj), "model.layers.2.mlp.down_proj.weight");
  EXPECT_EQ(names::weight(5, LayerModule::input_layernorm), "model.layers.5.input_layernorm.weight");
  EXPECT_EQ(names::weight(5, LayerModule::post_feedforward_layernorm), "model.layers.5.post_feedforward_layernorm.weight");
  EXPECT_EQ(names::module_in_layer(LayerModule::gate_proj), "mlp.gate_proj");
  EXPECT_EQ(names::recipe_tensor(7, names::kFeatureMapQWeight), "model.layers.7.self_attn.feature_map_q.weight");
  EXPECT_STREQ(names::kEmbedTokens, "model.embed_tokens.weight");
}

TEST(Names, ModulePathsRoundTripAndOthersAreRefused) {
  for (int m = 0; m <= static_cast<int>(LayerModule::down_proj); ++m) {
    const auto module = static_cast<LayerModule>(m);
    const auto parsed = names::parse_module_path(names::module_path(12, module));
    ASSERT_TRUE(parsed) << names::module_path(12, module);
    EXPECT_EQ(parsed->layer, 12);
    EXPECT_EQ(parsed->module, module);
  }
  for (const char* bad : {"model.layers.3.mlp.q_proj", "model.layers.x.self_attn.q_proj", "model.layers.-1.self_attn.q_proj",
                          "model.layers.3.self_attn.q_proj.weight", "layers.3.self_attn.q_proj", "model.layers..self_attn.q_proj"})
    EXPECT_FALSE(names::parse_module_path(bad)) << bad;
}

TEST(Names, LayerOfAStoredName) {
  EXPECT_EQ(names::layer_of("model.layers.17.self_attn.feature_map_k.weight"), 17);
  EXPECT_EQ(names::layer_of("model.layers.0.self_attn.q_proj.lora_A.weight"), 0);
  EXPECT_FALSE(names::layer_of("model.norm.weight"));
  EXPECT_FALSE(names::layer_of("model.layers.a.x"));
}

TEST(Names, CapturesRoundTrip) {
  EXPECT_EQ(names::capture(4, Capture::attn_out), "layers.4.attn_out");
  EXPECT_EQ(names::mixer_scope(4), "layers.4.mixer");
  EXPECT_EQ(names::capture(names::mixer_scope(4), names::MixerCapture::o_lin), "layers.4.mixer.o_lin");
  for (const auto what : {Capture::attn_in, Capture::attn_out, Capture::mlp_out, Capture::out}) {
    const auto parsed = names::parse_capture(names::capture(21, what));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->layer, 21);
    EXPECT_EQ(parsed->what, what);
  }
  // The mixer's own captures and the model-level ones are not layer captures; a suffix alone is not enough.
  for (const char* other : {"layers.4.mixer.q", "layers.4.mixer.out", "embed", "norm", "logits", "layers.4.outx", "xlayers.4.out"})
    EXPECT_FALSE(names::parse_capture(other)) << other;
  EXPECT_TRUE(names::is_capture("layers.4.mixer.y", names::MixerCapture::y));
  EXPECT_FALSE(names::is_capture("layers.4.mixer.yy", names::MixerCapture::y));
}

}  // namespace
}  // namespace linearize
