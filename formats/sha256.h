// SHA-256 (FIPS 180-4) of byte ranges and files: the source fingerprints a converted model records and the
// per-tensor hashes L0 checks. OpenSSL's EVP digest computes it (SHA-NI / AVX2 code paths where the CPU
// has them).
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>

namespace linearize {

std::string sha256_hex(const void* data, std::size_t size);
std::string sha256_file(const std::filesystem::path& path);  // InputError(path, "sha256", ...) if unreadable

}  // namespace linearize
