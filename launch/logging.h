// launch/logging.h — one log format for every rank: timestamp, rank, level, message.
#pragma once

#include <string>

namespace lethe::launch {

// Sets spdlog's level and pattern; the rank comes from the MPI launcher's environment
// (OMPI_COMM_WORLD_RANK / PMI_RANK), so it is known before MPI is initialized.
void configure_logging(const std::string& level);

}  // namespace lethe::launch
