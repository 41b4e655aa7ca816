// SHA-256 against the FIPS 180-2 appendix examples (one block, two blocks, a million 'a') and the empty
// message, for byte ranges and files read in 1 MiB pieces.
#include <gtest/gtest.h>

#include <string>

#include "formats/error.h"
#include "formats/sha256.h"
#include "test_util.h"

namespace linearize {
namespace {

TEST(Sha256, FipsExamples) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, FileInPiecesEqualsTheWholeRange) {
  test::TempDir dir;
  const std::string million(1000000, 'a');  // under one 1 MiB read; the 2.5 MB file below takes three
  test::write_file(dir / "a", million);
  EXPECT_EQ(sha256_file(dir / "a"), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  const std::string big = million + million + std::string(500000, 'b');
  test::write_file(dir / "big", big);
  EXPECT_EQ(sha256_file(dir / "big"), sha256_hex(big.data(), big.size()));
  EXPECT_THROW(sha256_file(dir / "missing"), InputError);
}

}  // namespace
}  // namespace linearize
