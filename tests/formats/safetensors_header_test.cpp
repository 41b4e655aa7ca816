// The safetensors header validator: every malformed-file class of docs/formats.md#input-checks is rejected with an
// error naming the file and the field; valid edge cases (empty, 0-rank, padding, metadata) are accepted.
#include <gtest/gtest.h>

#include <string>

#include "formats/error.h"
#include "formats/safetensors_header.h"
#include "test_util.h"

namespace linearize {
namespace {

using test::safetensors_bytes;

SafetensorsHeader parse(const std::string& bytes) {
  return parse_safetensors_header(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), "w.safetensors");
}

struct BadCase {
  const char* label;
  std::string bytes;
  const char* field;    // must appear in the error as "w.safetensors: <field>:"
  const char* message;  // a phrase the message must contain
};

// ctest lists each case by its label, not by its bytes.
void PrintTo(const BadCase& c, std::ostream* os) { *os << c.label; }

class BadHeader : public testing::TestWithParam<BadCase> {};

TEST_P(BadHeader, IsRejectedNamingFileAndField) {
  const auto& c = GetParam();
  try {
    parse(c.bytes);
    FAIL() << "accepted: " << c.label;
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(std::string("w.safetensors: ") + c.field + ":", 0), 0u) << what;
    EXPECT_NE(what.find(c.message), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "error must be one line: " << what;
  }
}

const std::string k16(16, '\0');
// A shape nested 100k deep: its error message must not recurse per level (found by the fuzzer).
std::string deep_shape() {
  const std::string nested = std::string(100000, '[') + std::string(100000, ']');
  return safetensors_bytes(R"({"a":{"dtype":"U8","shape":[)" + nested + R"(],"data_offsets":[0,1]}})", std::string(1, '\0'));
}

std::string big_length() {
  std::string b(8, '\0');
  b[3] = 0x10;  // 0x10000000 = 268 MB
  return b + "{}";
}

INSTANTIATE_TEST_SUITE_P(
    Safetensors, BadHeader,
    testing::Values(
        BadCase{"empty file", "", "header length", "truncated"},
        BadCase{"short length", std::string(5, '\0'), "header length", "truncated"},
        BadCase{"header over 100 MB", big_length(), "header length", "100 MB"},
        BadCase{"length past end", safetensors_bytes("{}", "").substr(0, 9), "header length", "past the end"},
        BadCase{"not json", safetensors_bytes("{\"a\": ", ""), "header", "not valid JSON"},
        BadCase{"not an object", safetensors_bytes("[1, 2]", ""), "header", "does not start with '{'"},
        BadCase{"leading space", safetensors_bytes(" {}", ""), "header", "does not start with '{'"},
        BadCase{"trailing garbage", safetensors_bytes("{}x", ""), "header", "not valid JSON"},
        BadCase{"duplicate tensor",
                safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", k16),
                "header", "duplicate key 'a'"},
        BadCase{"duplicate field",
                safetensors_bytes(R"({"a":{"dtype":"F32","dtype":"F16","shape":[4],"data_offsets":[0,16]}})", k16),
                "header", "duplicate key 'dtype'"},
        BadCase{"unknown dtype", safetensors_bytes(R"({"a":{"dtype":"F12","shape":[4],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.dtype", "unknown dtype 'F12'"},
        BadCase{"missing dtype", safetensors_bytes(R"({"a":{"shape":[4],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.dtype", "missing"},
        BadCase{"negative dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.shape", "non-negative"},
        BadCase{"float dim", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.shape", "non-negative"},
        BadCase{"shape overflow",
                safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.shape", "overflows"},
        BadCase{"one offset", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[16]}})", k16),
                "tensor 'a'.data_offsets", "[BEGIN, END]"},
        BadCase{"end before begin", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}})", k16),
                "tensor 'a'.data_offsets", "< BEGIN"},
        BadCase{"byte count mismatch", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.data_offsets", "needs 12"},
        BadCase{"dtype mismatch (F16 needs 8 of 16 bytes)",
                safetensors_bytes(R"({"a":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}})", k16),
                "tensor 'a'.data_offsets", "needs 8"},
        BadCase{"overlap",
                safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", k16),
                "tensor 'b'.data_offsets", "overlaps"},
        BadCase{"hole", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", k16),
                "tensor 'a'.data_offsets", "hole of 8 bytes"},
        BadCase{"out of range", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", k16),
                "tensor 'a'.data_offsets", "past the 16-byte data buffer"},
        BadCase{"trailing bytes", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", k16),
                "data buffer", "8 trailing bytes"},
        BadCase{"sub-byte not on a byte", safetensors_bytes(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", std::string(2, '\0')),
                "tensor 'a'.shape", "does not end on a byte"},
        BadCase{"metadata not strings", safetensors_bytes(R"({"__metadata__":{"format":1}})", ""),
                "__metadata__.format", "not a string"},
        BadCase{"metadata not object", safetensors_bytes(R"({"__metadata__":"pt"})", ""), "__metadata__", "not an object"},
        BadCase{"entry not object", safetensors_bytes(R"({"a":[1]})", ""), "tensor 'a'", "not an object"},
        BadCase{"unexpected field", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"scale":2}})", ""),
                "tensor 'a'.scale", "unexpected field"},
        BadCase{"deeply nested shape", deep_shape(), "tensor 'a'.shape", "got an array"},
        BadCase{"invalid utf-8", safetensors_bytes("{\"\xff\":{}}", ""), "header", "not valid JSON"}),
    [](const testing::TestParamInfo<BadCase>& param_info) {
      std::string name;
      for (char c : std::string(param_info.param.label)) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(SafetensorsHeader, AcceptsEmptyZeroRankPaddingAndMetadata) {
  const auto bytes = safetensors_bytes(
      R"({"__metadata__":{"format":"pt"},"scalar":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
      R"("empty":{"dtype":"BF16","shape":[0,3],"data_offsets":[8,8]},"w":{"dtype":"I8","shape":[2,2],"data_offsets":[8,12]}}    )",
      std::string(12, '\x01'));
  const auto h = parse(bytes);
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  const auto* scalar = h.find("scalar");
  ASSERT_NE(scalar, nullptr);
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->numel(), 1u);
  EXPECT_EQ(h.find("empty")->numel(), 0u);
  EXPECT_EQ(h.find("w")->begin, 8u);
  EXPECT_EQ(h.data_start, bytes.size() - 12);
}

TEST(SafetensorsHeader, AcceptsEveryFormatDtype) {
  for (const char* name : {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
                           "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "C64"}) {
    DType d{};
    ASSERT_TRUE(dtype_from_name(name, &d)) << name;
    const auto bytes_per = static_cast<std::size_t>(dtype_bits(d) / 8);
    const auto h = parse(safetensors_bytes(std::string(R"({"t":{"dtype":")") + name + R"(","shape":[2],"data_offsets":[0,)" +
                                               std::to_string(2 * bytes_per) + "]}}",
                                           std::string(2 * bytes_per, '\0')));
    EXPECT_STREQ(dtype_name(h.tensors.at(0).dtype), name);
  }
  // Sub-byte floats: 4 F4 values fill 2 bytes, 4 F6 values fill 3.
  EXPECT_NO_THROW(parse(safetensors_bytes(R"({"t":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", std::string(2, '\0'))));
  EXPECT_NO_THROW(parse(safetensors_bytes(R"({"t":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", std::string(3, '\0'))));
}

TEST(SafetensorsHeader, SerializedHeaderIsPaddedAndReparses) {
  std::vector<TensorEntry> entries(2);
  entries[0] = {"b", DType::F32, {3}, 0, 12};
  entries[1] = {"a", DType::U8, {5}, 12, 17};
  const std::string prefix = serialize_safetensors_header(entries, {{"format", "pt"}});
  EXPECT_EQ(prefix.size() % 8, 0u) << "the data buffer must start 8-byte aligned";
  const auto h = parse(prefix + std::string(17, '\0'));
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.find("a")->begin, 12u);
  EXPECT_EQ(h.find("b")->shape, std::vector<std::int64_t>{3});
}

}  // namespace
}  // namespace linearize
