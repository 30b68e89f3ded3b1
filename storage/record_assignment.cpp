#include "storage/record_assignment.h"

#include <openssl/evp.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "storage/hashing.h"

namespace lethe::storage {
namespace {

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Maps a uniform 64-bit hash onto [0, n) without the modulo bias of h % n (Lemire 2019).
int reduce(uint64_t h, int n) {
  return static_cast<int>((static_cast<unsigned __int128>(h) * static_cast<uint64_t>(n)) >> 64);
}

void require_positive(int count, const char* what) {
  if (count < 1)
    throw std::invalid_argument(std::string("the number of ") + what + " must be at least 1, got " +
                                std::to_string(count));
}

}  // namespace

RecordAssigner::RecordAssigner(uint64_t seed) : seed_(seed) {
  // Each purpose gets its own 128-bit key: SHA-256("lethe/record-assignment/v1/<purpose>" || seed).
  auto derive = [seed](std::string_view purpose) {
    std::string input = "lethe/record-assignment/v1/" + std::string(purpose);
    input.push_back('\0');
    for (int i = 0; i < 8; ++i) input.push_back(static_cast<char>((seed >> (8 * i)) & 0xff));
    std::array<uint8_t, EVP_MAX_MD_SIZE> digest{};
    unsigned int digest_length = 0;
    if (EVP_Digest(input.data(), input.size(), digest.data(), &digest_length, EVP_sha256(), nullptr) != 1 ||
        digest_length < 16)
      throw std::runtime_error("SHA-256 from OpenSSL failed while deriving the record assignment keys");
    return Key{load_le64(digest.data()), load_le64(digest.data() + 8)};
  };
  shard_key_ = derive("shard");
  slice_key_ = derive("slice");
  public_key_ = derive("public");
}

uint64_t RecordAssigner::hash(const Key& key, std::string_view id) {
  return siphash24(key.k0, key.k1, {reinterpret_cast<const uint8_t*>(id.data()), id.size()});
}

int RecordAssigner::shard_of(std::string_view id, int shards) const {
  require_positive(shards, "shards");
  return reduce(hash(shard_key_, id), shards);
}

int RecordAssigner::slice_of(std::string_view id, int slices) const {
  require_positive(slices, "slices");
  return reduce(hash(slice_key_, id), slices);
}

Assignment RecordAssigner::assign(std::string_view id, int shards, int slices) const {
  return {shard_of(id, shards), slice_of(id, slices)};
}

bool RecordAssigner::is_public(std::string_view id, double fraction) const {
  if (!(fraction >= 0.0 && fraction <= 1.0))
    throw std::invalid_argument("the public fraction must be within [0, 1], got " + std::to_string(fraction));
  if (fraction == 0.0) return false;
  if (fraction == 1.0) return true;
  // Public when the hash, as a number in [0, 1), falls below the fraction.
  const long double unit = std::ldexp(static_cast<long double>(hash(public_key_, id)), -64);
  return unit < static_cast<long double>(fraction);
}

Assignment assign(uint64_t seed, std::string_view id, int shards, int slices) {
  return RecordAssigner(seed).assign(id, shards, slices);
}

bool is_public(uint64_t seed, std::string_view id, double fraction) {
  return RecordAssigner(seed).is_public(id, fraction);
}

}  // namespace lethe::storage
