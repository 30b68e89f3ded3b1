#include "launch/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace lethe::launch {

namespace {

const char* launcher_rank_text() {
  // mpirun (Open MPI), PMI-2 launchers (MPICH's, srun --mpi=pmi2), PMIx ones (srun --mpi=pmix).
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"}) {
    if (const char* rank = std::getenv(name)) return rank;
  }
  return nullptr;
}

}  // namespace

bool under_mpi_launcher() { return launcher_rank_text() != nullptr; }

int launcher_rank() {
  const char* rank = launcher_rank_text();
  return rank ? std::atoi(rank) : 0;
}

void configure_logging(const std::string& level, bool explicit_level) {
  const int rank = launcher_rank();
  // Logs go to stderr: stdout is reserved for machine-readable output (JSON).
  auto logger = spdlog::stderr_color_mt("lethe");
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [rank " + std::to_string(rank) + "] [%l] %v");
  auto threshold = spdlog::level::from_str(level);
  if (!explicit_level && rank != 0 && threshold < spdlog::level::warn) threshold = spdlog::level::warn;
  logger->set_level(threshold);
  spdlog::set_default_logger(logger);
}

}  // namespace lethe::launch
