// formats/onnx_model: a graph written inline and with external data reads back with its bytes where the file
// says; ONNX's checker and strict shape inference find a broken graph.
#include <gtest/gtest.h>

#include <cstring>

#include "formats/error.h"
#include "formats/onnx_model.h"
#include "test_util.h"

namespace linearize::onnx_model {
namespace {

// y = x W for x [batch, 3], W [3, 2]; `declared_width` is the output width the graph claims.
std::unique_ptr<Model> matmul_model(const std::vector<float>& w, std::int64_t declared_width = 2) {
  auto model = std::make_unique<Model>(21, "test");
  auto& g = model->graph();
  g.input("x", ElementType::f32, {"batch", 3});
  model->initializer("W", ElementType::f32, {3, 2}, w.data());
  g.rename(g.node("MatMul", {"x", "W"}), "y");
  g.output("y", ElementType::f32, {"batch", declared_width});
  return model;
}

const std::vector<float> kWeights{1, 2, 3, 4, 5, 6};

TEST(OnnxModel, InlineWeightsPassTheCheckerAndReadBack) {
  test::TempDir dir;
  const auto saved = matmul_model(kWeights)->save(dir / "model.onnx");
  EXPECT_TRUE(saved.external_data.empty());
  EXPECT_EQ(saved.initializers, 1);
  const auto check = check_file(dir / "model.onnx");
  EXPECT_TRUE(check.ok()) << check.checker << check.shape_inference;
  EXPECT_EQ(check.opset, 21);
  const auto info = read_file_info(dir / "model.onnx");
  ASSERT_EQ(info.initializers.size(), 1u);
  EXPECT_EQ(info.initializers[0].shape, (std::vector<std::int64_t>{3, 2}));
  ASSERT_EQ(info.initializers[0].inline_bytes.size(), sizeof(float) * 6);
  EXPECT_EQ(std::memcmp(info.initializers[0].inline_bytes.data(), kWeights.data(), sizeof(float) * 6), 0);
  EXPECT_EQ(test::list_dir(dir.path()), (std::vector<std::string>{"model.onnx"}));
}

TEST(OnnxModel, ExternalDataIsPageAlignedAndHoldsTheBytes) {
  test::TempDir dir;
  auto model = matmul_model(kWeights);
  const std::vector<float> bias{7, 8};
  model->initializer("b", ElementType::f32, {2}, bias.data());
  SaveOptions options;
  options.external_data_above = 0;
  options.inline_below = 0;
  const auto saved = model->save(dir / "model.onnx", options);
  EXPECT_EQ(saved.external_data, dir / "model.onnx.data");
  EXPECT_TRUE(check_file(dir / "model.onnx").checker.empty());
  const auto info = read_file_info(dir / "model.onnx");
  const auto data = test::read_file(dir / "model.onnx.data");
  ASSERT_EQ(info.initializers.size(), 2u);
  for (const auto& [init, expected] : {std::pair{info.initializers[0], kWeights}, std::pair{info.initializers[1], bias}}) {
    EXPECT_EQ(init.location, "model.onnx.data");
    EXPECT_EQ(init.offset % 4096, 0u) << init.name;
    ASSERT_LE(init.offset + init.length, data.size());
    EXPECT_EQ(std::memcmp(data.data() + init.offset, expected.data(), init.length), 0) << init.name;
  }
}

TEST(OnnxModel, TheCheckerFindsAnUndefinedInput) {
  test::TempDir dir;
  Model model(21, "test");
  auto& g = model.graph();
  g.input("x", ElementType::f32, {2});
  g.rename(g.node("Add", {"x", "nowhere"}), "y");
  g.output("y", ElementType::f32, {2});
  model.save(dir / "model.onnx");
  EXPECT_NE(check_file(dir / "model.onnx").checker.find("nowhere"), std::string::npos);
}

TEST(OnnxModel, StrictShapeInferenceFindsAWrongDeclaredShape) {
  test::TempDir dir;
  matmul_model(kWeights, /*declared_width=*/5)->save(dir / "model.onnx");
  const auto check = check_file(dir / "model.onnx");
  EXPECT_FALSE(check.ok());
  EXPECT_FALSE(check.shape_inference.empty());
}

TEST(OnnxModel, ANonOnnxFileIsBadInputNamingIt) {
  test::TempDir dir;
  test::write_file(dir / "model.onnx", "not a protobuf at all \xff\xff\xff");
  try {
    read_file_info(dir / "model.onnx");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.onnx"), std::string::npos);
  }
}

}  // namespace
}  // namespace linearize::onnx_model
