// Retrain while serving, end to end: the real `lethe serve` starts `lethe retrain` processes
// (POST /v1/retrain), keeps completing deletions and serving predictions while one trains (held
// mid-training with SIGSTOP, so that the deletions land after its snapshot for certain), and adopts
// its result without a restart: the new models forget what was deleted meanwhile. A retrain killed
// mid-way, and a service killed while one runs, lose nothing and serve no deleted record.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <set>
#include <thread>

#include "http/client.h"
#include "service_process.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/record_assignment.h"
#include "tests/trainer/cli_job_fixture.h"

namespace lethe::test {
namespace {

using nlohmann::json;

constexpr const char* kToken = "0123456789abcdef-retrain-test-token";
constexpr int kShards = 2;
constexpr int kSlices = 3;

class RetrainServing : public CliJobTest {
 protected:
  void SetUp() override {
    CliJobTest::SetUp();
    if (HasFatalFailure()) return;
    // Cyclic orders [0,1,2], [1,2,0], [2,0,1]: one record from each slice of a shard kills it.
    std::ofstream(dir_ / "job.yaml") << job_config_text(JobShape{kShards, kSlices, 3, 2}) << extra_config();
    const auto pre = pretrain(dir_ / "job.yaml");
    ASSERT_EQ(pre.status, 0) << pre.out;
    const auto trained = train(dir_ / "job.yaml", job());
    ASSERT_EQ(trained.status, 0) << trained.out;
    write_token_file(dir_ / "token", kToken);
  }
  void TearDown() override {
    for (const auto pid : stray_) ::kill(pid, SIGKILL);  // a retrain outliving a killed service
    CliJobTest::TearDown();
  }

  [[nodiscard]] virtual std::string extra_config() const { return ""; }
  [[nodiscard]] fs::path job() const { return dir_ / "run"; }

  // `ranks` > 1: the service, and the retrains it starts, under mpiexec.
  ServiceProcess serve(int ranks = 1) {
    const auto launcher = ranks > 1 ? mpiexec(ranks) : std::string();
    return serve_job(job(), dir_ / "token", dir_ / "serve.log", launcher,
                     ranks > 1 ? "--retrain-command '" + launcher + "{lethe} retrain --job {job} --id {id} --no-wait'" : "");
  }

  // A live private record of (shard, slice) not in `taken`.
  std::string record_in(int shard, int slice, std::set<std::string>& taken) const {
    const auto dataset = storage::Dataset::open(dir_ / "train.h5");
    for (std::uint64_t row = 0; row < dataset.size(); ++row) {
      if (dataset.is_public(row) || dataset.is_tombstoned(row)) continue;
      const std::string id(dataset.id(row));
      const auto a = dataset.assigner().assign(id, kShards, kSlices);
      if (a.shard == shard && a.slice == slice && taken.insert(id).second) return id;
    }
    throw std::runtime_error("no live private record left in shard " + std::to_string(shard));
  }

  json delete_records(http::Client& client, const std::vector<std::string>& ids) {
    const auto response = client.request("POST", "/v1/deletions", json{{"records", ids}}.dump());
    EXPECT_EQ(response.status, 202) << response.body;
    auto receipt = wait_for_receipt(client, json::parse(response.body).at("id"));
    EXPECT_EQ(receipt.at("status"), "completed") << receipt.dump(2);
    return receipt;
  }

  // The retrain's record once its process has taken its snapshot and started training.
  json wait_for_record(const std::string& id, const std::string& status) {
    const auto path = job() / "retrain" / (id + ".json");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      if (fs::exists(path)) {
        try {
          auto record = json::parse(read_text(path));
          if (record.at("status") == status) return record;
        } catch (const json::exception&) {
        }
      }
      if (std::chrono::steady_clock::now() > deadline) {
        const auto log = job() / "retrain" / (id + ".log");
        throw std::runtime_error("retrain " + id + " never reached " + status + ": " +
                                 (fs::exists(path) ? read_text(path) : "no record") + "\n" + (fs::exists(log) ? read_text(log) : ""));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  static json get(http::Client& client, const std::string& target) {
    const auto response = client.request("GET", target);
    EXPECT_EQ(response.status, 200) << target << ": " << response.body;
    return json::parse(response.body);
  }

  // Polls GET /v1/retrain/{id} until it is no longer running.
  static json wait_for_retrain(http::Client& client, const std::string& id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
    for (;;) {
      auto status = get(client, "/v1/retrain/" + id);
      if (status.at("status") != "running") return status;
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("retrain " + id + " still running");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Every prefix checkpoint the job's manifest serves from exists and was trained on exactly the
  // live records of its slices now: its metadata's records digest (SipHash of the ids it trained on,
  // trainer/s3t_job.cpp) is theirs, so no deleted record reached it.
  void expect_no_deleted_record_served() const {
    const auto manifest = json::parse(read_text(job() / "manifest.json"));
    const auto dataset = storage::Dataset::open(dir_ / "train.h5");
    const storage::CheckpointStore store(job() / "checkpoints");
    const auto live_digest = [&](int shard, const std::set<int>& slices) {
      std::string text;
      for (std::uint64_t row = 0; row < dataset.size(); ++row) {
        if (dataset.is_public(row) || dataset.is_tombstoned(row)) continue;
        const std::string id(dataset.id(row));
        const auto a = dataset.assigner().assign(id, kShards, kSlices);
        if (a.shard == shard && slices.count(a.slice)) text += id + '\n';
      }
      return storage::siphash24(1, 2, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    };
    int checked = 0;
    for (const auto& shard : manifest.at("routes").at("s3t").at("shards")) {
      for (const auto& series : shard.at("series")) {
        const auto versions = store.versions(series.at("name"));
        for (const auto& prefix : series.at("prefixes")) {
          const auto found = std::find_if(versions.begin(), versions.end(),
                                          [&](const auto& v) { return v.version == prefix.at("version").get<int>(); });
          ASSERT_NE(found, versions.end()) << series.at("name") << " prefix " << prefix.at("prefix") << " has no checkpoint";
          const auto slices = found->metadata.at("slices").get<std::vector<int>>();
          EXPECT_EQ(found->metadata.at("records_digest").get<std::uint64_t>(),
                    live_digest(shard.at("shard"), {slices.begin(), slices.end()}))
              << series.at("name") << " P_" << prefix.at("prefix") << " was trained on a record deleted since";
          ++checked;
        }
      }
    }
    EXPECT_GT(checked, 0);
  }

  std::vector<pid_t> stray_;
};

TEST_F(RetrainServing, AdoptsWithoutStoppingAndForgetsWhatWasDeletedMeanwhile) {
  auto service = serve();
  auto client = service.client(kToken);
  std::set<std::string> taken;
  std::vector<std::string> deleted;

  // Shard 0 dies: one record of each slice.
  for (int slice = 0; slice < kSlices; ++slice) deleted.push_back(record_in(0, slice, taken));
  delete_records(client, deleted);
  const auto before = get(client, "/v1/models");
  EXPECT_EQ(before.at("models")[0].at("live_shards"), 1);
  const auto version_before = before.at("model_version").get<int>();

  // A retrain starts; a second is refused naming it.
  const auto started = client.request("POST", "/v1/retrain", "");
  ASSERT_EQ(started.status, 202) << started.body;
  const auto id = json::parse(started.body).at("id").get<std::string>();
  EXPECT_EQ(started.header("Location").value_or(""), "/v1/retrain/" + id);
  const auto second = client.request("POST", "/v1/retrain", "");
  EXPECT_EQ(second.status, 409) << second.body;
  EXPECT_NE(second.body.find(id), std::string::npos) << second.body;
  EXPECT_EQ(client.request("GET", "/v1/retrain/000000000000").status, 404);

  // Held mid-training, after its snapshot: deletions complete, predictions are served.
  const auto record = wait_for_record(id, "running");
  const auto pid = static_cast<pid_t>(record.at("pid").get<std::int64_t>());
  ASSERT_EQ(::kill(pid, SIGSTOP), 0);
  EXPECT_EQ(get(client, "/v1/retrain/" + id).at("status"), "running");
  const auto during = get(client, "/v1/models");
  EXPECT_EQ(during.at("retrain").at("in_progress").at(0).at("id"), id);
  EXPECT_EQ(during.at("retrain").at("in_progress").at(0).at("phase"), "training");
  // One record in the shard being retrained (the retrain read it), one in the live shard.
  const std::vector<std::string> meanwhile = {record_in(0, 1, taken), record_in(1, 2, taken)};
  for (const auto& victim : meanwhile) {
    const auto receipt = delete_records(client, {victim});
    EXPECT_EQ(receipt.at("retrain").at("in_progress"), json::array({id})) << service.log_text();
    EXPECT_NE(receipt.at("retrain").at("effect").get<std::string>().find("forget"), std::string::npos);
    deleted.push_back(victim);
  }
  const json row = json::array({std::vector<int>(36, 100)});
  const auto predicted = client.request("POST", "/v1/predict", json{{"inputs", row}}.dump());
  EXPECT_EQ(predicted.status, 200) << predicted.body;
  EXPECT_EQ(get(client, "/v1/models").at("model_version"), version_before + 2);  // the two batches
  ASSERT_EQ(::kill(pid, SIGCONT), 0);

  // Adopted by the running service: one more model version, every shard live again, the two
  // records deleted meanwhile forgotten through slice deactivation.
  const auto done = wait_for_retrain(client, id);
  ASSERT_EQ(done.at("status"), "completed") << done.dump(2) << service.log_text();
  EXPECT_EQ(done.at("model_version"), version_before + 3);
  const auto after = get(client, "/v1/models");
  EXPECT_EQ(after.at("model_version"), version_before + 3);
  EXPECT_EQ(after.at("models")[0].at("live_shards"), kShards);
  EXPECT_EQ(after.at("retrain").at("in_progress"), json::array());
  EXPECT_EQ(after.at("retrain").at("last").at("id"), id);
  EXPECT_EQ(after.at("retrain").at("last").at("deleted_since_snapshot"), 2);
  const auto run = json::parse(read_text(job() / "retrain" / (id + ".json")));
  EXPECT_EQ(run.at("status"), "adopted");
  const auto& forgotten = run.at("adoption").at("routes").at("s3t").at("forgotten");
  EXPECT_EQ(forgotten.at("records"), 2);
  EXPECT_EQ(forgotten.at("shards").size(), 2u) << forgotten.dump();
  expect_no_deleted_record_served();
  EXPECT_EQ(client.request("POST", "/v1/predict", json{{"inputs", row}}.dump()).status, 200);

  // The service never stopped: the same process answers, and it logged the adoption.
  EXPECT_NE(service.log_text().find("adopted without stopping the service"), std::string::npos) << service.log_text();
  EXPECT_EQ(service.terminate(), 0);
}

TEST_F(RetrainServing, AKilledRetrainIsReportedAndCleanedUpAndAKilledServiceLosesNothing) {
  std::set<std::string> taken;
  std::vector<std::string> deleted;
  std::string killed_id;
  {
    auto service = serve();
    auto client = service.client(kToken);
    for (int slice = 0; slice < kSlices; ++slice) deleted.push_back(record_in(1, slice, taken));
    delete_records(client, deleted);

    // SIGKILL of the retrain mid-way: reported failed; nothing served changes.
    const auto started = client.request("POST", "/v1/retrain", "");
    ASSERT_EQ(started.status, 202) << started.body;
    killed_id = json::parse(started.body).at("id").get<std::string>();
    const auto record = wait_for_record(killed_id, "running");
    const auto manifest_before = read_text(job() / "manifest.json");
    ASSERT_EQ(::kill(static_cast<pid_t>(record.at("pid").get<std::int64_t>()), SIGKILL), 0);
    const auto failed = wait_for_retrain(client, killed_id);
    EXPECT_EQ(failed.at("status"), "failed") << failed.dump(2);
    EXPECT_EQ(read_text(job() / "manifest.json"), manifest_before);
    EXPECT_EQ(get(client, "/v1/models").at("retrain").at("in_progress"), json::array());

    // Another retrain, and the service is SIGKILLed while it trains (held, so that it is mid-way).
    const auto again = client.request("POST", "/v1/retrain", "");
    ASSERT_EQ(again.status, 202) << again.body << service.log_text();
    const auto id = json::parse(again.body).at("id").get<std::string>();
    const auto pid = static_cast<pid_t>(wait_for_record(id, "running").at("pid").get<std::int64_t>());
    ASSERT_EQ(::kill(pid, SIGSTOP), 0);
    stray_.push_back(pid);
    deleted.push_back(record_in(0, 0, taken));
    delete_records(client, {deleted.back()});
    service.kill_hard();
    // The retrain outlives it (its own process group) and finishes: with no writer holding the job,
    // it adopts its result itself, forgetting the record deleted after its snapshot.
    ASSERT_EQ(::kill(pid, SIGCONT), 0);
    const auto adopted = wait_for_record(id, "adopted");
    EXPECT_EQ(adopted.at("adoption").at("deleted_since_snapshot"), 1);
  }
  // The killed retrain's checkpoints were purged when the next one started, and its record says so.
  const storage::CheckpointStore store(job() / "checkpoints");
  for (const auto& name : store.names()) {
    EXPECT_FALSE(name.ends_with("-r" + killed_id) && !store.versions(name).empty()) << name << " outlived its retrain";
  }
  const auto killed = json::parse(read_text(job() / "retrain" / (killed_id + ".json")));
  EXPECT_EQ(killed.at("status"), "failed");
  EXPECT_NE(killed.at("error").get<std::string>().find("interrupted"), std::string::npos) << killed.dump(2);

  // A restarted service serves the adopted models, with no deleted record in them.
  auto service = serve();
  auto client = service.client(kToken);
  const auto models = get(client, "/v1/models");
  EXPECT_EQ(models.at("models")[0].at("live_shards"), kShards);
  expect_no_deleted_record_served();
  EXPECT_EQ(service.terminate(), 0);
}

// The job's `retrain:` policy: the service starts a retrain by itself once a shard dies.
class RetrainPolicy : public RetrainServing {
 protected:
  [[nodiscard]] std::string extra_config() const override { return "retrain: {live_shards_below: 2}\n"; }
};

TEST_F(RetrainPolicy, StartsARetrainWhenLiveShardsFallBelowTheThreshold) {
  auto service = serve();
  auto client = service.client(kToken);
  std::set<std::string> taken;
  // One record of slice 0 truncates shard 0 (still live): no retrain.
  delete_records(client, {record_in(0, 0, taken)});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(fs::exists(job() / "retrain")) << "a retrain started while every shard was live";
  // The rest of shard 0's first slices: it dies, 1 live shard < 2, and a retrain starts and is adopted.
  delete_records(client, {record_in(0, 1, taken), record_in(0, 2, taken)});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  json models;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    models = get(client, "/v1/models");
  } while (models.at("retrain").at("last").is_null() && std::chrono::steady_clock::now() < deadline);
  ASSERT_FALSE(models.at("retrain").at("last").is_null()) << service.log_text();
  EXPECT_EQ(models.at("models")[0].at("live_shards"), kShards);
  const auto id = models.at("retrain").at("last").at("id").get<std::string>();
  const auto status = get(client, "/v1/retrain/" + id);
  EXPECT_EQ(status.at("status"), "completed");
  EXPECT_NE(status.at("started_by").get<std::string>().find("policy: 1 of 2 parts live, below 2"), std::string::npos) << status.dump();
  expect_no_deleted_record_served();
  EXPECT_EQ(service.terminate(), 0);
}

// Two ranks, both routes (as the demo): the retrained S3T route is reloaded on every rank, the
// noisy-GD route, which no retrain touches, stays as it is on every rank.
class RetrainTwoRanks : public RetrainServing {
 protected:
  [[nodiscard]] std::string extra_config() const override {
    return "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 60, target_epsilon: 1.0}\n";
  }
};

TEST_F(RetrainTwoRanks, AdoptsOnEveryRankAndServesBothModels) {
  auto service = serve(2);
  auto client = service.client(kToken);
  std::set<std::string> taken;
  std::vector<std::string> shard0;
  for (int slice = 0; slice < kSlices; ++slice) shard0.push_back(record_in(0, slice, taken));
  delete_records(client, shard0);
  const auto started = client.request("POST", "/v1/retrain", "");
  ASSERT_EQ(started.status, 202) << started.body;
  const auto id = json::parse(started.body).at("id").get<std::string>();
  delete_records(client, {record_in(1, 1, taken)});  // during the retrain, or before it: either way forgotten
  const auto done = wait_for_retrain(client, id);
  ASSERT_EQ(done.at("status"), "completed") << done.dump(2) << service.log_text();
  const auto models = get(client, "/v1/models");
  EXPECT_EQ(models.at("models")[0].at("live_shards"), kShards);
  // Both models answer (a rank that disagreed with rank 0 about the swap would have ended the job).
  const json row = json::array({std::vector<int>(36, 100)});
  for (const char* model : {"s3t", "noisy_gd"}) {
    const auto answer = client.request("POST", "/v1/predict", json{{"inputs", row}, {"model", model}}.dump());
    EXPECT_EQ(answer.status, 200) << model << ": " << answer.body;
  }
  delete_records(client, {record_in(1, 2, taken)});
  expect_no_deleted_record_served();
  (void)service.terminate();  // mpiexec answers a forwarded SIGTERM with 1 however the ranks end
  EXPECT_NE(service.log_text().find("stopped cleanly"), std::string::npos) << service.log_text();
}

}  // namespace
}  // namespace lethe::test
