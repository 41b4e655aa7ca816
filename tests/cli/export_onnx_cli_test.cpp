// `export-onnx` and verify's L6 through the binary: a graph that passes ONNX's checker with weights that are the
// checkpoint's bytes; a changed weight byte in the external data fails L6; bad input is exit 2 with nothing
// written; a recipe without an ONNX form is refused naming the layer and the mixer. (Parity in onnxruntime:
// tests/python/test_exports.py.)
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "converter/linearized.h"
#include "converter/onnx_export.h"
#include "formats/error.h"
#include "formats/onnx_model.h"
#include "test_util.h"

namespace linearize {
namespace {

std::filesystem::path fixture(const std::string& name) { return test::fixtures_dir() / name; }

std::string row_of(const std::string& out, const std::string& check) {
  const auto at = out.find(check);
  return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
}

test::CommandResult convert(const std::filesystem::path& out, const std::string& recipe = "liger-gla") {
  return test::run_linearize({"convert", "--model", fixture("tiny-llama").string(), "--recipe", recipe, "--out", out.string()});
}

TEST(ExportOnnxCli, WritesACheckedGraphThatVerifyChecksToo) {
  test::TempDir dir;
  const auto model = dir / "out";
  ASSERT_EQ(convert(model).exit_code, 0);
  const auto r = test::run_linearize({"export-onnx", "--model", model.string(), "--external-data-above", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.err.find("strict shape inference: pass"), std::string::npos) << r.err;
  ASSERT_TRUE(std::filesystem::exists(model / "model.onnx.data"));
  const auto info = onnx_model::read_file_info(model / "model.onnx");
  EXPECT_EQ(info.opset, kOnnxDefaultOpset);
  for (const char* name : {"input_ids", "attention_mask", "position_ids", "past.1.recurrent", "past_key_values.1.key"})
    EXPECT_NE(std::find(info.inputs.begin(), info.inputs.end(), name), info.inputs.end()) << name;
  for (const char* name : {"logits", "present.1.recurrent", "present.1.key"})
    EXPECT_NE(std::find(info.outputs.begin(), info.outputs.end(), name), info.outputs.end()) << name;

  // liger-gla's recurrent state has no conv beside it and layer 0 keeps a window cache: genai cannot carry them.
  EXPECT_FALSE(std::filesystem::exists(model / "genai_config.json"));
  EXPECT_NE(r.err.find("no genai_config.json: layer 0 carries key/value cache, recurrent;"), std::string::npos) << r.err;

  auto verify = test::run_linearize({"verify", "--model", model.string()});
  EXPECT_EQ(verify.exit_code, 0) << verify.out;
  for (const char* check : {"onnx checker (full) and strict shape inference", "onnx weights byte-identical to model.safetensors",
                            "onnx graph built from this recipe and parameters"})
    EXPECT_NE(row_of(verify.out, check).find("PASS"), std::string::npos) << check << "\n" << verify.out;

  // One weight byte changed in the graph's data: the graph no longer computes the verified model.
  const auto o_proj = std::find_if(info.initializers.begin(), info.initializers.end(), [](const auto& i) {
    return i.name == "model.layers.0.self_attn.o_proj.weight";
  });
  ASSERT_NE(o_proj, info.initializers.end());
  auto data = test::read_file(model / "model.onnx.data");
  data[o_proj->offset + 5] ^= 0x10;
  test::write_file(model / "model.onnx.data", data);
  verify = test::run_linearize({"verify", "--model", model.string()});
  EXPECT_EQ(verify.exit_code, 1) << verify.out;
  const auto row = row_of(verify.out, "onnx weights byte-identical to model.safetensors");
  EXPECT_NE(row.find("FAIL"), std::string::npos) << verify.out;
  EXPECT_NE(row.find("o_proj"), std::string::npos) << row;
}

TEST(ExportOnnxCli, ASourceCheckpointGetsOnnxruntimeGenaisConfig) {
  test::TempDir dir;
  std::filesystem::copy(fixture("tiny-mistral"), dir.path(), std::filesystem::copy_options::recursive);
  const auto r = test::run_linearize({"export-onnx", "--model", dir.path().string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto genai = nlohmann::json::parse(test::read_file(dir / "genai_config.json"));
  const auto config = nlohmann::json::parse(test::read_file(dir / "config.json"));
  EXPECT_EQ(genai["model"]["type"], "decoder");  // genai's generic type: it knows no olmo3 or smollm3
  EXPECT_EQ(genai["model"]["decoder"]["filename"], "model.onnx");
  EXPECT_EQ(genai["model"]["decoder"]["num_hidden_layers"], config["num_hidden_layers"]);
  EXPECT_EQ(genai["model"]["decoder"]["inputs"]["past_key_names"], "past_key_values.%d.key");
  EXPECT_EQ(genai["search"]["past_present_share_buffer"], false);
  const auto info = onnx_model::read_file_info(dir / "model.onnx");
  EXPECT_NE(std::find(info.inputs.begin(), info.inputs.end(), "past_key_values.0.value"), info.inputs.end());
}

TEST(ExportOnnxCli, AConversionWithConvAndRecurrentStatesGetsOnnxruntimeGenaisConfig) {
  test::TempDir dir;
  const auto model = dir / "out";
  ASSERT_EQ(test::run_linearize({"convert", "--model", fixture("tiny-qwen3").string(), "--recipe", "gated-deltanet", "--set",
                                 "softmax_layers=[0]", "--out", model.string()})
                .exit_code,
            0);
  const auto r = test::run_linearize({"export-onnx", "--model", model.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto genai = nlohmann::json::parse(test::read_file(model / "genai_config.json"));
  EXPECT_EQ(genai["model"]["type"], "decoder");  // not "linearize": genai knows no such type
  const auto& inputs = genai["model"]["decoder"]["inputs"];
  const auto& outputs = genai["model"]["decoder"]["outputs"];
  EXPECT_EQ(inputs["past_conv_names"], "past.%d.conv");
  EXPECT_EQ(inputs["past_recurrent_names"], "past.%d.recurrent");
  EXPECT_EQ(outputs["present_recurrent_names"], "present.%d.recurrent");
  EXPECT_EQ(inputs["past_key_names"], "past_key_values.%d.key");
  // The names it writes are the graph's (og.Generator's parity: tests/python/test_exports.py).
  const auto info = onnx_model::read_file_info(model / "model.onnx");
  for (const char* name : {"past_key_values.0.key", "past.1.conv", "past.1.recurrent"})
    EXPECT_NE(std::find(info.inputs.begin(), info.inputs.end(), name), info.inputs.end()) << name;
}

TEST(ExportOnnxCli, AnFp16GraphHoldsTheMatricesRoundedToFp16) {
  test::TempDir dir;
  const auto model = dir / "out";
  ASSERT_EQ(convert(model, "gated-deltanet").exit_code, 0);
  ASSERT_EQ(test::run_linearize({"export-onnx", "--model", model.string(), "--out", (dir / "fp32.onnx").string()}).exit_code, 0);
  const auto r = test::run_linearize({"export-onnx", "--model", model.string(), "--dtype", "fp16"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto info = onnx_model::read_file_info(model / "model.onnx");
  std::int64_t half = 0;
  for (const auto& init : info.initializers) half += init.type == onnx_model::ElementType::f16;
  // embed_tokens and, per layer, q/k/v/o and gate/up/down (tiny-llama ties lm_head to the embeddings).
  EXPECT_EQ(half, 1 + 7 * 2);
  EXPECT_LT(std::filesystem::file_size(model / "model.onnx"), 0.6 * std::filesystem::file_size(dir / "fp32.onnx"));
  // L6 compares them with the checkpoint rounded to fp16.
  const auto verify = test::run_linearize({"verify", "--model", model.string()});
  EXPECT_EQ(verify.exit_code, 0) << verify.out;
  EXPECT_NE(row_of(verify.out, "onnx weights byte-identical to model.safetensors").find("PASS"), std::string::npos) << verify.out;
}

TEST(ExportOnnxCli, BadInputIsExitTwoWithNothingWritten) {
  test::TempDir dir;
  const auto model = dir / "out";
  ASSERT_EQ(convert(model).exit_code, 0);
  const auto before = test::list_dir(model);
  auto r = test::run_linearize({"export-onnx", "--model", model.string(), "--opset", "17"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--opset"), std::string::npos) << r.err;
  std::filesystem::create_directory(model / "adapter");
  r = test::run_linearize({"export-onnx", "--model", model.string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("adapter"), std::string::npos) << r.err;
  std::filesystem::remove(model / "adapter");
  EXPECT_EQ(test::list_dir(model), before);
}

TEST(ExportOnnx, ARecipeWithoutAnOnnxFormIsRefusedNamingTheLayerAndTheMixer) {
  Recipe without = find_recipe("hedgehog", "test", "recipe");
  without.name = "hedgehog-without-onnx";
  without.emit_onnx = nullptr;
  register_recipe(without);
  test::TempDir dir;
  ConvertOptions options;
  options.source = fixture("tiny-llama");
  options.out = dir / "out";
  options.recipe = without.name;
  options.params = {{"softmax_layers", {0}}};
  convert_checkpoint(options);
  const auto before = test::list_dir(dir / "out");
  OnnxExportOptions export_options;
  export_options.model = dir / "out";
  try {
    export_onnx(export_options);
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1: mixer 'hedgehog-without-onnx'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(test::list_dir(dir / "out"), before);
}

}  // namespace
}  // namespace linearize
