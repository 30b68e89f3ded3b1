#include "deletion/retrain_launcher.h"

#include <fcntl.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <vector>

#include "storage/error.h"
#include "storage/job_lock.h"
#include "trainer/job_retrain.h"

extern char** environ;

namespace lethe::deletion {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Single-quoted for /bin/sh.
std::string shell_quoted(const std::string& text) {
  std::string out = "'";
  for (const char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) text.replace(at, from.size(), to);
  return text;
}

// The child must not believe it belongs to the service's MPI job: Open MPI's and PMIx's variables go.
std::vector<std::string> child_environment() {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (entry.starts_with("OMPI_") || entry.starts_with("PMIX_") || entry.starts_with("OPAL_") ||
        entry.starts_with("PRTE_") || entry.starts_with("HYDRA_") || entry.starts_with("PMI_")) {
      continue;
    }
    out.emplace_back(entry);
  }
  return out;
}

std::string tail_of(const fs::path& path, std::size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  const std::string text{std::istreambuf_iterator<char>(in), {}};
  return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

// Whether a `lethe retrain` (ours or started elsewhere) holds the job's retrain lock.
bool retrain_lock_held(const fs::path& job_dir, std::string* holder) {
  const auto who = storage::JobLock::holder(job_dir, storage::JobLock::Kind::kRetrain);
  if (who && holder != nullptr) *holder = "a retrain of " + job_dir.string() + " is already running: " + *who;
  return who.has_value();
}

}  // namespace

RetrainLauncher::RetrainLauncher(fs::path job_dir, std::string command) : job_dir_(std::move(job_dir)), command_(std::move(command)) {}

RetrainLauncher::~RetrainLauncher() {
  std::lock_guard lock(mutex_);
  reap_locked();
  for (const auto& [id, child] : children_) {
    if (!child.exit_status) spdlog::info("retrain {} (pid {}) keeps running; a restarted service adopts it", id, child.pid);
  }
}

void RetrainLauncher::reap_locked() {
  for (auto& [id, child] : children_) {
    if (child.exit_status) continue;
    int status = 0;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
      child.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      spdlog::info("retrain {} (pid {}) exited with status {}", id, child.pid, *child.exit_status);
    }
  }
}

std::optional<std::string> RetrainLauncher::running_locked() {
  reap_locked();
  for (const auto& [id, child] : children_) {
    if (!child.exit_status) return "retrain " + id + " (pid " + std::to_string(child.pid) + ") is running";
  }
  std::string holder;
  if (retrain_lock_held(job_dir_, &holder)) return holder;
  for (const auto& run : trainer::list_retrain_runs(job_dir_)) {
    if (run.status == trainer::RetrainStatus::kTrained) return "retrain " + run.id + " is trained and about to be adopted";
  }
  return std::nullopt;
}

bool RetrainLauncher::busy() {
  std::lock_guard lock(mutex_);
  return running_locked().has_value();
}

std::string RetrainLauncher::start(const std::string& reason) {
  std::lock_guard lock(mutex_);
  if (auto running = running_locked()) throw RetrainRunning(*running);
  const auto id = trainer::new_retrain_id(job_dir_);
  std::error_code ec;
  const auto self = fs::read_symlink("/proc/self/exe", ec);
  std::string command = replace_all(command_, "{lethe}", shell_quoted(ec ? std::string("lethe") : self.string()));
  command = replace_all(command, "{job}", shell_quoted(fs::absolute(job_dir_).string()));
  command = replace_all(command, "{id}", id);
  fs::create_directories(trainer::retrain_dir(job_dir_));
  const auto log = trainer::retrain_dir(job_dir_) / (id + ".log");

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  const auto env = child_environment();
  std::vector<char*> envp;
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  // It outlives a service that dies (the restarted one, or the retrain itself, adopts its result):
  // hangups are ignored, as under nohup, and the disposition passes on to what the command runs.
  const auto line = "trap '' HUP; " + command;
  const char* argv[] = {"/bin/sh", "-c", line.c_str(), nullptr};
  // Its own process group: a signal to the service's group (Ctrl-C, a crash of mpirun) does not take
  // the retrain with it; it finishes, and the service (restarted) adopts its result.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, &attributes, const_cast<char* const*>(argv), envp.data());
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start the retrain `" + command + "`: " + std::strerror(rc));
  children_[id] = Child{pid, reason, std::nullopt};
  spdlog::info("retrain {} started ({}): {} (pid {}, log {})", id, reason, command, pid, log.string());
  return id;
}

std::optional<json> RetrainLauncher::status(const std::string& id) {
  std::lock_guard lock(mutex_);
  reap_locked();
  const auto child = children_.find(id);
  const auto run = trainer::find_retrain_run(job_dir_, id);
  json out = {{"id", id}, {"started_by", child != children_.end() ? "this service (" + child->second.reason + ")" : "elsewhere"}};
  const auto failed = [&](const std::string& error) {
    out["status"] = "failed";
    out["error"] = error;
    return out;
  };
  if (run) {
    out["started_ms"] = run->started_ms;
    switch (run->status) {
      case trainer::RetrainStatus::kAdopted:
        out["status"] = "completed";
        out["model_version"] = run->model_version;
        out["adopted_ms"] = run->adopted_ms;
        return out;
      case trainer::RetrainStatus::kNothingToDo:
        out["status"] = "completed";
        out["note"] = "nothing to retrain: every sequence was at full depth";
        return out;
      case trainer::RetrainStatus::kFailed: return failed(run->error);
      case trainer::RetrainStatus::kTrained: out["status"] = "running"; out["phase"] = "adopting"; return out;
      case trainer::RetrainStatus::kRunning: break;
    }
  }
  if (child == children_.end() && !run) return std::nullopt;
  const bool exited = child != children_.end() && child->second.exit_status.has_value();
  if (exited && *child->second.exit_status != 0) {
    return failed("the retrain process exited with status " + std::to_string(*child->second.exit_status) + ": " +
                  tail_of(trainer::retrain_dir(job_dir_) / (id + ".log"), 1500));
  }
  if (run && child == children_.end() && !retrain_lock_held(job_dir_, nullptr)) {
    return failed("interrupted: its process ended before it finished (the next retrain cleans up after it)");
  }
  out["status"] = "running";
  out["phase"] = "training";
  return out;
}

}  // namespace lethe::deletion
