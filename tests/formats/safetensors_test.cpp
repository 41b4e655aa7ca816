// safetensors <-> LibTorch: round trips in every loadable dtype, zero-copy read-only views,
// writer layout (sorted, aligned), and clear errors for dtypes we cannot turn into tensors.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "formats/error.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace linearize {
namespace {

at::Tensor sample(c10::ScalarType type, std::vector<int64_t> shape) {
  at::Tensor base = at::arange(at::IntArrayRef(shape).empty() ? 1 : c10::multiply_integers(shape), at::kDouble)
                        .reshape(shape) * 1.25 - 3.0;
  if (type == at::kBool) return base.gt(0);
  if (type == at::kByte) return base.abs().to(type);
  return base.to(type);
}

TEST(Safetensors, RoundTripsEveryLoadableDtype) {
  test::TempDir dir;
  const std::vector<c10::ScalarType> types = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16, at::kLong,
                                              at::kInt,    at::kShort, at::kChar, at::kByte,     at::kBool};
  NamedTensors tensors;
  for (auto type : types) tensors.emplace_back(std::string("t_") + c10::toString(type), sample(type, {3, 5}));
  tensors.emplace_back("scalar", at::scalar_tensor(7.5, at::kFloat));
  tensors.emplace_back("empty", at::empty({0, 4}, at::kBFloat16));
  write_safetensors(dir / "a.safetensors", tensors, {{"format", "pt"}});

  const auto file = SafetensorsFile::open(dir / "a.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  for (const auto& [name, expected] : tensors) {
    const at::Tensor got = file.tensor(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), expected.sizes()) << name;
    EXPECT_TRUE(at::equal(got, expected)) << name;
  }
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"a.safetensors"}) << "no temporary file left";
}

TEST(Safetensors, WriterSortsByAlignmentThenNameAndAlignsData) {
  test::TempDir dir;
  write_safetensors(dir / "b.safetensors",
                    {{"z_u8", at::ones({3}, at::kByte)}, {"b_f32", at::ones({2}, at::kFloat)}, {"a_f64", at::ones({1}, at::kDouble)},
                     {"a_f32", at::ones({2}, at::kFloat)}});
  const auto file = SafetensorsFile::open(dir / "b.safetensors");
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a_f64", "a_f32", "b_f32", "z_u8"}));
  EXPECT_EQ(file.header().data_start % 8, 0u);
}

TEST(Safetensors, TensorsAreReadOnlyViewsOfTheMapping) {
  test::TempDir dir;
  write_safetensors(dir / "c.safetensors", {{"w", at::arange(16, at::kFloat)}});
  const std::string before = test::read_file(dir / "c.safetensors");
  at::Tensor a;
  {
    const auto file = SafetensorsFile::open(dir / "c.safetensors");
    a = file.tensor("w");
    const at::Tensor b = file.tensor("w");
    EXPECT_EQ(a.data_ptr(), b.data_ptr()) << "two reads must view the same mapped bytes, not copies";
  }
  // The tensor keeps the mapping alive after the file object is gone.
  EXPECT_FLOAT_EQ(a[3].item<float>(), 3.0f);
  // Writing through a view faults (a loaded weight must never silently diverge from its file); a copy is free to change.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(a.mul_(2), "");
  at::Tensor copy = a.clone();
  copy.mul_(2);
  EXPECT_FLOAT_EQ(copy[3].item<float>(), 6.0f);
  EXPECT_EQ(test::read_file(dir / "c.safetensors"), before);
}

TEST(Safetensors, MisalignedDataIsCopiedWithCorrectValues) {
  test::TempDir dir;
  // A U8 tensor of 1 byte first puts the F32 data at offset 1 of the buffer (a valid but unusual file).
  std::string data(1, '\x07');
  const float values[2] = {1.5f, -2.25f};
  data.append(reinterpret_cast<const char*>(values), sizeof(values));
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  test::write_file(dir / "m.safetensors", test::safetensors_bytes(header + std::string((8 - header.size() % 8) % 8, ' '), data));
  const auto file = SafetensorsFile::open(dir / "m.safetensors");
  const at::Tensor f = file.tensor("f");
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.data_ptr()) % alignof(float), 0u);
  EXPECT_FLOAT_EQ(f[0].item<float>(), 1.5f);
  EXPECT_FLOAT_EQ(f[1].item<float>(), -2.25f);
  EXPECT_EQ(file.tensor("a")[0].item<uint8_t>(), 7);
}

TEST(Safetensors, UnsupportedDtypeIsNamedWhenLoaded) {
  test::TempDir dir;
  test::write_file(dir / "u.safetensors",
                   test::safetensors_bytes(R"({"q":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}  )", std::string(8, '\0')));
  const auto file = SafetensorsFile::open(dir / "u.safetensors");  // the header itself is valid
  try {
    file.tensor("q");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'q'.dtype: dtype F8_E4M3 is not supported"), std::string::npos) << e.what();
  }
  EXPECT_THROW(file.tensor("missing"), InputError);
}

TEST(Safetensors, OpenNamesTheFileWhenItCannotBeRead) {
  try {
    SafetensorsFile::open("/nonexistent/x.safetensors");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent/x.safetensors: file: cannot open", 0), 0u) << e.what();
  }
}

TEST(Safetensors, WriterRejectsDuplicateNamesAndLeavesNothing) {
  test::TempDir dir;
  EXPECT_THROW(write_safetensors(dir / "d.safetensors", {{"x", at::ones({1})}, {"x", at::ones({1}, at::kDouble)}}),
               std::invalid_argument);
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

}  // namespace
}  // namespace linearize
