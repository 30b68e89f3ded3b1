// Faults under the real `lethe serve` (issue 14): a disk that fills after requests were acknowledged
// (a real tmpfs), a rank stopped with SIGSTOP and one killed, and a job whose ledger was removed or
// replaced. In each, no acknowledged request is lost and the service says what is wrong.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>

#include <cerrno>
#include <cstring>
#include <dirent.h>

#include "comm/in_process.h"
#include "deletion/coordinator.h"
#include "deletion/job_router.h"
#include "http/client.h"
#include "service_process.h"
#include "storage/dataset.h"
#include "storage/ledger.h"
#include "tests/trainer/cli_job_fixture.h"

namespace lethe::test {
namespace {

using nlohmann::json;

constexpr const char* kToken = "0123456789abcdef-faults-test-token";

struct Health {
  int status = 0;
  json body;
  bool has(const std::string& code) const {
    for (const auto& problem : body.value("problems", json::array())) {
      if (problem.at("code") == code) return true;
    }
    return false;
  }
};

Health healthz(const ServiceProcess& service) {
  auto anonymous = http::Client(http::parse_url(service.url()), std::nullopt, std::chrono::seconds(10));
  const auto response = anonymous.request("GET", "/healthz");
  return {response.status, json::parse(response.body)};
}

// Polls /healthz until `done` holds (or `limit` passes; then the last answer, for the failure message).
template <typename Done>
Health wait_for_health(const ServiceProcess& service, Done done, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto health = healthz(service);
    if (done(health) || std::chrono::steady_clock::now() > deadline) return health;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// A job like test_service.cpp's (2 shards x 3 slices x 3 sequences, noisy GD), in `where`.
class FaultTest : public CliJobTest {
 protected:
  void SetUp() override {
    CliJobTest::SetUp();
    if (HasFatalFailure()) return;
    write_token_file(dir_ / "token", kToken);
  }

  // Trains the job in `root` (which holds train.h5, test.h5 and gets job.yaml, backbone.h5, run/).
  void train_job_in(const fs::path& root) {
    root_ = root;
    auto text = job_config_text(JobShape{2, 3, 3, 1});
    text += "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 60, target_epsilon: 1.0}\n";
    std::ofstream(root / "job.yaml") << text;
    const auto pre = pretrain(root / "job.yaml");
    ASSERT_EQ(pre.status, 0) << pre.out;
    const auto trained = train(root / "job.yaml", job());
    ASSERT_EQ(trained.status, 0) << trained.out;
  }

  [[nodiscard]] fs::path job() const { return root_ / "run"; }

  ServiceProcess serve(int ranks = 1, const std::string& extra = "") {
    return serve_job(job(), dir_ / "token", dir_ / "serve.log", ranks > 1 ? mpiexec(ranks) : std::string(), extra);
  }

  [[nodiscard]] std::vector<std::string> private_ids() const { return live_private_ids(root_ / "train.h5"); }
  [[nodiscard]] bool erased(const std::string& id) const {
    const auto dataset = storage::Dataset::open(root_ / "train.h5");
    return dataset.is_tombstoned(dataset.row_of(id));
  }

  fs::path root_;
};

class ServiceFaults : public FaultTest {
 protected:
  void SetUp() override {
    FaultTest::SetUp();
    if (HasFatalFailure()) return;
    train_job_in(dir_);
  }
};

// The job and its dataset on a 64 MiB tmpfs of their own, so that a test can fill it.
class FullDisk : public FaultTest {
 protected:
  void SetUp() override {
    FaultTest::SetUp();
    if (HasFatalFailure()) return;
    const auto disk = dir_ / "disk";
    fs::create_directories(disk);
    if (::mount("tmpfs", disk.c_str(), "tmpfs", 0, "size=64m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs to fill (" << std::strerror(errno) << "): needs root or CAP_SYS_ADMIN";
    }
    mounted_ = disk;
    for (const char* file : {"train.h5", "test.h5"}) {
      fs::copy_file(dir_ / file, disk / file);  // another file system: no rename
      fs::remove(dir_ / file);
    }
    train_job_in(disk);
  }
  void TearDown() override {
    if (!mounted_.empty()) ::umount2(mounted_.c_str(), MNT_DETACH);
    FaultTest::TearDown();
  }

  // Writes a file until the disk is full (ENOSPC); returns its path.
  fs::path fill_disk() {
    const auto path = mounted_ / "filler";
    FILE* file = std::fopen(path.c_str(), "wb");
    EXPECT_NE(file, nullptr);
    const std::string chunk(4096, 'f');
    while (std::fwrite(chunk.data(), 1, chunk.size(), file) == chunk.size() && std::fflush(file) == 0) {
    }
    std::fclose(file);
    return path;
  }

  fs::path mounted_;
};

TEST_F(FullDisk, AcknowledgedRequestsWaitOutAFullDiskAndCompleteOnceSpaceIsFreed) {
  const auto ids = private_ids();
  // A 2 s batching window: the disk fills after the request is acknowledged, before its batch runs.
  auto service = serve(1, "--batch-window-ms 2000");
  auto client = service.client(kToken);
  const auto first = client.request("POST", "/v1/deletions", json{{"records", {ids.at(3)}}}.dump());
  ASSERT_EQ(first.status, 202) << first.body;
  const auto id = json::parse(first.body).at("id").get<std::string>();
  const auto filler = fill_disk();

  // Degraded, and retried past the 3 attempts that used to fail the request.
  const auto full = wait_for_health(
      service, [](const Health& h) { return h.has("storage_full") && h.body.at("retry").at("failures") >= 4; },
      std::chrono::seconds(60));
  ASSERT_TRUE(full.has("storage_full")) << full.body.dump(2) << service.log_text();
  EXPECT_EQ(full.status, 503);
  EXPECT_GE(full.body.at("retry").at("failures").get<int>(), 4) << full.body.dump(2);
  EXPECT_EQ(full.body.at("retry").at("error_kind"), "no_space");
  EXPECT_GT(full.body.at("oldest_unfinished_seconds").get<double>(), 1.0);
  EXPECT_EQ(full.body.dump().find(dir_.string()), std::string::npos) << "/healthz needs no token: no paths";
  const auto receipt = json::parse(client.request("GET", "/v1/deletions/" + id).body);
  EXPECT_EQ(receipt.at("status"), "queued") << receipt.dump(2);
  const auto metrics = client.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("lethe_health_problem{problem=\"storage_full\"} 1"), std::string::npos) << metrics;

  // A request while the disk is full is acknowledged or refused with 503: never a 500, never lost.
  const auto second = client.request("POST", "/v1/deletions", json{{"records", {ids.at(4)}}}.dump());
  std::optional<std::string> second_id;
  if (second.status == 202) {
    second_id = json::parse(second.body).at("id").get<std::string>();
  } else {
    EXPECT_EQ(second.status, 503) << second.body;
    EXPECT_EQ(json::parse(second.body).at("error").at("code"), "storage_full") << second.body;
  }

  fs::remove(filler);
  const auto done = wait_for_receipt(client, id, std::chrono::seconds(120));
  EXPECT_EQ(done.at("status"), "completed") << done.dump(2) << service.log_text();
  if (second_id) EXPECT_EQ(wait_for_receipt(client, *second_id).at("status"), "completed");
  const auto healthy = wait_for_health(service, [](const Health& h) { return h.status == 200; }, std::chrono::seconds(30));
  EXPECT_EQ(healthy.body.at("status"), "ok") << healthy.body.dump(2);
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
  EXPECT_TRUE(erased(ids.at(3)));
}

// Finding 10: a full disk at submission is 503 storage_full with Retry-After, not a 500; nothing is
// recorded, and the same request succeeds once space is freed.
TEST_F(FullDisk, AFullDiskAtSubmissionIs503StorageFullAndTheRetrySucceeds) {
  auto service = serve();
  auto client = service.client(kToken);
  const auto filler = fill_disk();
  // More ids than any slack in the ledger's files could hold.
  json records = json::array();
  for (int i = 0; i < 10000; ++i) records.push_back("full-disk-" + std::to_string(i) + "-" + std::string(200, 'p'));
  const json request = {{"records", records}, {"idempotency_key", "full-disk-1"}};
  const auto refused = client.request("POST", "/v1/deletions", request.dump());
  ASSERT_EQ(refused.status, 503) << refused.body << service.log_text();
  EXPECT_EQ(json::parse(refused.body)["error"]["code"], "storage_full");
  ASSERT_TRUE(refused.header("Retry-After"));
  EXPECT_EQ(*refused.header("Retry-After"), "10");
  EXPECT_EQ(refused.body.find(mounted_.string()), std::string::npos) << "no path in the answer: " << refused.body;

  // Space freed: the same request is accepted as new (nothing was recorded before) and completes.
  fs::remove(filler);
  const auto accepted = client.request("POST", "/v1/deletions", request.dump());
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  EXPECT_TRUE(json::parse(accepted.body).at("created").get<bool>());
  EXPECT_EQ(wait_for_receipt(client, json::parse(accepted.body).at("id")).at("status"), "completed");
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

// Batch mode (`lethe delete --job`, Coordinator::run_until_idle) gives up on a full disk after its
// attempts instead of waiting forever, and leaves the requests queued, not failed.
TEST_F(FullDisk, BatchModeStopsWithTheRequestsStillQueuedAndALaterRunCompletesThem) {
  const auto victim = private_ids().at(6);
  auto world = comm::make_in_process_world(1);
  auto& comm = *world.front();
  deletion::CoordinatorOptions options;
  options.retry_delay = std::chrono::milliseconds(10);
  options.attempts = 2;
  std::string id;
  {
    deletion::JobRouter router(job(), comm);
    storage::Ledger ledger(storage::job_ledger_path(job()));
    deletion::Coordinator coordinator(router, ledger, comm, options);
    deletion::DeletionRequest request;
    request.records = {victim};
    id = coordinator.submit(request).request.id;
    const auto filler = fill_disk();
    try {
      coordinator.run_until_idle();
      FAIL() << "the batch succeeded on a full disk";
    } catch (const deletion::DeletionsPending& e) {
      EXPECT_NE(std::string(e.what()).find("1 deletion request(s) are still queued"), std::string::npos) << e.what();
    }
    EXPECT_EQ(ledger.get(id)->status, storage::RequestStatus::kQueued);
    fs::remove(filler);
  }
  deletion::JobRouter router(job(), comm);
  storage::Ledger ledger(storage::job_ledger_path(job()));
  deletion::Coordinator coordinator(router, ledger, comm, options);
  coordinator.run_until_idle();  // replays the queued request
  EXPECT_EQ(ledger.get(id)->status, storage::RequestStatus::kCompleted);
  EXPECT_TRUE(erased(victim));
}

// Finds the pid of MPI rank `rank` of the service on `job` (its environment names the rank).
pid_t rank_pid(const fs::path& job, int rank) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto cmdline = read_text(entry.path() / "cmdline");
    if (cmdline.find(job.string()) == std::string::npos || cmdline.find("serve") == std::string::npos) continue;
    auto environ = read_text(entry.path() / "environ");
    for (auto& c : environ) c = c == '\0' ? '\n' : c;
    if (environ.find("\nOMPI_COMM_WORLD_RANK=" + std::to_string(rank) + "\n") != std::string::npos) {
      return static_cast<pid_t>(std::stol(name));
    }
  }
  return -1;
}

TEST_F(ServiceFaults, AStoppedRankIsReportedWithinSecondsAndAKilledOneIsNamedInTheLog) {
  auto service = serve(2);
  auto client = service.client(kToken);
  ASSERT_EQ(healthz(service).status, 200);
  const pid_t follower = rank_pid(job(), 1);
  ASSERT_GT(follower, 0) << "rank 1 of the service not found in /proc";

  ASSERT_EQ(::kill(follower, SIGSTOP), 0);
  const auto hung = wait_for_health(service, [](const Health& h) { return h.has("ranks_unresponsive"); },
                                    std::chrono::seconds(30));
  EXPECT_EQ(hung.status, 503) << hung.body.dump(2);
  ASSERT_TRUE(hung.has("ranks_unresponsive")) << hung.body.dump(2);
  EXPECT_GE(hung.body.at("ranks").at("heartbeat_waiting_seconds").get<double>(), 5.0);
  // Requests are still acknowledged (durable in the ledger) and carried out once the rank is back.
  const auto accepted = client.request("POST", "/v1/deletions", json{{"records", {private_ids().at(5)}}}.dump());
  ASSERT_EQ(accepted.status, 202) << accepted.body;
  ASSERT_EQ(::kill(follower, SIGCONT), 0);
  EXPECT_EQ(wait_for_receipt(client, json::parse(accepted.body).at("id")).at("status"), "completed");
  EXPECT_EQ(wait_for_health(service, [](const Health& h) { return h.status == 200; }, std::chrono::seconds(30)).status, 200);

  // A killed rank: mpirun stops the others with SIGTERM, and rank 0's log says that may be why.
  ASSERT_EQ(::kill(follower, SIGKILL), 0);
  const auto status = service.wait_for_exit(std::chrono::seconds(120));
  ASSERT_TRUE(status.has_value()) << "the service outlived its killed rank";
  EXPECT_NE(*status, 0);
  EXPECT_NE(service.log_text().find("another rank exited"), std::string::npos) << service.log_text();
}

// Finding 2: `lethe erase` on a job's dataset made a later deletion answer "already_erased" with
// both models still holding the record. Erase and compact now refuse a job's dataset.
TEST_F(ServiceFaults, EraseAndCompactRefuseAJobsDatasetSoADeletionStillReachesEveryModel) {
  const auto victim = private_ids().at(2);
  const auto data = (root_ / "train.h5").string();
  const auto erase = run_command(lethe_cmd() + " erase --data " + data + " --id " + victim);
  EXPECT_NE(erase.status, 0) << erase.out;
  EXPECT_NE(erase.out.find("is the dataset of job " + job().string()), std::string::npos) << erase.out;
  EXPECT_NE(erase.out.find("lethe delete --job"), std::string::npos) << erase.out;
  const auto compact = run_command(lethe_cmd() + " compact --data " + data);
  EXPECT_NE(compact.status, 0) << compact.out;
  EXPECT_FALSE(erased(victim));
  {
    auto service = serve();
    // While the job's writer runs, its lock refuses the edit as well.
    const auto during = run_command(lethe_cmd() + " erase --data " + data + " --id " + victim);
    EXPECT_NE(during.status, 0) << during.out;
    EXPECT_FALSE(erased(victim));
    auto client = service.client(kToken);
    const auto submitted = client.request("POST", "/v1/deletions", json{{"records", {victim}}}.dump());
    ASSERT_EQ(submitted.status, 202) << submitted.body;
    const auto receipt = wait_for_receipt(client, json::parse(submitted.body).at("id"));
    ASSERT_EQ(receipt.at("status"), "completed") << receipt.dump(2);
    EXPECT_EQ(receipt.at("records").at(0).at("outcome"), "deleted") << receipt.dump(2);
    EXPECT_EQ(receipt.at("models").size(), 2u) << "both models forget it";
    EXPECT_EQ(service.terminate(), 0) << service.log_text();
  }
  EXPECT_TRUE(erased(victim));
  // A retired job (its directory removed) no longer protects the file.
  fs::remove_all(job());
  const auto other = private_ids().at(3);
  const auto retired = run_command(lethe_cmd() + " erase --data " + data + " --id " + other);
  EXPECT_EQ(retired.status, 0) << retired.out;
  EXPECT_TRUE(erased(other));
}

TEST_F(ServiceFaults, AJobRefusesToStartWithoutItsLedgerOrWithAnotherOneUnlessTheLossIsAccepted) {
  const auto ids = private_ids();
  const auto remove = [&](const std::string& id) {
    return run_command(lethe_cmd() + " delete --job " + job().string() + " --record " + id);
  };
  ASSERT_EQ(remove(ids.at(0)).status, 0);
  const auto ledger = storage::job_ledger_path(job());
  fs::create_directories(dir_ / "aside");
  for (const char* suffix : {"", "-wal", "-shm"}) {
    if (fs::exists(ledger.string() + suffix)) fs::rename(ledger.string() + suffix, dir_ / "aside" / (std::string("ledger.sqlite") + suffix));
  }
  const auto missing = remove(ids.at(1));
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.out.find("is missing, but the job has carried out deletions"), std::string::npos) << missing.out;
  EXPECT_FALSE(fs::exists(ledger)) << "the refusal must not create a new ledger";

  { storage::Ledger another(ledger); }  // another (empty) ledger in its place
  const auto replaced = remove(ids.at(1));
  EXPECT_NE(replaced.status, 0);
  EXPECT_NE(replaced.out.find("not this job's ledger"), std::string::npos) << replaced.out;

  const auto accepted = run_command(lethe_cmd() + " delete --job " + job().string() + " --record " + ids.at(1) +
                                    " --accept-ledger-loss");
  EXPECT_EQ(accepted.status, 0) << accepted.out;
  EXPECT_TRUE(erased(ids.at(1)));
}

}  // namespace
}  // namespace lethe::test
