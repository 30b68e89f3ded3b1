// trainer/s3t_route.h — S3T slice deactivation (DESIGN.md §3) as a deletion route: deleting a
// record cuts every sequence of its shard before the record's slice and serves each shard's longest
// surviving prefix; exact and instant. Registered in trainer/routes.cpp.
#pragma once

namespace lethe::trainer {

struct RouteKind;  // trainer/routes.h

[[nodiscard]] const RouteKind& s3t_route_kind();

}  // namespace lethe::trainer
