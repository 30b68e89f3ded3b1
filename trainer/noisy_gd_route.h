// trainer/noisy_gd_route.h — noisy-GD retraining with certified deletion (DESIGN.md §4) as a
// deletion route: deleting records runs the K_U noisy steps the accountant asks for on the remaining
// data (or retrains when that is cheaper). Registered in trainer/routes.cpp.
#pragma once

namespace lethe::trainer {

struct RouteKind;  // trainer/routes.h

[[nodiscard]] const RouteKind& noisy_gd_route_kind();

}  // namespace lethe::trainer
