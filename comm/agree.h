// comm/agree.h — "one rank (or every rank) does it, all ranks agree on failure": the step every
// multi-rank command takes around work that can fail, so that no rank waits in a collective for a
// peer that has already given up.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"

namespace lethe::comm {

// Thrown on the ranks that did not fail when another rank's step failed; that rank threw its own
// error (and logged or reported it). Not a CommError: the ranks are still in step and may retry.
class PeerFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Collective. `local` is this rank's failure (null: none). If any rank failed, every rank throws:
// a failed rank rethrows its own exception (its type is kept), the others PeerFailure naming
// `what`. One allreduce of one int.
void agree_on_failure(Communicator& comm, const std::exception_ptr& local, std::string_view what);

// Tests only: the `nth` agreement (agree_on_failure, on_every_rank) from now on rank `rank` (1: the
// next) reports a local failure as if that rank's work had thrown; 0 disarms. Process-wide (in-process worlds: the thread of that rank).
namespace fault_injection {
void fail_nth_agreement(int rank, int nth);
}  // namespace fault_injection

// Collective. Rank 0 runs `work`; every rank returns normally only if it succeeded (one broadcast:
// the other ranks only learn rank 0's outcome, they cannot veto it).
void on_root(Communicator& comm, std::string_view what, const std::function<void()>& work);
// Collective. Every rank runs `work`; every rank returns normally only if all succeeded.
void on_every_rank(Communicator& comm, std::string_view what, const std::function<void()>& work);

// Collective. Rank 0's `text` on every rank (other ranks' argument is ignored).
[[nodiscard]] std::string broadcast_string(Communicator& comm, const std::string& text);
// Collective. Rank 0's `values` on every rank. Strings may hold any bytes.
[[nodiscard]] std::vector<std::string> broadcast_strings(Communicator& comm, const std::vector<std::string>& values);
[[nodiscard]] std::vector<std::uint64_t> broadcast_u64s(Communicator& comm, const std::vector<std::uint64_t>& values);

}  // namespace lethe::comm
