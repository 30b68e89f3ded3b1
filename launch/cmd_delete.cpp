// `lethe delete`: deletion requests by record ids or subject — sent to a running `lethe serve`
// (--server), or carried out directly on a job directory (--job, batch mode for scheduled jobs).
#include <signal.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "comm/communicator.h"
#include "deletion/job_session.h"
#include "deletion/request.h"
#include "http/auth.h"
#include "http/client.h"
#include "launch/command_registry.h"

namespace lethe::launch {
namespace {

using nlohmann::json;

struct DeleteArgs {
  std::string server;
  std::string token_file;
  std::string job;
  std::vector<std::string> records;
  std::string records_file;
  std::string subject;
  std::string idempotency_key;
  bool wait = false;
  int timeout_s = 120;
  std::string backend = "mpi";
  bool accept_ledger_loss = false;
};

// The request as the service would parse it, so both modes give the same errors.
deletion::DeletionRequest build_request(const DeleteArgs& args) {
  json body = json::object();
  std::vector<std::string> records = args.records;
  if (!args.records_file.empty()) {
    std::ifstream in(args.records_file);
    if (!in) throw std::runtime_error("--records-file " + args.records_file + " cannot be read");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) records.push_back(line);
    }
    if (records.empty()) throw std::runtime_error("--records-file " + args.records_file + " holds no record id");
  }
  if (!records.empty()) body["records"] = records;
  if (!args.subject.empty()) body["subject"] = args.subject;
  if (!args.idempotency_key.empty()) body["idempotency_key"] = args.idempotency_key;
  try {
    return deletion::parse_deletion_request(body);
  } catch (const deletion::RequestError& e) {
    const auto& field = e.field();
    const std::string option = field.rfind("records", 0) == 0 ? "--record/--records-file" : "--" + field;
    throw std::runtime_error(option + ": " + e.what());
  }
}

// A failed request's receipt is printed like any other; the exit status then says it failed.
int exit_code_of(const json& receipt) { return receipt.value("status", "") == "failed" ? 1 : 0; }

void fail_with_response(const http::Response& response) {
  std::string message = response.body;
  try {
    const auto body = json::parse(response.body);
    if (body.contains("error")) message = body["error"].value("message", response.body);
  } catch (const json::exception&) {
  }
  throw std::runtime_error("the service answered " + std::to_string(response.status) + ": " + message);
}

int via_server(const DeleteArgs& args, const deletion::DeletionRequest& request) {
  if (args.token_file.empty()) throw std::runtime_error("--server needs --token-file (the bearer token the service was started with)");
  http::Client client(http::parse_url(args.server), http::load_token_file(args.token_file), std::chrono::seconds(30));
  const auto response = client.request("POST", "/v1/deletions", deletion::to_json(request).dump());
  if (response.status != 202 && response.status != 200) fail_with_response(response);
  const auto submitted = json::parse(response.body);
  if (!args.wait) {
    std::cout << submitted.dump(2) << std::endl;
    return 0;
  }
  const auto id = submitted.at("id").get<std::string>();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.timeout_s);
  for (;;) {
    const auto polled = client.request("GET", "/v1/deletions/" + id);
    if (polled.status != 200) fail_with_response(polled);
    const auto receipt = json::parse(polled.body);
    const auto status = receipt.value("status", "");
    if (status == "completed" || status == "failed") {
      std::cout << receipt.dump(2) << std::endl;
      return exit_code_of(receipt);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("request " + id + " is still '" + status + "' after " + std::to_string(args.timeout_s) +
                               " s; it is acknowledged and will complete: check it with GET /v1/deletions/" + id);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int via_job(const DeleteArgs& args, const deletion::DeletionRequest& request) {
  auto comm = comm::make_communicator(args.backend);
  deletion::JobSession session(args.job, *comm, "lethe delete --job", deletion::CoordinatorOptions{}, {},
                               args.accept_ledger_loss ? storage::Ledger::LostLog::kAccept : storage::Ledger::LostLog::kRefuse);
  if (comm->rank() != 0) {
    deletion::follow_coordinator(session.router(), *comm);
    return 0;
  }
  auto& coordinator = *session.coordinator();
  deletion::Submission submission;
  try {
    submission = coordinator.submit(request);
  } catch (...) {
    coordinator.stop();  // releases the other ranks
    throw;
  }
  try {
    coordinator.run_until_idle();
  } catch (const deletion::DeletionsPending&) {
    // The request is acknowledged and kept: its receipt says "queued", the error says why and what to do.
    if (const auto receipt = coordinator.receipt(submission.request.id)) std::cout << receipt->dump(2) << std::endl;
    throw;
  }
  const auto receipt = coordinator.receipt(submission.request.id);
  std::cout << receipt->dump(2) << std::endl;
  return exit_code_of(*receipt);
}

void install(CLI::App& app) {
  auto args = std::make_shared<DeleteArgs>();
  CLI::App* cmd = app.add_subcommand("delete", "Delete records (by id or subject) from every model, file and checkpoint of a job");
  cmd->footer(
      "Examples:\n"
      "  lethe delete --server http://127.0.0.1:8080 --token-file token --record train-00042 --wait\n"
      "  lethe delete --job runs/fashion-s3t --subject user-17          # no server: batch mode\n"
      "  mpirun -np 2 lethe delete --job runs/fashion-s3t --records-file nightly-requests.txt\n"
      "Prints the receipt JSON (docs/API.md). Exit status 1 when the request failed.");
  auto* server = cmd->add_option("--server", args->server, "URL of a running `lethe serve` (http://HOST:PORT)");
  auto* job = cmd->add_option("--job", args->job, "Job directory: carry out the deletion here, without a server");
  server->excludes(job);
  cmd->add_option("--token-file", args->token_file, "Bearer token file of the service (with --server)");
  cmd->add_option("--record", args->records, "Record id to delete (repeatable)");
  cmd->add_option("--records-file", args->records_file, "File with one record id per line");
  cmd->add_option("--subject", args->subject, "Delete every record of this subject");
  cmd->add_option("--idempotency-key", args->idempotency_key, "Resending with the same key returns the first request");
  cmd->add_flag("--wait", args->wait, "With --server: wait for the completed receipt");
  cmd->add_option("--timeout", args->timeout_s, "Seconds --wait waits")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--backend", args->backend, "Communicator backend with --job: mpi or nccl")->capture_default_str();
  cmd->add_flag("--accept-ledger-loss", args->accept_ledger_loss,
                "With --job: start although the job's ledger (or its -wal file) was lost (docs/OPERATIONS.md)");
  cmd->callback([args] {
    if (args->server.empty() == args->job.empty()) throw CLI::ValidationError("give exactly one of --server URL or --job DIR");
    const auto request = build_request(*args);
    const int code = args->server.empty() ? via_job(*args, request) : via_server(*args, request);
    if (code != 0) throw std::runtime_error("the deletion request failed; its receipt above gives the reason");
  });
}

const CommandRegistration registration{55, install};

}  // namespace
}  // namespace lethe::launch
