// storage/hashing.h — the hashes Lethe stores and compares: SHA-256 (checkpoint, manifest, file and
// dataset digests; OpenSSL) and SipHash-2-4 (keyed record assignment, config digests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

struct evp_md_ctx_st;

namespace lethe::storage {

// Incremental SHA-256; StorageError if OpenSSL fails.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(const void* data, std::size_t size);
  void update_u64(std::uint64_t value);       // 8 bytes, little-endian host order
  void update_text(std::string_view text);    // length-prefixed, so concatenations stay unambiguous
  // Lowercase hex of the digest; the object is spent afterwards.
  [[nodiscard]] std::string hex();

 private:
  evp_md_ctx_st* ctx_;
};

// Lowercase hex SHA-256 of `data`.
[[nodiscard]] std::string sha256_hex(std::span<const std::byte> data);
[[nodiscard]] std::string sha256_hex(std::string_view text);
// Lowercase hex SHA-256 of a file's bytes; StorageError naming the file when it cannot be read.
[[nodiscard]] std::string sha256_file(const std::filesystem::path& path);

// SipHash-2-4 (Aumasson & Bernstein, 2012) of `message` under the 128-bit key (k0, k1),
// the keys being the little-endian halves of the 16-byte key of the reference code.
[[nodiscard]] std::uint64_t siphash24(std::uint64_t k0, std::uint64_t k1, std::span<const std::uint8_t> message);

}  // namespace lethe::storage
