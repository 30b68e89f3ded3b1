// comm/nccl_communicator.h — the GPU backend: CUDA buffers through NCCL, one rank per GPU,
// bootstrapped by MPI (rank 0 creates the NCCL id, MPI broadcasts it); host buffers go over MPI.
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "comm/mpi_communicator.h"

namespace lethe::comm {

// Whether this build has the NCCL backend (CMake found CUDA and NCCL).
[[nodiscard]] bool nccl_built();

// Turns `bootstrap` into an NCCL communicator over the same ranks. Collective over `bootstrap`.
// Picks this rank's GPU from its local rank and fails on every rank, naming them, if two ranks
// of a node would share a GPU. Each collective first checks every rank's arrival over MPI (so a
// CommTimeout names the ranks not heard from), then waits for NCCL while watching its
// asynchronous errors; a timeout or an error aborts the NCCL communicator (ncclCommAbort).
// Point-to-point messages between two ranks must be received in the order they were sent.
[[nodiscard]] std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<MpiCommunicator> bootstrap);

}  // namespace lethe::comm
