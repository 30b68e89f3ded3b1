// launch/logging.h — one log format for every rank: timestamp, rank, level, message.
#pragma once

#include <string>

namespace lethe::launch {

// This process's rank as the MPI launcher tells it (OMPI_COMM_WORLD_RANK / PMI_RANK), known before
// MPI is initialized; 0 when not started by a launcher.
[[nodiscard]] int launcher_rank();
// True when an MPI launcher started this process (even with one rank).
[[nodiscard]] bool under_mpi_launcher();

// Sets spdlog's level and pattern. `level` applies to every rank when `explicit_level` (the user
// passed --log-level); by default only rank 0 logs info, the other ranks warnings and errors, so
// `mpirun -np N` does not print every line N times.
void configure_logging(const std::string& level, bool explicit_level);

}  // namespace lethe::launch
