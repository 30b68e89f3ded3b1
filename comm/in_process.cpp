#include "comm/in_process.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>

#include "comm/collective_call.h"
#include "comm/reduce.h"

namespace lethe::comm {
namespace {

constexpr std::string_view kBackend = "in-process";

// One lock and one condition variable for every group of a world: tests are small, and a
// world-wide abort must wake every waiter whatever group it waits in.
struct World {
  std::mutex mutex;
  std::condition_variable changed;
  std::string abort_reason;  // set when a rank's thread failed; every wait then gives up
};

struct Group;

// The meeting of all ranks of a group at one collective (by sequence number).
struct Round {
  explicit Round(int size) : calls(size), inputs(size, nullptr), arrived(size, false), split_args(size) {}
  std::vector<CollectiveCall> calls;
  std::vector<const void*> inputs;
  std::vector<bool> arrived;
  std::vector<std::pair<int, int>> split_args;  // (color, key) per rank
  std::map<int, std::shared_ptr<Group>> split_groups;
  int arrived_count = 0;
  int done_count = 0;
  int left_count = 0;
};

struct Message {
  std::vector<std::byte> bytes;
  std::size_t count = 0;
  DataType type = DataType::kUInt8;
};

struct Group {
  Group(std::shared_ptr<World> world_in, int size_in) : world(std::move(world_in)), size(size_in) {}
  std::shared_ptr<World> world;
  int size;
  std::map<std::uint64_t, Round> rounds;
  std::map<std::tuple<int, int, int>, std::deque<Message>> mailboxes;  // (source, destination, tag)
  std::string broken_reason;  // set when a rank timed out: the group's collectives no longer line up
};

std::string timeout_text(std::chrono::milliseconds timeout) { return std::to_string(timeout.count()) + " ms"; }

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> group, int rank, std::chrono::milliseconds timeout)
      : group_(std::move(group)), rank_(rank), timeout_(timeout) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size; }
  // All thread-ranks share one node.
  int local_rank() const override { return rank_; }
  int local_size() const override { return group_->size; }
  std::string_view backend() const override { return kBackend; }

  void allreduce(BufferView buffer, ReduceOp op) override {
    check_host(buffer, "allreduce");
    CollectiveCall call{0, CollectiveKind::kAllreduce, buffer.type, buffer.count, static_cast<std::int64_t>(op)};
    std::vector<std::byte> result(buffer.bytes());
    collective(
        call, buffer.data,
        [&](Round& round) {
          if (buffer.count == 0) return;
          std::memcpy(result.data(), round.inputs[0], result.size());
          for (int r = 1; r < size(); ++r) reduce_into(result.data(), round.inputs[r], buffer.count, buffer.type, op);
          if (op == ReduceOp::kAverage) divide_in_place(result.data(), buffer.count, buffer.type, size());
        },
        [&] {
          if (!result.empty()) std::memcpy(buffer.data, result.data(), result.size());
        });
  }

  void broadcast(BufferView buffer, int root) override {
    check_host(buffer, "broadcast");
    check_rank(root, "broadcast root");
    CollectiveCall call{0, CollectiveKind::kBroadcast, buffer.type, buffer.count, root};
    // Only the root's buffer is read by others, so non-roots may write theirs before the second meeting.
    collective(
        call, buffer.data,
        [&](Round& round) {
          if (rank_ != root && buffer.count > 0) std::memcpy(buffer.data, round.inputs[root], buffer.bytes());
        },
        [] {});
  }

  void allgather(BufferView send, BufferView recv) override {
    check_host(send, "allgather");
    check_host(recv, "allgather");
    if (recv.type != send.type || recv.count != send.count * static_cast<std::size_t>(size())) {
      throw CommError(rank_label(kBackend, rank_) + ": allgather needs a receive buffer of " +
                      std::to_string(send.count * size()) + " " + std::string(to_string(send.type)) + " (size() * " +
                      std::to_string(send.count) + "), got " + std::to_string(recv.count) + " " +
                      std::string(to_string(recv.type)));
    }
    CollectiveCall call{0, CollectiveKind::kAllgather, send.type, send.count, 0};
    const std::size_t bytes = send.bytes();
    collective(
        call, send.data,
        [&](Round& round) {
          auto* out = static_cast<std::byte*>(recv.data);
          for (int r = 0; r < size(); ++r) {
            std::byte* slot = out + r * bytes;
            // An in-place allgather sends from its own slot: others read it, so leave it untouched.
            if (bytes > 0 && slot != round.inputs[r]) std::memcpy(slot, round.inputs[r], bytes);
          }
        },
        [] {});
  }

  void barrier() override {
    collective(CollectiveCall{0, CollectiveKind::kBarrier, DataType::kUInt8, 0, 0}, nullptr, [](Round&) {}, [] {});
  }

  void send(BufferView buffer, int peer, int tag) override {
    check_host(buffer, "send");
    check_rank(peer, "send peer");
    World& world = *group_->world;
    std::lock_guard lock(world.mutex);
    check_usable("send to rank " + std::to_string(peer));
    Message message;
    message.bytes.resize(buffer.bytes());
    if (buffer.count > 0) std::memcpy(message.bytes.data(), buffer.data, buffer.bytes());
    message.count = buffer.count;
    message.type = buffer.type;
    group_->mailboxes[{rank_, peer, tag}].push_back(std::move(message));
    world.changed.notify_all();
  }

  void recv(BufferView buffer, int peer, int tag) override {
    check_host(buffer, "recv");
    check_rank(peer, "recv peer");
    World& world = *group_->world;
    std::unique_lock lock(world.mutex);
    const std::string what = "recv from rank " + std::to_string(peer) + " (tag " + std::to_string(tag) + ")";
    auto& mailbox = group_->mailboxes[{peer, rank_, tag}];
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (mailbox.empty()) {
      check_usable(what);
      if (world.changed.wait_until(lock, deadline) == std::cv_status::timeout && mailbox.empty()) {
        throw CommTimeout(rank_label(kBackend, rank_) + ": " + what + " timed out after " + timeout_text(timeout_) +
                          "; not heard from rank " + std::to_string(peer) +
                          ". Check that it sends with the same tag, or raise the timeout (set_timeout, "
                          "LETHE_COMM_TIMEOUT_S)");
      }
    }
    Message message = std::move(mailbox.front());
    mailbox.pop_front();
    if (message.type != buffer.type || message.count != buffer.count) {
      throw CommError(rank_label(kBackend, rank_) + ": " + what + " expected " + std::to_string(buffer.count) + " " +
                      std::string(to_string(buffer.type)) + " but rank " + std::to_string(peer) + " sent " +
                      std::to_string(message.count) + " " + std::string(to_string(message.type)));
    }
    if (buffer.count > 0) std::memcpy(buffer.data, message.bytes.data(), message.bytes.size());
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    std::pair<int, int> args{color, key};
    std::shared_ptr<Group> new_group;
    int new_rank = -1;
    collective(
        CollectiveCall{0, CollectiveKind::kSplit, DataType::kUInt8, 0, 0}, &args,
        [&](Round& round) {
          // Runs under the world lock (see collective): the first member of a color creates its group.
          if (color < 0) return;
          std::vector<std::pair<int, int>> members;  // (key, rank)
          for (int r = 0; r < size(); ++r) {
            if (round.split_args[r].first == color) members.emplace_back(round.split_args[r].second, r);
          }
          std::sort(members.begin(), members.end());
          auto& slot = round.split_groups[color];
          if (!slot) slot = std::make_shared<Group>(group_->world, static_cast<int>(members.size()));
          new_group = slot;
          new_rank = static_cast<int>(std::find(members.begin(), members.end(), std::pair{key, rank_}) - members.begin());
        },
        [] {}, /*compute_under_lock=*/true);
    if (!new_group) return nullptr;
    return std::make_unique<InProcessCommunicator>(std::move(new_group), new_rank, timeout_);
  }

  void set_timeout(std::chrono::milliseconds timeout) override {
    if (timeout.count() <= 0) {
      throw CommError(rank_label(kBackend, rank_) + ": timeout must be positive, got " + timeout_text(timeout));
    }
    timeout_ = timeout;
  }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  // Wakes every rank of the world, in every group, and makes their communication throw.
  void abort_world(const std::string& reason) {
    World& world = *group_->world;
    std::lock_guard lock(world.mutex);
    if (world.abort_reason.empty()) world.abort_reason = reason;
    world.changed.notify_all();
  }

 private:
  void check_host(const BufferView& buffer, std::string_view what) const {
    if (buffer.memory != MemoryKind::kHost) {
      throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) +
                      " got a CUDA buffer; the in-process backend works on host memory only (use mpi or nccl)");
    }
    if (buffer.data == nullptr && buffer.count > 0) {
      throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " got a null buffer of " +
                      std::to_string(buffer.count) + " elements");
    }
  }

  void check_rank(int peer, std::string_view what) const {
    if (peer < 0 || peer >= size()) {
      throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " " + std::to_string(peer) +
                      " is not a rank of this communicator of size " + std::to_string(size()));
    }
  }

  // Caller holds the world lock.
  void check_usable(std::string_view what) const {
    if (!group_->world->abort_reason.empty()) {
      throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) + " abandoned: " +
                      group_->world->abort_reason);
    }
    if (!group_->broken_reason.empty()) {
      throw CommError(rank_label(kBackend, rank_) + ": " + std::string(what) +
                      " on a communicator that is unusable because " + group_->broken_reason +
                      "; create a new communicator");
    }
  }

  // The two meetings of a collective: all ranks post their call and input, then each computes
  // its result from the others' inputs; nobody returns (and frees or rewrites its input) until
  // every rank has finished reading, which is the second meeting; then `finish` writes outputs.
  template <typename Compute, typename Finish>
  void collective(CollectiveCall call, const void* input, Compute&& compute, Finish&& finish,
                  bool compute_under_lock = false) {
    call.sequence = next_sequence_++;
    World& world = *group_->world;
    std::unique_lock lock(world.mutex);
    check_usable(call.describe());
    Round& round = group_->rounds.try_emplace(call.sequence, size()).first->second;
    round.calls[rank_] = call;
    round.inputs[rank_] = input;
    if (call.kind == CollectiveKind::kSplit) round.split_args[rank_] = *static_cast<const std::pair<int, int>*>(input);
    round.arrived[rank_] = true;
    ++round.arrived_count;
    world.changed.notify_all();

    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (round.arrived_count < size()) {
      // Not check_usable: a peer that timed out in this round broke the group, but the ranks
      // still waiting here time out themselves and name the ranks they did not hear from.
      if (!world.abort_reason.empty()) {
        throw CommError(rank_label(kBackend, rank_) + ": " + call.describe() + " abandoned: " + world.abort_reason);
      }
      if (world.changed.wait_until(lock, deadline) == std::cv_status::timeout && round.arrived_count < size()) {
        std::vector<int> missing;
        for (int r = 0; r < size(); ++r) {
          if (!round.arrived[r]) missing.push_back(r);
        }
        const std::string message = rank_label(kBackend, rank_) + ": " + call.describe() + " timed out after " +
                                    timeout_text(timeout_) + "; not heard from rank" +
                                    (missing.size() > 1 ? "s " : " ") + join_ranks(missing);
        group_->broken_reason = message;
        world.changed.notify_all();
        throw CommTimeout(message +
                          ". Check that every rank calls the same collectives, or raise the timeout (set_timeout, "
                          "LETHE_COMM_TIMEOUT_S)");
      }
    }

    // Every rank sees the same calls, so every rank throws the same mismatch, after the second meeting.
    std::exception_ptr error;
    try {
      for (int r = 0; r < size(); ++r) check_same_collective(call, round.calls[r], kBackend, rank_, r);
    } catch (...) {
      error = std::current_exception();
    }
    if (!error) {
      try {
        if (compute_under_lock) {
          compute(round);
        } else {
          lock.unlock();
          compute(round);
          lock.lock();
        }
      } catch (...) {
        if (!lock.owns_lock()) lock.lock();
        error = std::current_exception();
      }
    }
    ++round.done_count;
    world.changed.notify_all();
    // Peers that arrived only compute from memory, so this wait ends without a timeout.
    world.changed.wait(lock, [&] { return round.done_count == size(); });
    if (++round.left_count == size()) group_->rounds.erase(call.sequence);
    lock.unlock();
    if (error) std::rethrow_exception(error);
    finish();
  }

  std::shared_ptr<Group> group_;
  int rank_;
  std::chrono::milliseconds timeout_;
  std::uint64_t next_sequence_ = 0;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_in_process_world(int world_size) {
  if (world_size < 1) {
    throw CommError("in-process world size must be at least 1, got " + std::to_string(world_size));
  }
  auto group = std::make_shared<Group>(std::make_shared<World>(), world_size);
  const auto timeout = default_timeout();
  std::vector<std::unique_ptr<Communicator>> ranks;
  ranks.reserve(world_size);
  for (int r = 0; r < world_size; ++r) ranks.push_back(std::make_unique<InProcessCommunicator>(group, r, timeout));
  return ranks;
}

void run_in_process(int world_size, const std::function<void(Communicator&)>& body) {
  auto ranks = make_in_process_world(world_size);
  std::mutex errors_mutex;
  std::exception_ptr first_error;
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        body(*ranks[r]);
      } catch (const std::exception& e) {
        std::lock_guard lock(errors_mutex);
        if (!first_error) first_error = std::current_exception();
        static_cast<InProcessCommunicator&>(*ranks[r]).abort_world("rank " + std::to_string(r) + " failed: " + e.what());
      } catch (...) {
        std::lock_guard lock(errors_mutex);
        if (!first_error) first_error = std::current_exception();
        static_cast<InProcessCommunicator&>(*ranks[r]).abort_world("rank " + std::to_string(r) + " failed with a non-standard exception");
      }
    });
  }
  for (auto& thread : threads) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace lethe::comm
