#include "comm/agree.h"

#include <atomic>
#include <cstring>

namespace lethe::comm {

namespace fault_injection {
namespace {
std::atomic<int> faulty_rank{-1};
std::atomic<int> agreements_until_failure{0};
}  // namespace

void fail_nth_agreement(int rank, int nth) {
  agreements_until_failure.store(nth);
  faulty_rank.store(nth > 0 ? rank : -1);
}

// Whether this agreement on `rank` is the injected failure.
bool inject(int rank) {
  if (faulty_rank.load(std::memory_order_relaxed) != rank) return false;
  return agreements_until_failure.fetch_sub(1) == 1;
}
}  // namespace fault_injection

void agree_on_failure(Communicator& comm, const std::exception_ptr& given, std::string_view what) {
  std::exception_ptr local = given;
  if (!local && fault_injection::inject(comm.rank())) {
    local = std::make_exception_ptr(std::runtime_error("rank " + std::to_string(comm.rank()) + " failed while " +
                                                       std::string(what) + " (injected by a test: comm/agree.h)"));
  }
  std::int32_t failed = local ? 1 : 0;
  comm.allreduce({&failed, 1, DataType::kInt32}, ReduceOp::kMax);
  if (local) std::rethrow_exception(local);
  if (failed != 0) {
    throw PeerFailure("rank " + std::to_string(comm.rank()) + ": another rank failed while " + std::string(what) +
                      "; its error is reported there");
  }
}

void on_root(Communicator& comm, std::string_view what, const std::function<void()>& work) {
  std::exception_ptr error;
  if (comm.rank() == 0) {
    try {
      work();
    } catch (...) {
      error = std::current_exception();
    }
  }
  // Only rank 0 worked, so only it can fail: a broadcast of its outcome, which no other rank can
  // veto (a commit rank 0 made stays made on every rank).
  std::int32_t failed = error ? 1 : 0;
  comm.broadcast({&failed, 1, DataType::kInt32}, 0);
  if (error) std::rethrow_exception(error);
  if (failed != 0) {
    throw PeerFailure("rank " + std::to_string(comm.rank()) + ": rank 0 failed while " + std::string(what) +
                      "; its error is reported there");
  }
}

void on_every_rank(Communicator& comm, std::string_view what, const std::function<void()>& work) {
  std::exception_ptr error;
  try {
    work();
  } catch (...) {
    error = std::current_exception();
  }
  agree_on_failure(comm, error, what);
}

std::string broadcast_string(Communicator& comm, const std::string& text) {
  std::int64_t size = comm.rank() == 0 ? static_cast<std::int64_t>(text.size()) : 0;
  comm.broadcast({&size, 1, DataType::kInt64}, 0);
  std::string out = comm.rank() == 0 ? text : std::string(static_cast<std::size_t>(size), '\0');
  if (size > 0) comm.broadcast({out.data(), out.size(), DataType::kUInt8}, 0);
  return out;
}

std::vector<std::string> broadcast_strings(Communicator& comm, const std::vector<std::string>& values) {
  // Length-prefixed, so that a value may hold any byte.
  std::string packed;
  if (comm.rank() == 0) {
    for (const auto& value : values) {
      const auto length = static_cast<std::uint64_t>(value.size());
      packed.append(reinterpret_cast<const char*>(&length), sizeof length);
      packed += value;
    }
  }
  packed = broadcast_string(comm, packed);
  std::vector<std::string> out;
  for (std::size_t at = 0; at + sizeof(std::uint64_t) <= packed.size();) {
    std::uint64_t length = 0;
    std::memcpy(&length, packed.data() + at, sizeof length);
    at += sizeof length;
    out.push_back(packed.substr(at, static_cast<std::size_t>(length)));
    at += static_cast<std::size_t>(length);
  }
  return out;
}

std::vector<std::uint64_t> broadcast_u64s(Communicator& comm, const std::vector<std::uint64_t>& values) {
  std::int64_t size = comm.rank() == 0 ? static_cast<std::int64_t>(values.size()) : 0;
  comm.broadcast({&size, 1, DataType::kInt64}, 0);
  std::vector<std::uint64_t> out = comm.rank() == 0 ? values : std::vector<std::uint64_t>(static_cast<std::size_t>(size));
  // DataType has no unsigned 64-bit type; a broadcast copies bytes, so int64 carries them unchanged.
  if (size > 0) comm.broadcast({out.data(), out.size(), DataType::kInt64}, 0);
  return out;
}

}  // namespace lethe::comm
