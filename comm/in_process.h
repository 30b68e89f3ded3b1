// comm/in_process.h — ranks as threads of one process sharing memory, so that distributed logic
// is unit-tested without mpirun; each collective is a condition-variable rendezvous of the threads.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "comm/communicator.h"

namespace lethe::comm {

// The communicators of a fresh world of `world_size` thread-ranks: hand element r to the thread
// that plays rank r. Host memory only; split, send/recv and timeouts behave as with MPI.
[[nodiscard]] std::vector<std::unique_ptr<Communicator>> make_in_process_world(int world_size);

// Runs `body` on `world_size` threads, thread r with the communicator of rank r, and waits for
// all of them. When a rank throws, the world is aborted (peers blocked in a collective get a
// CommError instead of waiting for their timeout) and the first exception thrown is rethrown here.
void run_in_process(int world_size, const std::function<void(Communicator&)>& body);

}  // namespace lethe::comm
