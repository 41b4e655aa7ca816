// HDF5 activation stores: fp32, bf16 and int32 round trips (bit-exact) with appends across calls and row-range
// reads, nothing at the final path before close(), and errors naming the file and the dataset for
// misuse, truncated files and garbage.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>

#include "formats/error.h"
#include "formats/hdf5_store.h"
#include "test_util.h"

namespace linearize {
namespace {

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Hdf5StoreTest, RoundTripsBlocksAppendedAcrossCalls) {
  test::TempDir dir;
  const auto path = dir / "cache.h5";
  const auto a = at::randn({5, 3, 4}), b = at::randn({4, 6}).to(at::kBFloat16);
  const auto ids = at::randint(-(1 << 30), 1 << 30, {3, 2, 5}, at::kInt);  // signed, beyond 16 bits
  {
    Hdf5Writer writer(path);
    writer.create_dataset("layers.0.attn_in", at::kFloat, {3, 4});
    writer.create_dataset("layers.1.attn_in", at::kBFloat16, {6});
    writer.append("layers.0.attn_in", a.slice(0, 0, 2));
    writer.append("layers.1.attn_in", b);
    writer.create_dataset("top_k_ids", at::kInt, {2, 5});
    writer.append("top_k_ids", ids);
    writer.append("layers.0.attn_in", a.slice(0, 2, 5));
    writer.append("layers.0.attn_in", a.slice(0, 0, 0));  // an empty block changes nothing
    EXPECT_FALSE(std::filesystem::exists(path));          // only the temporary exists until close()
    writer.close();
  }
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"cache.h5"});
  const Hdf5Reader reader(path);
  EXPECT_EQ(reader.names(), (std::vector<std::string>{"layers.0.attn_in", "layers.1.attn_in", "top_k_ids"}));
  EXPECT_EQ(reader.dtype("top_k_ids"), at::kInt);
  EXPECT_TRUE(at::equal(reader.read("top_k_ids", 0, 3), ids));
  EXPECT_EQ(reader.shape("layers.0.attn_in"), (std::vector<std::int64_t>{5, 3, 4}));
  EXPECT_EQ(reader.dtype("layers.1.attn_in"), at::kBFloat16);
  EXPECT_TRUE(at::equal(reader.read("layers.0.attn_in", 0, 5), a));  // stored bits, no conversion: exact
  EXPECT_TRUE(at::equal(reader.read("layers.0.attn_in", 1, 4), a.slice(0, 1, 4)));
  EXPECT_TRUE(at::equal(reader.read("layers.1.attn_in", 0, 4), b));
  EXPECT_EQ(reader.read("layers.0.attn_in", 2, 2).sizes(), (at::IntArrayRef{0, 3, 4}));
}

TEST(Hdf5StoreTest, AnUnclosedWriterLeavesNothing) {
  test::TempDir dir;
  {
    Hdf5Writer writer(dir / "cache.h5");
    writer.create_dataset("x", at::kFloat, {2});
    writer.append("x", at::ones({1, 2}));
  }
  EXPECT_TRUE(test::list_dir(dir.path()).empty());
}

TEST(Hdf5StoreTest, MisuseNamesFileAndDataset) {
  test::TempDir dir;
  const std::string file = (dir / "cache.h5").string();
  Hdf5Writer writer(dir / "cache.h5");
  writer.create_dataset("x", at::kFloat, {3, 4});
  EXPECT_EQ(error_of([&] { writer.append("x", at::zeros({2, 4, 3})); }), file + ": x: rows must be [n, 3, 4] of Float, got Float [2, 4, 3]");
  EXPECT_EQ(error_of([&] { writer.append("x", at::zeros({2, 3, 4}, at::kDouble)); }), file + ": x: rows must be [n, 3, 4] of Float, got Double [2, 3, 4]");
  EXPECT_EQ(error_of([&] { writer.append("y", at::zeros({1, 3, 4})); }), file + ": y: no such dataset");
  EXPECT_EQ(error_of([&] { writer.create_dataset("x", at::kFloat, {1}); }), file + ": x: dataset already exists");
  EXPECT_EQ(error_of([&] { writer.create_dataset("z", at::kHalf, {1}); }), file + ": z: only fp32, bf16 and int32 datasets are supported");
  writer.append("x", at::zeros({2, 3, 4}));
  writer.close();
  const Hdf5Reader reader(dir / "cache.h5");
  EXPECT_EQ(error_of([&] { reader.read("x", 1, 3); }), file + ": x: rows [1, 3) out of range [0, 2)");
  EXPECT_EQ(error_of([&] { reader.read("missing", 0, 1); }), file + ": missing: no such dataset");
}

TEST(Hdf5StoreTest, TruncatedOrCorruptFilesGiveClearErrors) {
  test::TempDir dir;
  const auto path = dir / "cache.h5";
  {
    Hdf5Writer writer(path);
    writer.create_dataset("x", at::kFloat, {256});
    writer.append("x", at::randn({1024, 256}));  // 1 MiB of data after the metadata
    writer.close();
  }
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size / 2);
  const std::string truncated = error_of([&] { Hdf5Reader reader(path); reader.read("x", 0, 1024); });
  EXPECT_EQ(truncated.rfind(path.string() + ": file: not a readable HDF5 file (truncated or corrupt?): ", 0), 0u) << truncated;

  test::write_file(path, std::string(4096, 'x'));
  const std::string garbage = error_of([&] { Hdf5Reader reader(path); });
  EXPECT_EQ(garbage.rfind(path.string() + ": file: not a readable HDF5 file (truncated or corrupt?): ", 0), 0u) << garbage;
  EXPECT_EQ(error_of([&] { Hdf5Reader reader(dir / "none.h5"); }), (dir / "none.h5").string() + ": file: does not exist");
}

}  // namespace
}  // namespace linearize
