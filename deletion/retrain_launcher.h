// deletion/retrain_launcher.h — retrains started by the service (POST /v1/retrain, or its retrain
// policy): a separate `lethe retrain` process per retrain, never in the service's own ranks, so that
// deletions and predictions go on while it trains; its result is adopted by the coordinator.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace lethe::deletion {

// A retrain of the job is running already (HTTP 409).
class RetrainRunning : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class RetrainLauncher {
 public:
  // `command`: the shell command that runs one retrain, with {lethe}, {job} and {id} replaced
  // (the lethe binary, the job directory and the retrain id), e.g. the default
  // "{lethe} retrain --job {job} --id {id}", or "mpirun -np 4 {lethe} retrain ..." or an sbatch.
  RetrainLauncher(std::filesystem::path job_dir, std::string command);
  ~RetrainLauncher();
  RetrainLauncher(const RetrainLauncher&) = delete;
  RetrainLauncher& operator=(const RetrainLauncher&) = delete;

  // Any thread. Starts a retrain and returns its id; RetrainRunning naming the one that runs (a
  // child of this service, or a `lethe retrain` started elsewhere: its lock is held).
  std::string start(const std::string& reason);
  // Any thread. {"id", "status": "running" | "completed" | "failed", "model_version" (completed),
  // "error" (failed), "started_by"}; nullopt for an id the job has never seen.
  [[nodiscard]] std::optional<nlohmann::json> status(const std::string& id);
  // Any thread. Whether a retrain of the job runs or waits for adoption now.
  [[nodiscard]] bool busy();

 private:
  void reap_locked();
  // Why a retrain of the job runs or waits for adoption now (a child of ours, a `lethe retrain`
  // started elsewhere holding its lock, or a trained one), or nullopt. Under mutex_.
  [[nodiscard]] std::optional<std::string> running_locked();

  std::filesystem::path job_dir_;
  std::string command_;
  std::mutex mutex_;
  struct Child {
    pid_t pid = -1;
    std::string reason;
    std::optional<int> exit_status;  // once reaped
  };
  std::map<std::string, Child> children_;
};

}  // namespace lethe::deletion
