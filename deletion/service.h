// deletion/service.h — HTTP API v1 of the coordinator (docs/API.md): maps requests to the
// coordinator, the router and the ledger, and renders Prometheus metrics.
#pragma once

#include <functional>
#include <string>

#include "deletion/coordinator.h"
#include "deletion/job_router.h"
#include "deletion/retrain_launcher.h"
#include "http/server.h"

namespace lethe::deletion {

// The server's own counters, read at /metrics time (the server is built after the handler).
using ServerStatsSource = std::function<http::ServerStats()>;

// The handler for http::Server. Authentication, body limits and timeouts are the server's.
[[nodiscard]] http::Handler make_service_handler(Coordinator& coordinator, JobRouter& router, storage::Ledger& ledger,
                                                 RetrainLauncher& retrains, ServerStatsSource server_stats);

// The retrain policy of the job config (`retrain:`), checked after each batch: starts a retrain
// when the served models fell below it and none runs. Rank 0.
void apply_retrain_policy(const JobRouter& router, RetrainLauncher& retrains);

// Prometheus text exposition (version 0.0.4) of the service's state.
[[nodiscard]] std::string render_metrics(const CoordinatorMetrics& metrics, const JobRouter& router,
                                         const storage::Ledger& ledger, const http::ServerStats& server);

}  // namespace lethe::deletion
