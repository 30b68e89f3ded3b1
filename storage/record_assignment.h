// storage/record_assignment.h — where a record goes: its shard, its slice within the shard and
// whether it is public, all from a keyed hash of (dataset seed, record id), never from position.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>

#include "storage/hashing.h"  // siphash24

namespace lethe::storage {

struct Assignment {
  int shard = 0;  // in [0, shards)
  int slice = 0;  // in [0, slices), within its shard
  bool operator==(const Assignment&) const = default;
};

// Assigns records of one dataset. The three decisions use independent keys derived from the
// seed by SHA-256, so a record's shard says nothing about its slice or its public flag.
// A record's assignment depends only on (seed, id, counts): erasing or adding other
// records never moves it.
class RecordAssigner {
 public:
  explicit RecordAssigner(uint64_t seed);

  [[nodiscard]] uint64_t seed() const { return seed_; }
  // Throws std::invalid_argument when shards or slices is below 1.
  [[nodiscard]] Assignment assign(std::string_view id, int shards, int slices) const;
  [[nodiscard]] int shard_of(std::string_view id, int shards) const;
  [[nodiscard]] int slice_of(std::string_view id, int slices) const;
  // True for a deterministic `fraction` of ids (0 = none, 1 = all).
  [[nodiscard]] bool is_public(std::string_view id, double fraction) const;

 private:
  struct Key {
    uint64_t k0 = 0;
    uint64_t k1 = 0;
  };
  [[nodiscard]] static uint64_t hash(const Key& key, std::string_view id);

  uint64_t seed_;
  Key shard_key_;
  Key slice_key_;
  Key public_key_;
};

// Convenience for one record; prefer a RecordAssigner for many (it derives its keys once).
[[nodiscard]] Assignment assign(uint64_t seed, std::string_view id, int shards, int slices);
[[nodiscard]] bool is_public(uint64_t seed, std::string_view id, double fraction);

}  // namespace lethe::storage
