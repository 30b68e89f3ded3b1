#include "launch/command_registry.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace lethe::launch {
namespace {

std::vector<std::pair<int, CommandInstaller>>& registry() {
  static std::vector<std::pair<int, CommandInstaller>> installers;
  return installers;
}

}  // namespace

CommandRegistration::CommandRegistration(int order, CommandInstaller install) {
  registry().emplace_back(order, install);
}

void install_registered_commands(CLI::App& app) {
  auto installers = registry();
  std::stable_sort(installers.begin(), installers.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [order, install] : installers) install(app);
}

CLI::App& subcommand_group(CLI::App& parent, const std::string& name, const std::string& description) {
  for (CLI::App* existing : parent.get_subcommands([](CLI::App*) { return true; }))
    if (existing->get_name() == name) return *existing;
  CLI::App* group = parent.add_subcommand(name, description);
  group->require_subcommand(1);
  group->footer("Each subcommand has its own --help with examples, e.g. `lethe " + name + " " +
                "<subcommand> --help`.");
  return *group;
}

}  // namespace lethe::launch
