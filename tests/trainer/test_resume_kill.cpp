// Resume after a real crash: `mpiexec -n 2 lethe train` is SIGKILLed (every process of the run) once some
// but not all prefix checkpoints are committed; `lethe train --resume` must then end with the digests of
// an uninterrupted run, keeping what was committed before the kill.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "storage/checkpoint_store.h"
#include "tests/trainer/cli_job_fixture.h"

using namespace lethe::test;
using nlohmann::json;

namespace {

// Parent pid and state of a process, from /proc; false when it is gone.
bool read_stat(pid_t pid, pid_t& parent, char& state) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(in, text)) return false;
  const auto close = text.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return false;
  std::istringstream rest(text.substr(close + 2));
  rest >> state >> parent;
  return true;
}

bool alive(pid_t pid) {
  pid_t parent = 0;
  char state = 'X';
  return read_stat(pid, parent, state) && state != 'Z' && state != 'X';
}

// Every live descendant of `root` (mpiexec's daemons and ranks).
std::set<pid_t> descendants(pid_t root) {
  std::set<pid_t> found{root};
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const auto name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const auto pid = static_cast<pid_t>(std::stol(name));
      pid_t parent = 0;
      char state = 'X';
      if (!found.count(pid) && read_stat(pid, parent, state) && found.count(parent)) grew = found.insert(pid).second;
    }
  }
  found.erase(root);
  return found;
}

// Starts `command` through /bin/sh (which stays its parent) in a new process group, output to `log`.
pid_t spawn_group(const std::string& command, const fs::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    const std::string line = command + " >" + log.string() + " 2>&1";
    execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so the group exists before the parent signals it
  return pid;
}

// Committed prefix checkpoints per series, from the store's manifests (what a reader may load).
std::map<std::string, std::vector<lethe::storage::CheckpointInfo>> committed(const fs::path& checkpoints, int shards,
                                                                             int sequences) {
  std::map<std::string, std::vector<lethe::storage::CheckpointInfo>> out;
  if (!fs::exists(checkpoints)) return out;
  const lethe::storage::CheckpointStore store(checkpoints);
  for (int k = 0; k < shards; ++k) {
    for (int b = 0; b < sequences; ++b) {
      const auto name = "shard" + std::to_string(k) + "-seq" + std::to_string(b);
      out[name] = store.versions(name);
    }
  }
  return out;
}

std::size_t count(const std::map<std::string, std::vector<lethe::storage::CheckpointInfo>>& series) {
  std::size_t n = 0;
  for (const auto& [name, versions] : series) n += versions.size();
  return n;
}

}  // namespace

class ResumeKill : public CliJobTest {
 protected:
  // Enough records and epochs that a 2-rank run takes a few seconds: time to catch it midway.
  [[nodiscard]] int train_records() const override { return 900; }
};

TEST_F(ResumeKill, KilledRunResumesToTheDigestsOfAnUninterruptedOne) {
  const JobShape shape{2, 3, 3, 12};
  const int total = shape.shards * shape.sequences * shape.slices;
  const auto config = write_config("job.yaml", shape);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto start = std::chrono::steady_clock::now();
  const auto reference = train(config, dir_ / "whole");
  ASSERT_EQ(reference.status, 0) << reference.out;
  const auto reference_digests = json_of(reference).at("s3t").at("digests");
  const auto whole_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const auto job = dir_ / "killed";
  const pid_t run = spawn_group(mpiexec(2) + lethe_cmd() + " train --config " + config.string() + " --job " + job.string(),
                                dir_ / "killed.log");
  std::size_t at_kill = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    at_kill = count(committed(job / "checkpoints", shape.shards, shape.sequences));
    if (at_kill >= static_cast<std::size_t>(total) / 4) break;
    if (waitpid(run, nullptr, WNOHANG) == run) {
      FAIL() << "the run ended before it could be killed (an uninterrupted one takes " << whole_seconds
             << " s); its output:\n" << std::ifstream(dir_ / "killed.log").rdbuf();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // The whole run: the shell, mpiexec and both ranks, by group and by pid.
  const auto processes = descendants(run);
  kill(-run, SIGKILL);
  for (const pid_t pid : processes) kill(pid, SIGKILL);
  ASSERT_EQ(waitpid(run, nullptr, 0), run);
  for (const pid_t pid : processes) {
    for (int i = 0; i < 500 && alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_FALSE(alive(pid)) << "process " << pid << " of the killed run survived SIGKILL";
  }

  const auto before = committed(job / "checkpoints", shape.shards, shape.sequences);
  const auto committed_at_kill = count(before);
  ASSERT_GE(committed_at_kill, static_cast<std::size_t>(total) / 4);
  ASSERT_LT(committed_at_kill, static_cast<std::size_t>(total)) << "the kill came too late: every prefix was committed";
  std::cout << "killed " << processes.size() << " processes with " << committed_at_kill << " of " << total
            << " prefix checkpoints committed\n";
  EXPECT_EQ(json::parse(std::ifstream(job / "manifest.json")).at("status"), "training");
  // Without --resume the directory is refused; with it, training picks up where it stopped.
  EXPECT_EQ(train(config, job).status, 1);
  const auto resumed = train(config, job, 2, "--resume");
  ASSERT_EQ(resumed.status, 0) << resumed.out << "\nkilled run's log:\n" << std::ifstream(dir_ / "killed.log").rdbuf();
  EXPECT_EQ(json_of(resumed).at("s3t").at("digests"), reference_digests);

  // Nothing committed before the kill was retrained or rewritten: same versions, same digests, and
  // exactly one version per prefix in the end.
  const auto after = committed(job / "checkpoints", shape.shards, shape.sequences);
  EXPECT_EQ(count(after), static_cast<std::size_t>(total));
  for (const auto& [name, versions] : before) {
    const auto& now = after.at(name);
    ASSERT_GE(now.size(), versions.size()) << name;
    for (std::size_t i = 0; i < versions.size(); ++i) {
      EXPECT_EQ(now[i].version, versions[i].version) << name;
      EXPECT_EQ(now[i].digest, versions[i].digest) << name;
    }
  }
  const auto manifest = json::parse(std::ifstream(job / "manifest.json"));
  EXPECT_EQ(manifest.at("status"), "trained");
  const auto e = run_command(lethe_cmd() + " eval --job " + job.string());
  ASSERT_EQ(e.status, 0) << e.out;
  EXPECT_EQ(json_of(e).at("models")[0].at("live_shards"), shape.shards);
}
