// tests/trainer/cli_job_fixture.h — end-to-end tests of the real `lethe` binary on small jobs: run a
// command, read its JSON, and a fixture that ingests a tiny 3-class CSV dataset and pretrains on it.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

namespace lethe::test {

namespace fs = std::filesystem;

struct CommandResult {
  int status = 0;
  std::string out;  // stdout and stderr
};

inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed for: " + command);
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe)) r.out += buffer.data();
  const int status = pclose(pipe);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The JSON object a command printed (the first line that starts with '{', to the end).
inline nlohmann::json json_of(const CommandResult& r) {
  const auto at = r.out.find("\n{");
  const auto start = at != std::string::npos ? at + 1 : (r.out.rfind('{', 0) == 0 ? 0 : std::string::npos);
  if (start == std::string::npos) throw std::runtime_error("no JSON in output:\n" + r.out);
  return nlohmann::json::parse(r.out.substr(start));
}

inline std::string lethe_cmd() {
  std::string command = LETHE_BINARY;  // appended, not `+`: GCC 12 misreports a string overread there
  command += " --log-level warn";
  return command;
}

// mpiexec for `ranks` ranks on this (possibly root, possibly small) machine.
inline std::string mpiexec(int ranks) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 mpiexec -np " +
         std::to_string(ranks) + " ";
}

// Three classes of 6x6 uint8 images: each class brightens its own band of rows.
inline void write_csv(const fs::path& path, int records, std::uint32_t seed, const std::string& prefix) {
  std::ofstream out(path);
  out << "id,label";
  for (int f = 0; f < 36; ++f) out << ",f" << f;
  out << "\n";
  std::mt19937 engine(seed);
  std::uniform_int_distribution<int> noise(0, 90);
  for (int r = 0; r < records; ++r) {
    const int label = r % 3;
    out << prefix << r << "," << label;
    for (int f = 0; f < 36; ++f) out << "," << noise(engine) + ((f / 6) / 2 == label ? 150 : 0);
    out << "\n";
  }
}

struct JobShape {
  int shards = 2;
  int slices = 3;
  int sequences = 3;
  int epochs = 2;
};

// A job config over the fixture's train.h5/test.h5/backbone.h5 (paths relative to the config).
inline std::string job_config_text(const JobShape& shape) {
  std::ostringstream y;
  y << "dataset: train.h5\ntest_dataset: test.h5\nbackbone: backbone.h5\njob_dir: run\nseed: 11\n"
    << "s3t: {shards: " << shape.shards << ", slices: " << shape.slices << ", sequences: " << shape.sequences << "}\n"
    << "model: {architecture: mlp, widths: [32, 24, 16], lora_rank: 2, lora_alpha: 4, num_classes: 3}\n"
    << "training: {epochs: " << shape.epochs << ", batch_size: 16, learning_rate: 0.005}\n"
    << "pretrain: {epochs: 4, batch_size: 16, learning_rate: 0.005}\n";
  return y.str();
}

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Content of every regular file under `root`, to prove a command changed nothing. The lock files
// are left out: every process that takes one records itself there (storage/job_lock.h).
inline std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file() || e.path().filename() == ".lock" || e.path().filename() == ".retrain.lock") continue;
    files[e.path().string()] = read_text(e.path());
  }
  return files;
}

// A scratch directory with train.h5 (`train_records` records, 30% public, ids "tr<n>"), test.h5 and,
// after pretrain_job(), backbone.h5.
class CliJobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("lethe_" + std::string(::testing::UnitTest::GetInstance()->current_test_suite()->name()) +
                                        "_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    write_csv(dir_ / "train.csv", train_records(), 1, "tr");
    write_csv(dir_ / "test.csv", 150, 2, "te");
    const auto ingest = lethe_cmd() + " ingest --format csv --id-column id --feature-type uint8 --feature-shape 6x6 --seed 3 ";
    const auto train = run_command(ingest + "--csv " + (dir_ / "train.csv").string() + " --out " +
                                   (dir_ / "train.h5").string() + " --public-fraction 0.3");
    ASSERT_EQ(train.status, 0) << train.out;
    const auto test = run_command(ingest + "--csv " + (dir_ / "test.csv").string() + " --out " + (dir_ / "test.h5").string());
    ASSERT_EQ(test.status, 0) << test.out;
  }
  void TearDown() override { fs::remove_all(dir_); }

  [[nodiscard]] virtual int train_records() const { return 360; }

  fs::path write_config(const std::string& name, const JobShape& shape) {
    std::ofstream(dir_ / name) << job_config_text(shape);
    return dir_ / name;
  }
  CommandResult pretrain(const fs::path& config) { return run_command(lethe_cmd() + " pretrain --config " + config.string()); }
  // `ranks` > 1 runs under mpiexec.
  CommandResult train(const fs::path& config, const fs::path& job, int ranks = 1, const std::string& extra = "") {
    return run_command((ranks > 1 ? mpiexec(ranks) : std::string()) + lethe_cmd() + " train --config " + config.string() +
                       " --job " + job.string() + " " + extra);
  }

  fs::path dir_;
};

}  // namespace lethe::test
