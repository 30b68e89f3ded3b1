#include "trainer/routes.h"

#include <array>
#include <functional>

#include "trainer/error.h"
#include "trainer/noisy_gd_route.h"
#include "trainer/s3t_route.h"

namespace lethe::trainer {

std::span<const RouteKind> route_kinds() {
  // The registry: one line per route.
  static const std::array<RouteKind, 2> kinds{s3t_route_kind(), noisy_gd_route_kind()};
  return kinds;
}

const RouteKind* find_route_kind(std::string_view name) {
  for (const auto& kind : route_kinds()) {
    if (kind.name == name) return &kind;
  }
  return nullptr;
}

namespace {

void check_sections_known(const JobManifest& manifest) {
  for (const auto& [name, section] : manifest.routes) {
    if (find_route_kind(name) == nullptr) {
      throw TrainerError(ErrorKind::kDamaged, manifest.path().string() + ": routes." + name +
                                                  ": no route of this Lethe reads it (written by a newer Lethe?)");
    }
  }
}

}  // namespace

std::vector<std::shared_ptr<const ModelRoute>> load_routes(const RouteContext& context) {
  check_sections_known(context.manifest);
  std::vector<std::shared_ptr<const ModelRoute>> routes;
  for (const auto& kind : route_kinds()) {
    if (context.manifest.section(kind.name) != nullptr) routes.push_back(kind.load(context));
  }
  if (routes.empty()) {
    throw TrainerError(ErrorKind::kNotFound,
                       context.manifest.path().string() + " names no trained model; run `lethe train` on the job first");
  }
  return routes;
}

nlohmann::json describe_routes(const JobManifest& manifest) {
  check_sections_known(manifest);
  auto models = nlohmann::json::array();
  for (const auto& kind : route_kinds()) {
    if (const auto* section = manifest.section(kind.name)) models.push_back(kind.describe(manifest, *section));
  }
  return models;
}

}  // namespace lethe::trainer
