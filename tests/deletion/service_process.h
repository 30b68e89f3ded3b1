// tests/deletion/service_process.h — runs the real `lethe serve` (optionally under mpiexec) as a
// child process for end-to-end tests: start, read the port it printed, SIGTERM or SIGKILL it.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "http/client.h"
#include "storage/dataset.h"

namespace lethe::test {

// A token file the service accepts (mode 600).
inline std::filesystem::path write_token_file(const std::filesystem::path& path, const std::string& token) {
  std::ofstream(path, std::ios::trunc) << token << "\n";
  ::chmod(path.c_str(), 0600);
  return path;
}

class ServiceProcess {
 public:
  // `command` is a shell command line; its stdout's first JSON line gives the port. Stderr goes
  // to `log` so that a failing test can show it.
  ServiceProcess(const std::string& command, std::filesystem::path log) : log_(std::move(log)) {
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe failed");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::setpgid(0, 0);  // its own process group: SIGKILL reaches mpiexec and every rank
      ::dup2(out[1], 1);
      ::close(out[0]);
      ::close(out[1]);
      // exec env: the child becomes the command itself (env accepts the VAR=value prefixes of mpiexec()),
      // so SIGTERM reaches lethe or mpiexec rather than the shell.
      const std::string line = "exec env " + command + " 2>>" + log_.string();
      ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    ::close(out[1]);
    stdout_ = ::fdopen(out[0], "r");
    char buffer[4096];
    while (std::fgets(buffer, sizeof buffer, stdout_) != nullptr) {
      const std::string text(buffer);
      if (text.rfind("{", 0) == 0) {
        port_ = nlohmann::json::parse(text).at("port").get<unsigned short>();
        return;
      }
    }
    const int status = wait();
    throw std::runtime_error("the service exited (status " + std::to_string(status) + ") before listening:\n" + log_text());
  }
  ~ServiceProcess() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      (void)wait();
    }
    if (stdout_ != nullptr) std::fclose(stdout_);
  }

  [[nodiscard]] unsigned short port() const { return port_; }
  [[nodiscard]] std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] http::Client client(const std::string& token) const {
    return http::Client(http::parse_url(url()), token, std::chrono::seconds(30));
  }

  // SIGTERM to the service (mpiexec forwards it to the ranks); its exit status.
  int terminate() {
    ::kill(pid_, SIGTERM);
    return wait();
  }
  // SIGKILL to the whole process group, as a crash or an OOM kill would.
  void kill_hard() {
    ::kill(-pid_, SIGKILL);
    (void)wait();
  }
  // Waits up to `limit` for the service to exit by itself: its exit status, or nullopt if it still runs.
  std::optional<int> wait_for_exit(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return std::nullopt;
  }
  [[nodiscard]] std::string log_text() const {
    std::ifstream in(log_);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

 private:
  int wait() {
    int status = 0;
    if (pid_ <= 0) return -1;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  std::filesystem::path log_;
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  unsigned short port_ = 0;
};

// `lethe serve` on `job` with the token file `token`, on an ephemeral loopback port, logging to
// `log`; `launcher` runs it (e.g. mpiexec(2) of tests/trainer/cli_job_fixture.h), empty for one process.
inline ServiceProcess serve_job(const std::filesystem::path& job, const std::filesystem::path& token,
                                const std::filesystem::path& log, const std::string& launcher = "",
                                const std::string& extra = "") {
  return ServiceProcess(launcher + std::string(LETHE_BINARY) + " serve --job " + job.string() +
                            " --listen 127.0.0.1:0 --token-file " + token.string() + " " + extra,
                        log);
}

// Live non-public record ids of a dataset file, in file order: what a test may delete.
inline std::vector<std::string> live_private_ids(const std::filesystem::path& dataset_file) {
  const auto dataset = storage::Dataset::open(dataset_file);
  std::vector<std::string> ids;
  for (std::uint64_t row = 0; row < dataset.size(); ++row) {
    if (!dataset.is_public(row) && !dataset.is_tombstoned(row)) ids.emplace_back(dataset.id(row));
  }
  return ids;
}

// Polls GET /v1/deletions/{id} until the receipt is completed or failed (or `limit` passes).
inline nlohmann::json wait_for_receipt(http::Client& client, const std::string& id,
                                       std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto response = client.request("GET", "/v1/deletions/" + id);
    if (response.status != 200) throw std::runtime_error("GET /v1/deletions/" + id + ": " + std::to_string(response.status) + " " + response.body);
    auto receipt = nlohmann::json::parse(response.body);
    const auto status = receipt.value("status", "");
    if (status == "completed" || status == "failed") return receipt;
    if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("request " + id + " still " + status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace lethe::test
