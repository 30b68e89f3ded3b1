// `lethe serve`: the coordinator service of a trained job (DESIGN.md §7, docs/API.md). Rank 0
// serves HTTP and coordinates; every rank holds the job's models and runs the collective routes.
#include <signal.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "deletion/job_session.h"
#include "deletion/retrain_launcher.h"
#include "deletion/service.h"
#include "http/auth.h"
#include "http/server.h"
#include "launch/command_registry.h"

namespace lethe::launch {
namespace {

struct ServeArgs {
  std::string job;
  std::string listen = "127.0.0.1:8080";
  std::string token_file;
  int batch_window_ms = 5;
  std::size_t max_queue = 10000;
  std::size_t body_limit = http::ServerOptions{}.body_limit;  // 16 MiB: a 1024-row JSON or a 16384-row binary predict fits
  int header_timeout_s = 5;
  int request_timeout_s = 10;
  std::size_t max_connections = http::ServerOptions{}.max_connections;
  int drain_s = 30;
  int http_threads = 2;
  std::string backend = "mpi";
  bool accept_ledger_loss = false;
  // How the service starts a retrain (POST /v1/retrain, or the job's `retrain:` policy): a shell
  // command with {lethe}, {job} and {id} replaced. The default trains on this machine in one
  // process; a cluster puts its own launcher here (mpirun -np N ..., or srun/sbatch).
  std::string retrain_command = "{lethe} retrain --job {job} --id {id} --no-wait";
};

std::pair<std::string, unsigned short> split_listen(const std::string& listen) {
  const auto colon = listen.rfind(':');
  int port = -1;
  if (colon != std::string::npos && colon > 0) {
    try {
      std::size_t used = 0;
      port = std::stoi(listen.substr(colon + 1), &used);
      if (used != listen.size() - colon - 1) port = -1;
    } catch (const std::exception&) {
      port = -1;
    }
  }
  if (port < 0 || port > 65535) {
    throw CLI::ValidationError("--listen", "'" + listen + "' is not ADDRESS:PORT (e.g. 127.0.0.1:8080; port 0 picks a free one)");
  }
  return {listen.substr(0, colon), static_cast<unsigned short>(port)};
}

void run(const ServeArgs& args) {
  // SIGTERM and SIGINT are taken by sigwait on rank 0's main thread; blocked before any thread
  // exists so every thread inherits the mask. Other ranks keep them blocked: they stop when
  // rank 0 tells them, after it has drained.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const auto [address, port] = split_listen(args.listen);
  deletion::CoordinatorOptions options;
  options.batch_window = std::chrono::milliseconds(args.batch_window_ms);
  options.max_queue = args.max_queue;
  auto comm = comm::make_communicator(args.backend);
  std::string token;
  deletion::JobSession session(args.job, *comm, "lethe serve", options,
                               [&] { token = http::load_token_file(args.token_file); },
                               args.accept_ledger_loss ? storage::Ledger::LostLog::kAccept : storage::Ledger::LostLog::kRefuse);
  if (comm->rank() != 0) {
    deletion::follow_coordinator(session.router(), *comm);
    return;
  }
  auto& coordinator = *session.coordinator();
  http::ServerOptions server_options;
  server_options.address = address;
  server_options.port = port;
  server_options.bearer_token = token;
  server_options.body_limit = args.body_limit;
  server_options.header_timeout = std::chrono::seconds(args.header_timeout_s);
  server_options.request_timeout = std::chrono::seconds(args.request_timeout_s);
  server_options.max_connections = args.max_connections;
  server_options.threads = args.http_threads;
  std::unique_ptr<http::Server> server;
  deletion::RetrainLauncher retrains(args.job, args.retrain_command);
  coordinator.set_after_batch([&] {
    try {
      deletion::apply_retrain_policy(session.router(), retrains);
    } catch (const std::exception& e) {
      spdlog::error("the retrain policy could not start a retrain: {}", e.what());
    }
  });
  auto handler = deletion::make_service_handler(coordinator, session.router(), *session.ledger(), retrains,
                                                [&server] { return server ? server->stats() : http::ServerStats{}; });
  server = std::make_unique<http::Server>(server_options, std::move(handler));
  try {
    server->start();
  } catch (...) {
    coordinator.stop();  // releases the other ranks
    throw;
  }
  coordinator.start();
  std::cout << nlohmann::json{{"listening", address + ":" + std::to_string(server->port())},
                              {"port", server->port()},
                              {"job_dir", args.job},
                              {"ranks", comm->size()}}
                   .dump()
            << std::endl;
  spdlog::info("serving {} on http://{}:{} with {} rank(s); SIGTERM drains and stops", args.job, address, server->port(),
               comm->size());
  int received = 0;
  sigwait(&signals, &received);
  // mpirun sends SIGTERM to every rank when one of them dies: say so, or the log reads like a
  // clean operator stop.
  spdlog::info("signal {} ({}): draining (no new connections; requests in flight finish; the batch in progress completes){}",
               received, received == SIGTERM ? "SIGTERM" : "SIGINT",
               comm->size() > 1 && received == SIGTERM
                   ? "; if nobody stopped the service, mpirun may be stopping it because another rank exited: check "
                     "mpirun's output for that rank"
                   : "");
  server->stop(std::chrono::seconds(args.drain_s));
  coordinator.stop();
  const auto metrics = coordinator.metrics();
  spdlog::info("stopped cleanly: {} request(s) completed, {} still queued (kept in the ledger, resumed at the next start)",
               metrics.completed, metrics.queue_depth);
}

void install(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand("serve", "The deletion service of a trained job: HTTP API v1 on rank 0, models on every rank");
  cmd->footer(
      "Example:\n"
      "  umask 077; openssl rand -hex 32 > token\n"
      "  mpirun -np 2 lethe serve --job runs/fashion-s3t --token-file token --listen 127.0.0.1:8080\n"
      "  curl -H \"Authorization: Bearer $(cat token)\" -d '{\"records\": [\"train-00042\"]}' http://127.0.0.1:8080/v1/deletions\n"
      "API: docs/API.md. SIGTERM stops accepting, finishes the batch in progress and exits; queued requests\n"
      "stay in the ledger (<job>/ledger.sqlite) and resume at the next start.");
  cmd->add_option("--job", args->job, "Trained job directory (lethe train)")->required();
  cmd->add_option("--listen", args->listen, "ADDRESS:PORT to bind (loopback by default; port 0 picks a free one)")
      ->capture_default_str();
  cmd->add_option("--token-file", args->token_file, "File whose first line is the bearer token (mode 600)")->required();
  cmd->add_option("--batch-window-ms", args->batch_window_ms, "Requests arriving this close together are planned as one batch")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  cmd->add_option("--max-queue", args->max_queue, "Queued requests beyond which new ones get 429")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--body-limit", args->body_limit, "Largest request body in bytes (413 beyond); the default holds a 1024-row JSON predict")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--header-timeout", args->header_timeout_s,
                  "Seconds a connection has to send a complete request header, from connecting or its previous response "
                  "(also how long an idle keep-alive connection stays open)")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600));
  cmd->add_option("--request-timeout", args->request_timeout_s, "Seconds a client has to send a request (header and body)")->capture_default_str()->check(CLI::Range(1, 3600));
  cmd->add_option("--max-connections", args->max_connections,
                  "Open connections at most; beyond, the one idle longest is closed to admit a new one, "
                  "or with none idle the new one gets 503")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}));
  cmd->add_option("--drain", args->drain_s, "Seconds to let requests in flight finish on SIGTERM")->capture_default_str()->check(CLI::Range(0, 3600));
  cmd->add_option("--http-threads", args->http_threads, "HTTP server threads")->capture_default_str()->check(CLI::Range(1, 64));
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->add_flag("--accept-ledger-loss", args->accept_ledger_loss,
                "Start although the job's ledger (or its -wal file) was lost; the requests it held are gone (docs/OPERATIONS.md)");
  cmd->add_option("--retrain-command", args->retrain_command,
                  "Shell command that runs one retrain ({lethe}, {job}, {id} replaced), e.g. "
                  "\"mpirun -np 4 {lethe} retrain --job {job} --id {id} --no-wait\"")
      ->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{50, install};

}  // namespace
}  // namespace lethe::launch
