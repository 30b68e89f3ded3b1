// storage/row_index.h — rows of a dataset by record id in 4 to 8 bytes per row: an open-addressing
// table of row numbers that reads ids from the caller's storage instead of copying them.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

namespace lethe::storage {

class RowIndex {
 public:
  // The most rows one index holds (row numbers are stored in 32 bits; UINT32_MAX marks a free slot).
  static constexpr uint64_t kMaxRows = UINT32_MAX - 1;

  // The row whose id is `id`; `id_of(row)` gives the id of a row already inserted.
  template <typename IdOf>
  [[nodiscard]] std::optional<uint64_t> find(std::string_view id, const IdOf& id_of) const {
    if (slots_.empty()) return std::nullopt;
    for (std::size_t slot = hash(id) & mask(); slots_[slot] != kFree; slot = (slot + 1) & mask())
      if (id_of(slots_[slot]) == id) return slots_[slot];
    return std::nullopt;
  }

  // Adds `row` (whose id is `id`) unless a row with the same id is there: then returns that row and
  // adds nothing. `row` must be at most kMaxRows.
  template <typename IdOf>
  std::optional<uint64_t> insert(std::string_view id, uint64_t row, const IdOf& id_of) {
    if (2 * (size_ + 1) > slots_.size()) grow(id_of);
    std::size_t slot = hash(id) & mask();
    for (; slots_[slot] != kFree; slot = (slot + 1) & mask())
      if (id_of(slots_[slot]) == id) return slots_[slot];
    slots_[slot] = static_cast<uint32_t>(row);
    ++size_;
    return std::nullopt;
  }

  [[nodiscard]] uint64_t size() const { return size_; }

 private:
  static constexpr uint32_t kFree = UINT32_MAX;
  static std::size_t hash(std::string_view id) { return std::hash<std::string_view>{}(id); }
  [[nodiscard]] std::size_t mask() const { return slots_.size() - 1; }

  template <typename IdOf>
  void grow(const IdOf& id_of) {
    std::vector<uint32_t> old(slots_.empty() ? 16 : 2 * slots_.size(), kFree);
    old.swap(slots_);
    for (const uint32_t row : old) {
      if (row == kFree) continue;
      std::size_t slot = hash(id_of(row)) & mask();
      while (slots_[slot] != kFree) slot = (slot + 1) & mask();
      slots_[slot] = row;
    }
  }

  std::vector<uint32_t> slots_;  // a power of two in size, at most half full
  uint64_t size_ = 0;
};

}  // namespace lethe::storage
