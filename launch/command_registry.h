// launch/command_registry.h — how each subcommand file adds itself to the `lethe` CLI:
// a file defines an installer and a static CommandRegistration; main() installs them all.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace lethe::launch {

using CommandInstaller = void (*)(CLI::App& app);

// Registers `install` to run when main() builds the CLI; `order` sorts the help listing.
struct CommandRegistration {
  CommandRegistration(int order, CommandInstaller install);
};

// Installs every registered command into `app`, in order.
void install_registered_commands(CLI::App& app);

// The subcommand `name` of `parent`, created with `description` if it does not exist yet
// (for groups such as `bench` that several files extend).
CLI::App& subcommand_group(CLI::App& parent, const std::string& name, const std::string& description);

}  // namespace lethe::launch
