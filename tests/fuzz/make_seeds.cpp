// Writes the seed corpus of fuzz_safetensors_header and its regression inputs:
//   make_seeds SEED_DIR REGRESSION_DIR MAX_LEN [FILE.safetensors...]
//
// From every real file: its first MAX_LEN bytes (whole when it is that small; a truncated copy, which the
// parser rejects, otherwise), and a shrunk valid copy that keeps the real header (names, dtypes, ranks,
// metadata) with every dimension cut to at most 2 and a zero data buffer, so the accept path starts from
// real headers within MAX_LEN. Then hand-made files: valid ones (empty header, one tensor of each dtype,
// metadata, scalars, empty tensors, offsets listed out of order) and a few classic invalid ones.
// REGRESSION_DIR gets inputs that once crashed the parser; they are run on their own (every build, not
// mutated), since some are large and would slow the fuzzing down.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/safetensors_header.h"

namespace fs = std::filesystem;
using linearize::DType;
using linearize::TensorEntry;

namespace {

int written = 0;

void write_seed(const fs::path& dir, const std::string& name, const std::string& bytes) {
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + (dir / name).string());
  ++written;
}

// 8-byte little-endian length, then `text` as it is (no padding unless the caller put some in).
std::string raw_file(const std::string& text, std::size_t buffer_bytes) {
  std::string out(8, '\0');
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text + std::string(buffer_bytes, '\0');
}

std::uint64_t byte_size(DType dtype, const std::vector<std::int64_t>& shape) {
  std::uint64_t numel = 1;
  for (auto d : shape) numel *= static_cast<std::uint64_t>(d);
  return numel * static_cast<std::uint64_t>(linearize::dtype_bits(dtype)) / 8;
}

// Lays `tensors` out back to back in the given order and serialises them with a zero buffer.
std::string valid_file(std::vector<TensorEntry> tensors, const std::map<std::string, std::string>& metadata = {}) {
  std::uint64_t offset = 0;
  for (auto& t : tensors) {
    t.begin = offset;
    t.end = offset += byte_size(t.dtype, t.shape);
  }
  return linearize::serialize_safetensors_header(tensors, metadata) + std::string(offset, '\0');
}

TensorEntry tensor(const std::string& name, DType dtype, std::vector<std::int64_t> shape) {
  TensorEntry t;
  t.name = name;
  t.dtype = dtype;
  t.shape = std::move(shape);
  return t;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// "tests/fixtures/tiny-qwen2/model-00001-of-00004.safetensors" -> "tiny-qwen2_model-00001-of-00004"
std::string seed_stem(const fs::path& path) {
  std::string stem = path.parent_path().filename().string() + "_" + path.stem().string();
  for (auto& c : stem)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) c = '_';
  return stem;
}

void real_seeds(const fs::path& dir, const fs::path& path, std::size_t max_len) {
  const std::string bytes = read_file(path);
  const std::string stem = "real_" + seed_stem(path);
  write_seed(dir, stem + (bytes.size() <= max_len ? ".whole" : ".head"), bytes.substr(0, max_len));

  auto header = linearize::parse_safetensors_header(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                                    bytes.size(), path.string());
  for (auto& t : header.tensors) {
    for (auto& d : t.shape) d = std::min<std::int64_t>(d, 2);
    if (t.numel() * static_cast<std::uint64_t>(linearize::dtype_bits(t.dtype)) % 8 != 0)
      t.shape = {8};  // sub-byte dtype: keep it ending on a byte
  }
  const std::string shrunk = valid_file(header.tensors, header.metadata);
  if (shrunk.size() <= max_len) write_seed(dir, stem + ".shrunk", shrunk);
}

void hand_made_seeds(const fs::path& dir) {
  // Valid.
  write_seed(dir, "valid_empty", raw_file("{}      ", 0));
  write_seed(dir, "valid_empty_unpadded", raw_file("{}", 0));
  write_seed(dir, "valid_metadata_only", valid_file({}, {{"format", "pt"}}));
  for (int i = 0; i <= static_cast<int>(DType::C64); ++i) {
    const auto dtype = static_cast<DType>(i);
    const int bits = linearize::dtype_bits(dtype);
    const std::int64_t n = bits == 4 ? 2 : bits == 6 ? 4 : 3;
    write_seed(dir, std::string("valid_dtype_") + linearize::dtype_name(dtype),
               valid_file({tensor("t", dtype, {n})}));
  }
  write_seed(dir, "valid_scalar_and_empty",
             valid_file({tensor("scalar", DType::F32, {}), tensor("empty", DType::BF16, {0, 4}),
                         tensor("matrix", DType::F16, {2, 3})}));
  write_seed(dir, "valid_model_like",
             valid_file({tensor("model.embed_tokens.weight", DType::BF16, {8, 4}),
                         tensor("model.layers.0.self_attn.q_proj.weight", DType::BF16, {4, 4}),
                         tensor("model.layers.0.self_attn.q_proj.bias", DType::F32, {4}),
                         tensor("model.norm.weight", DType::F32, {4}), tensor("lm_head.weight", DType::BF16, {8, 4})},
                        {{"format", "pt"}, {"note", "caf\xc3\xa9 \\\"quoted\\\""}}));
  write_seed(dir, "valid_unordered_keys",
             raw_file(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"__metadata__":{"k":"v"},)"
                      R"("a":{"data_offsets":[0,4],"shape":[2],"dtype":"I16"}})",
                      8));
  write_seed(dir, "valid_whitespace",
             raw_file("{ \"x\" : { \"dtype\" : \"U8\" , \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 2 ] } }\n\t  ", 2));
  write_seed(dir, "valid_escaped_name",
             raw_file(R"({"w\u00e9ight\n\"q\"":{"dtype":"BOOL","shape":[1,1],"data_offsets":[0,1]}})", 1));

  // Invalid, one reason each.
  write_seed(dir, "bad_short", std::string("\x08\x00\x00", 3));
  write_seed(dir, "bad_length_past_end", raw_file("{}", 0).substr(0, 9));
  write_seed(dir, "bad_not_brace", raw_file("[]      ", 0));
  write_seed(dir, "bad_json", raw_file("{\"a\":", 0));
  write_seed(dir, "bad_duplicate",
             raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1));
  write_seed(dir, "bad_overlap",
             raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 3));
  write_seed(dir, "bad_hole",
             raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})", 3));
  write_seed(dir, "bad_trailing", raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 5));
  write_seed(dir, "bad_nbytes", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4));
  write_seed(dir, "bad_overflow",
             raw_file(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0));
  write_seed(dir, "bad_sub_byte", raw_file(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}})", 1));
  write_seed(dir, "bad_dtype", raw_file(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16));
  write_seed(dir, "bad_negative_dim", raw_file(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1));
  write_seed(dir, "bad_extra_field",
             raw_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":0}})", 1));
  write_seed(dir, "bad_metadata_value", raw_file(R"({"__metadata__":{"n":1}})", 0));
}

void regressions(const fs::path& dir) {
  // A shape nested 30000 deep: the error message dumped the shape with nlohmann's recursive dump and
  // overflowed the stack (SIGSEGV in the release build from a depth of about 100000).
  const std::string deep(30000, '[');
  write_seed(dir, "regress_deep_shape",
             raw_file(R"({"a":{"dtype":"U8","shape":[)" + deep + std::string(deep.size(), ']') +
                          R"(],"data_offsets":[0,1]}})",
                      1));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s SEED_DIR REGRESSION_DIR MAX_LEN [FILE.safetensors...]\n", argv[0]);
    return 2;
  }
  try {
    const fs::path dir = argv[1];
    const fs::path regression_dir = argv[2];
    const std::size_t max_len = std::stoul(argv[3]);
    for (const auto& d : {dir, regression_dir}) {
      fs::remove_all(d);
      fs::create_directories(d);
    }
    for (int i = 4; i < argc; ++i) real_seeds(dir, argv[i], max_len);
    hand_made_seeds(dir);
    std::printf("make_seeds: %d seeds in %s, ", written, dir.string().c_str());
    written = 0;
    regressions(regression_dir);
    std::printf("%d regression inputs in %s\n", written, regression_dir.string().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
