// The `lethe` command line: every subcommand registers itself (launch/command_registry.h).
// Errors go to stderr as "lethe: error: ..." with exit status 1; usage errors exit 2.
#include <spdlog/spdlog.h>

#include <exception>
#include <iostream>

#include "launch/command_registry.h"
#include "launch/logging.h"
#include "launch/progress.h"

int main(int argc, char** argv) {
  CLI::App app{"lethe: distributed training with fast, provable deletion of training records"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "lethe 0.1.0");
  std::string log_level = "info";
  auto* level = app.add_option("--log-level", log_level,
                                "trace, debug, info, warn, error or off (default: info on rank 0, warn on other ranks)")
                    ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  app.footer(
      "Examples:\n  lethe validate --config launch/examples/fashion_s3t.yaml\n"
      "  mpirun -np 2 lethe train --config launch/examples/fashion_s3t.yaml --job runs/fashion\n"
      "  lethe status --job runs/fashion\n"
      "  lethe --log-level debug eval --job runs/fashion\n"
      "Every command has --help with examples. Output for machines is JSON on stdout; logs and errors\n"
      "(\"lethe: error: ...\", exit status 1; usage errors exit 2) go to stderr.");
  app.parse_complete_callback([&] {
    lethe::launch::configure_logging(log_level, level->count() > 0);
    lethe::launch::install_progress_reporter();
  });
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
