// The `lethe` command line: every subcommand registers itself (launch/command_registry.h).
// Errors go to stderr as "lethe: error: ..." with exit status 1; usage errors exit 2.
#include <spdlog/spdlog.h>

#include <exception>
#include <iostream>

#include "launch/command_registry.h"
#include "launch/logging.h"

int main(int argc, char** argv) {
  CLI::App app{"lethe: distributed training with fast, provable deletion of training records"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lethe 0.1.0");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.parse_complete_callback([&] { lethe::launch::configure_logging(log_level); });
  lethe::launch::install_registered_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::cerr << "lethe: error: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
