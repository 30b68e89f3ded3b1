#include "launch/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace lethe::launch {

void configure_logging(const std::string& level) {
  const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
  if (!rank) rank = std::getenv("PMI_RANK");
  // Logs go to stderr: stdout is reserved for machine-readable output (JSON).
  auto logger = spdlog::stderr_color_mt("lethe");
  logger->set_pattern(std::string("[%Y-%m-%d %H:%M:%S.%e] [rank ") + (rank ? rank : "0") + "] [%l] %v");
  logger->set_level(spdlog::level::from_str(level));
  spdlog::set_default_logger(logger);
}

}  // namespace lethe::launch
