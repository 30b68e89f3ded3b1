// End to end: the real `lethe serve` on loopback (one process, and two MPI ranks), real HTTP,
// a real SQLite ledger and HDF5 files; deletions by both routes, erasure checked by scanning bytes.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "http/client.h"
#include "service_process.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/record_assignment.h"
#include "tests/http/test_util.h"
#include "tests/trainer/cli_job_fixture.h"

namespace lethe::test {
namespace {

using nlohmann::json;

constexpr const char* kToken = "0123456789abcdef-service-test-token";

class ServiceTest : public CliJobTest {
 protected:
  void SetUp() override {
    CliJobTest::SetUp();
    if (HasFatalFailure()) return;
    auto text = job_config_text(JobShape{2, 3, 3, 1});
    text += "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 60, target_epsilon: 1.0}\n";
    std::ofstream(dir_ / "job.yaml") << text;
    const auto pre = pretrain(dir_ / "job.yaml");
    ASSERT_EQ(pre.status, 0) << pre.out;
    const auto trained = train(dir_ / "job.yaml", job());
    ASSERT_EQ(trained.status, 0) << trained.out;
    write_token_file(dir_ / "token", kToken);
  }

  [[nodiscard]] fs::path job() const { return dir_ / "run"; }

  ServiceProcess serve(int ranks = 1, const std::string& extra = "") {
    // Info logging: the log says whether the service drained and stopped cleanly.
    return serve_job(job(), dir_ / "token", dir_ / "serve.log", ranks > 1 ? mpiexec(ranks) : std::string(), extra);
  }

  // Live non-public record ids of the training set, in file order.
  [[nodiscard]] std::vector<std::string> private_ids() const { return live_private_ids(dir_ / "train.h5"); }
  [[nodiscard]] std::string public_id() const {
    const auto dataset = storage::Dataset::open(dir_ / "train.h5");
    for (std::uint64_t row = 0; row < dataset.size(); ++row) {
      if (dataset.is_public(row)) return std::string(dataset.id(row));
    }
    throw std::runtime_error("no public record");
  }
  [[nodiscard]] std::string features_of(const std::string& id) const {
    const auto dataset = storage::Dataset::open(dir_ / "train.h5");
    const std::uint64_t row = dataset.row_of(id);
    std::string bytes(dataset.layout().bytes_per_record(), '\0');
    dataset.read_features({&row, 1}, {reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()});
    return bytes;
  }
  // Every file under the job directory, and the dataset, that holds `needle`.
  [[nodiscard]] std::vector<std::string> files_containing(const std::string& needle) const {
    std::vector<std::string> found;
    for (const auto& [path, content] : snapshot(job())) {
      if (content.find(needle) != std::string::npos) found.push_back(path);
    }
    for (const auto& [path, content] : snapshot(dir_)) {
      if (path.find("train.h5") != std::string::npos && content.find(needle) != std::string::npos) found.push_back(path);
    }
    return found;
  }
};

json post(http::Client& client, const std::string& target, const json& body, int expected) {
  const auto response = client.request("POST", target, body.dump());
  EXPECT_EQ(response.status, expected) << response.body;
  return json::parse(response.body);
}

TEST_F(ServiceTest, DeletesByBothRoutesErasesEverywhereAndReportsIt) {
  const auto ids = private_ids();
  const auto victim = ids.at(7);
  const auto victim_bytes = features_of(victim);
  ASSERT_FALSE(files_containing(victim_bytes).empty()) << "the scan would not see the record's bytes";
  auto service = serve();
  auto client = service.client(kToken);

  // Authentication: only /healthz is open.
  auto anonymous = http::Client(http::parse_url(service.url()), std::nullopt, std::chrono::seconds(10));
  EXPECT_EQ(anonymous.request("GET", "/healthz").status, 200);
  EXPECT_EQ(anonymous.request("GET", "/v1/models").status, 401);
  EXPECT_EQ(anonymous.request("POST", "/v1/deletions", R"({"records": ["x"]})").status, 401);
  auto wrong = http::Client(http::parse_url(service.url()), std::string("not-the-token"), std::chrono::seconds(10));
  EXPECT_EQ(wrong.request("GET", "/metrics").status, 401);

  const auto before = json::parse(client.request("GET", "/v1/models").body);
  const auto submitted = post(client, "/v1/deletions", {{"records", {victim, "no-such-record", public_id()}}}, 202);
  const auto receipt = wait_for_receipt(client, submitted.at("id"));
  ASSERT_EQ(receipt.at("status"), "completed") << receipt.dump(2);
  const auto text = receipt.dump();
  EXPECT_EQ(text.find(victim), std::string::npos) << "record id in clear in the receipt";
  const auto& records = receipt.at("records");
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].at("outcome"), "deleted");
  EXPECT_EQ(records[1].at("outcome"), "unknown");
  EXPECT_EQ(records[2].at("outcome"), "refused_public");
  EXPECT_NE(records[2].at("reason").get<std::string>().find("backbone"), std::string::npos);
  EXPECT_EQ(receipt.at("records_erased"), 1);
  EXPECT_EQ(receipt.at("model_version"), 1);
  for (const auto* key : {"submitted_at", "applied_at", "completed_at"}) EXPECT_TRUE(receipt.at(key).is_string()) << key;

  // S3T: every sequence of the record's shard is cut before its slice; P_p.. are purged.
  const int shard = records[0].at("shard");
  const auto& models = receipt.at("models");
  ASSERT_EQ(models.size(), 2u) << receipt.dump(2);
  EXPECT_EQ(models[0].at("route"), "slice_deactivation");
  const auto& effect = models[0].at("shards").at(0);
  EXPECT_EQ(effect.at("shard"), shard);
  int purged = 0;
  for (const auto& sequence : effect.at("sequences")) {
    EXPECT_LT(sequence.at("depth_after").get<int>(), sequence.at("depth_before").get<int>());
    purged += static_cast<int>(sequence.at("checkpoints_purged").size());
  }
  EXPECT_EQ(purged, 1 + 2 + 3) << "a cyclic 3x3 Latin square cuts each position once";
  // Noisy GD: K_U steps certified at the target epsilon.
  EXPECT_EQ(models[1].at("route"), "noisy_gd");
  EXPECT_GE(models[1].at("unlearning_steps").get<int>(), 1);
  EXPECT_LE(models[1].at("epsilon").get<double>(), 1.0);
  EXPECT_TRUE(models[1].at("certified").get<bool>());

  const auto after = json::parse(client.request("GET", "/v1/models").body);
  EXPECT_EQ(after.at("model_version"), 1);
  EXPECT_LT(after["models"][0]["shards"][shard]["depth"].get<int>(), before["models"][0]["shards"][shard]["depth"].get<int>());

  // The record's bytes are gone from every file; its id is gone from the ledger's files.
  EXPECT_EQ(files_containing(victim_bytes), std::vector<std::string>{});
  for (const auto& path : files_containing(victim)) EXPECT_EQ(path.find("ledger"), std::string::npos) << path;

  // Predict with both models; bad shapes are 400 naming the field.
  const json row = json::array({std::vector<int>(36, 100)});
  EXPECT_EQ(post(client, "/v1/predict", {{"inputs", row}}, 200).at("predictions").size(), 1u);
  EXPECT_EQ(post(client, "/v1/predict", {{"inputs", row}, {"model", "noisy_gd"}}, 200).at("model"), "noisy_gd");
  EXPECT_EQ(post(client, "/v1/predict", {{"inputs", {{1, 2, 3}}}}, 400)["error"]["field"], "inputs[0]");

  // The binary form: raw uint8 rows in; JSON out, or float32 probabilities with Accept.
  {
    std::string rows;
    json inputs = json::array();
    for (int r = 0; r < 3; ++r) {
      std::vector<int> values(36);
      for (int v = 0; v < 36; ++v) values[static_cast<std::size_t>(v)] = (r * 70 + v * 7) % 256;
      for (const int v : values) rows.push_back(static_cast<char>(v));
      inputs.push_back(values);
    }
    for (const char* model : {"s3t", "noisy_gd"}) {
      const auto as_json = post(client, "/v1/predict", {{"inputs", inputs}, {"model", model}}, 200);
      const std::vector<std::pair<std::string, std::string>> binary = {
          {"Content-Type", "application/octet-stream"}, {"X-Lethe-Dtype", "uint8"}, {"X-Lethe-Model", model}};
      const auto answer = client.request("POST", "/v1/predict", rows, binary);
      ASSERT_EQ(answer.status, 200) << answer.body;
      const auto j = json::parse(answer.body);
      EXPECT_EQ(j.at("model"), model);
      ASSERT_EQ(j.at("predictions").size(), 3u);
      for (std::size_t r = 0; r < 3; ++r) {
        EXPECT_EQ(j["predictions"][r]["class"], as_json["predictions"][r]["class"]) << model << " row " << r;
        EXPECT_EQ(j["predictions"][r]["probabilities"], as_json["predictions"][r]["probabilities"]) << model;
      }
      auto raw = binary;
      raw.emplace_back("Accept", "application/octet-stream");
      const auto floats = client.request("POST", "/v1/predict", rows, raw);
      ASSERT_EQ(floats.status, 200);
      EXPECT_EQ(floats.header("X-Lethe-Classes").value_or(""), "3");
      ASSERT_EQ(floats.body.size(), 3u * 3u * sizeof(float));
      float first = 0;
      std::memcpy(&first, floats.body.data(), sizeof first);
      EXPECT_FLOAT_EQ(first, as_json["predictions"][0]["probabilities"][0].get<float>());
    }
    const std::vector<std::pair<std::string, std::string>> octets = {{"Content-Type", "application/octet-stream"}};
    EXPECT_EQ(json::parse(client.request("POST", "/v1/predict", rows.substr(0, 40), octets).body)["error"]["field"], "body")
        << "40 bytes are not whole rows of 36";
    EXPECT_EQ(json::parse(client.request("POST", "/v1/predict", rows,
                                         {{"Content-Type", "application/octet-stream"}, {"X-Lethe-Dtype", "int16"}})
                              .body)["error"]["field"],
              "X-Lethe-Dtype");
  }

  // Bad requests: each a JSON error naming the field; nothing is queued.
  EXPECT_EQ(json::parse(client.request("POST", "/v1/deletions", "{not json").body)["error"]["field"], "body");
  EXPECT_EQ(post(client, "/v1/deletions", {{"records", {1}}}, 400)["error"]["field"], "records[0]");
  EXPECT_EQ(post(client, "/v1/deletions", {{"records", {"a"}}, {"subject", "s"}}, 400)["error"]["field"], "subject");
  EXPECT_EQ(client.request("GET", "/v1/deletions/del-0000000000000000").status, 404);
  EXPECT_EQ(client.request("POST", "/v1/deletions", std::string((16 << 20) + 1, ' ')).status, 413) << "over the default 16 MiB";
  EXPECT_EQ(client.request("GET", "/v1/nothing").status, 404);
  EXPECT_EQ(client.request("DELETE", "/v1/models").status, 405);

  // Idempotency: the same key gives the same request.
  const auto first = post(client, "/v1/deletions", {{"records", {ids.at(11)}}, {"idempotency_key", "k-1"}}, 202);
  const auto again = post(client, "/v1/deletions", {{"records", {ids.at(11)}}, {"idempotency_key", "k-1"}}, 200);
  EXPECT_EQ(again.at("id"), first.at("id"));
  EXPECT_FALSE(again.at("created").get<bool>());
  EXPECT_EQ(post(client, "/v1/deletions", {{"records", {ids.at(12)}}, {"idempotency_key", "k-1"}}, 409)["error"]["field"],
            "idempotency_key");
  EXPECT_EQ(wait_for_receipt(client, first.at("id")).at("status"), "completed");

  const auto metrics = client.request("GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("lethe_deletions_completed_total 2"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("lethe_s3t_live_depth{shard=\"" + std::to_string(shard) + "\"}"), std::string::npos);
  EXPECT_NE(metrics.body.find("lethe_deletion_latency_seconds{quantile=\"0.99\"}"), std::string::npos);
  for (const char* phase : {"resolve", "route:s3t", "route:noisy_gd", "commit", "purge", "erase", "complete"}) {
    EXPECT_NE(metrics.body.find("lethe_deletion_phase_seconds{phase=\"" + std::string(phase) + "\",quantile=\"0.5\"}"),
              std::string::npos)
        << phase << " in\n" << metrics.body;
  }

  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

TEST_F(ServiceTest, KilledMidBurstCompletesEveryAcknowledgedRequestExactlyOnce) {
  const auto ids = private_ids();
  constexpr int kRequests = 40;
  std::set<std::string> acknowledged;  // request ids answered 202
  {
    auto service = serve();
    std::mutex mutex;
    std::atomic<int> next{0};
    std::atomic<bool> killed{false};
    std::vector<std::thread> senders;
    for (int t = 0; t < 4; ++t) {
      senders.emplace_back([&] {
        auto client = service.client(kToken);
        for (int i = next++; i < kRequests && !killed; i = next++) {
          try {
            const json body = {{"records", {ids.at(static_cast<std::size_t>(i))}}, {"idempotency_key", "burst-" + std::to_string(i)}};
            const auto response = client.request("POST", "/v1/deletions", body.dump());
            if (response.status == 202) {
              std::lock_guard lock(mutex);
              acknowledged.insert(json::parse(response.body).at("id").get<std::string>());
            }
          } catch (const http::HttpClientError&) {
            return;  // the server is gone
          }
        }
      });
    }
    while (true) {
      {
        std::lock_guard lock(mutex);
        if (acknowledged.size() >= 15) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    service.kill_hard();
    killed = true;
    for (auto& sender : senders) sender.join();
  }
  ASSERT_GE(acknowledged.size(), 15u);

  auto service = serve();
  auto client = service.client(kToken);
  // The client retries everything (it cannot know what was acknowledged before the kill).
  std::set<std::string> all;
  for (int i = 0; i < kRequests; ++i) {
    const json body = {{"records", {ids.at(static_cast<std::size_t>(i))}}, {"idempotency_key", "burst-" + std::to_string(i)}};
    const auto response = client.request("POST", "/v1/deletions", body.dump());
    ASSERT_TRUE(response.status == 200 || response.status == 202) << response.body;
    const auto id = json::parse(response.body).at("id").get<std::string>();
    // A 200 for a key the client saw no answer for is legitimate: the row was durable but the kill
    // came before the 202 went out. The retry then finds it instead of queueing it twice.
    all.insert(id);
  }
  for (const auto& id : acknowledged) EXPECT_EQ(all.count(id), 1u) << id << " acknowledged before the kill, then lost";
  EXPECT_EQ(all.size(), static_cast<std::size_t>(kRequests));
  for (const auto& id : all) EXPECT_EQ(wait_for_receipt(client, id).at("status"), "completed") << id;
  const auto metrics = client.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("lethe_deletion_requests{status=\"completed\"} " + std::to_string(kRequests)), std::string::npos) << metrics;
  EXPECT_EQ(service.terminate(), 0) << service.log_text();

  // Every record is erased exactly once; nothing else is.
  const auto dataset = storage::Dataset::open(dir_ / "train.h5");
  for (int i = 0; i < kRequests; ++i) EXPECT_TRUE(dataset.is_tombstoned(dataset.row_of(ids.at(static_cast<std::size_t>(i)))));
  EXPECT_EQ(dataset.tombstoned_count(), static_cast<std::uint64_t>(kRequests));
}

TEST_F(ServiceTest, TwoRanksUnderMpirunGiveTheSameModelAsBatchModeOnOneRank) {
  const auto ids = private_ids();
  const std::vector<std::string> victims = {ids.at(3), ids.at(30), ids.at(60)};
  // A copy of the job and its dataset, moved together elsewhere: the job finds its own dataset there.
  fs::create_directories(dir_ / "copy");
  fs::copy(job(), dir_ / "copy" / "run", fs::copy_options::recursive);
  fs::copy(dir_ / "train.h5", dir_ / "copy" / "train.h5");
  {
    auto service = serve(2);
    auto client = service.client(kToken);
    const auto submitted = post(client, "/v1/deletions", {{"records", victims}}, 202);
    EXPECT_EQ(wait_for_receipt(client, submitted.at("id")).at("status"), "completed");
    // Open MPI's mpiexec exits 1 whenever it forwarded a SIGTERM, however the ranks ended; the
    // service's own log says whether rank 0 drained and stopped the other rank.
    (void)service.terminate();
    EXPECT_NE(service.log_text().find("stopped cleanly"), std::string::npos) << service.log_text();
  }
  // The same deletion in batch mode on one rank, on the copy.
  std::string command = lethe_cmd() + " delete --job " + (dir_ / "copy" / "run").string();
  for (const auto& id : victims) command += " --record " + id;
  const auto batch = run_command(command);
  ASSERT_EQ(batch.status, 0) << batch.out;
  EXPECT_EQ(json_of(batch).at("status"), "completed");
  EXPECT_TRUE(storage::Dataset::open(dir_ / "copy" / "train.h5").is_tombstoned(
      storage::Dataset::open(dir_ / "copy" / "train.h5").row_of(victims[0])))
      << "the copy erased its own dataset";
  const auto served = json::parse(std::ifstream(job() / "manifest.json")).at("routes");
  const auto direct = json::parse(std::ifstream(dir_ / "copy" / "run" / "manifest.json")).at("routes");
  EXPECT_EQ(served.at("s3t"), direct.at("s3t"));
  const auto weights = [](const fs::path& job_dir, const json& routes) {
    return storage::CheckpointStore(job_dir / "checkpoints")
        .load(routes.at("noisy_gd").at("series"), routes.at("noisy_gd").at("version"))
        .tensors;
  };
  const auto served_weights = weights(job(), served);
  const auto direct_weights = weights(dir_ / "copy" / "run", direct);
  ASSERT_EQ(served_weights.size(), direct_weights.size());
  for (std::size_t i = 0; i < served_weights.size(); ++i) {
    EXPECT_EQ(served_weights[i].name, direct_weights[i].name);
    EXPECT_TRUE(served_weights[i].bytes == direct_weights[i].bytes) << served_weights[i].name << " differs";
  }
}

TEST_F(ServiceTest, PredictWithADeadEnsembleIs503NamingTheRetrainWhileNoisyGdStillAnswers) {
  // One private record in every (shard, slice): each cyclic sequence loses its first slice, so
  // every shard dies.
  const storage::RecordAssigner assigner(storage::Dataset::open(dir_ / "train.h5").layout().seed);
  std::map<std::pair<int, int>, std::string> victims;
  for (const auto& id : private_ids()) {
    const auto a = assigner.assign(id, 2, 3);
    victims.emplace(std::pair(a.shard, a.slice), id);
  }
  ASSERT_EQ(victims.size(), 6u);
  std::vector<std::string> ids;
  for (const auto& [where, id] : victims) ids.push_back(id);
  auto service = serve();
  auto client = service.client(kToken);
  const json row = json::array({std::vector<int>(36, 100)});
  EXPECT_EQ(post(client, "/v1/predict", {{"inputs", row}}, 200).at("model"), "s3t");

  const auto submitted = post(client, "/v1/deletions", {{"records", ids}}, 202);
  ASSERT_EQ(wait_for_receipt(client, submitted.at("id")).at("status"), "completed");
  const auto models = json::parse(client.request("GET", "/v1/models").body);
  EXPECT_EQ(models.at("models").at(0).at("live_shards"), 0) << models.dump(2);

  const auto dead = post(client, "/v1/predict", {{"inputs", row}, {"model", "s3t"}}, 503);
  EXPECT_EQ(dead["error"]["code"], "unavailable") << dead.dump();
  EXPECT_EQ(dead["error"]["field"], "model");
  EXPECT_NE(dead["error"]["message"].get<std::string>().find("lethe retrain --job"), std::string::npos) << dead.dump();
  EXPECT_EQ(post(client, "/v1/predict", {{"inputs", row}, {"model", "noisy_gd"}}, 200).at("predictions").size(), 1u);
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

TEST_F(ServiceTest, RefusesAnOpenTokenFileAndASecondWriter) {
  ::chmod((dir_ / "token").c_str(), 0644);
  const auto open = run_command(lethe_cmd() + " serve --job " + job().string() + " --listen 127.0.0.1:0 --token-file " +
                                (dir_ / "token").string());
  EXPECT_EQ(open.status, 1);
  EXPECT_NE(open.out.find("chmod 600"), std::string::npos) << open.out;
  ::chmod((dir_ / "token").c_str(), 0600);

  auto service = serve();
  const auto second = run_command(lethe_cmd() + " delete --job " + job().string() + " --record " + private_ids().at(0));
  EXPECT_EQ(second.status, 1);
  EXPECT_NE(second.out.find("in use by lethe serve"), std::string::npos) << second.out;
  // The client goes through the service instead.
  const auto via = run_command(lethe_cmd() + " delete --server " + service.url() + " --token-file " + (dir_ / "token").string() +
                               " --record " + private_ids().at(0) + " --wait");
  ASSERT_EQ(via.status, 0) << via.out;
  EXPECT_EQ(json_of(via).at("status"), "completed");
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

// Issue 14, finding 10: whatever bytes a client sends, the answer is a 4xx naming what is wrong and
// where, never a 500 and never the JSON library's own text; predictions refuse values outside the
// dataset's instead of answering null probabilities.
TEST_F(ServiceTest, HostileBodiesAre400NamingTheFieldNeverA500) {
  auto service = serve();
  auto client = service.client(kToken);
  const auto expect_400 = [&](const http::Response& response, const std::string& field, const std::string& message) {
    EXPECT_EQ(response.status, 400) << response.body;
    const auto error = json::parse(response.body).at("error");
    EXPECT_EQ(error.at("code"), "invalid_request") << response.body;
    EXPECT_EQ(error.at("field"), field) << response.body;
    EXPECT_EQ(error.at("message"), message) << response.body;
  };
  const auto send = [&](const std::string& target, const std::string& body) { return client.request("POST", target, body); };

  // Deletions: bytes that are not UTF-8, a number beyond a double, syntax errors with their place.
  expect_400(send("/v1/deletions", "{\"records\": [\"\xff\xfe\"]}"), "body",
             "body: is not valid JSON: a byte that is not UTF-8 at line 1, column 15; JSON text must be UTF-8");
  expect_400(send("/v1/deletions", R"({"records": [1e999]})"), "body",
             "body: is not valid JSON: number out of range at line 1, column 14 (beyond a 64-bit float's range)");
  expect_400(send("/v1/deletions", "{not json"), "body", "body: is not valid JSON: syntax error at line 1, column 3");
  expect_400(send("/v1/deletions", "{\n  \"records\": [\"a\",]\n}"), "body",
             "body: is not valid JSON: syntax error at line 2, column 19");
  expect_400(send("/v1/deletions", ""), "body", "body: is empty; send a JSON object (docs/API.md)");
  expect_400(send("/v1/deletions", R"({"records": ["a"], "idempotency_key": 7})"), "idempotency_key",
             "idempotency_key: must be a string");

  // Predictions: values outside the dataset's (uint8 pixels), a non-string model, JSON out of range.
  std::vector<double> pixels(36, 100);
  pixels[17] = 1e300;
  expect_400(send("/v1/predict", json{{"inputs", {pixels}}}.dump()), "inputs[0][17]",
             "inputs[0][17]: is 1e+300; this dataset's values are pixels from 0 to 255");
  pixels[17] = 100;
  pixels[3] = -1;
  expect_400(send("/v1/predict", json{{"inputs", {std::vector<double>(36, 7), pixels}}}.dump()), "inputs[1][3]",
             "inputs[1][3]: is -1; this dataset's values are pixels from 0 to 255");
  json row = json::array({std::vector<int>(36, 100)});
  row[0][5] = "x";
  expect_400(send("/v1/predict", json{{"inputs", row}}.dump()), "inputs[0][5]", "inputs[0][5]: must be a number");
  row[0][5] = 100;
  const auto model = send("/v1/predict", json{{"inputs", row}, {"model", 7}}.dump());
  EXPECT_EQ(model.status, 400) << model.body;
  EXPECT_EQ(json::parse(model.body)["error"]["field"], "model") << model.body;
  std::string huge = json{{"inputs", row}}.dump();
  huge.replace(huge.find("100"), 3, "1e999");
  expect_400(send("/v1/predict", huge), "body",
             "body: is not valid JSON: number out of range at line 1, column 13 (beyond a 64-bit float's range)");
  // The binary form: float32 rows with a value no pixel has.
  std::vector<float> floats(36, 10.0F);
  floats[30] = 1e30F;
  const std::string bytes(reinterpret_cast<const char*>(floats.data()), floats.size() * sizeof(float));
  expect_400(client.request("POST", "/v1/predict", bytes, {{"Content-Type", "application/octet-stream"}, {"X-Lethe-Dtype", "float32"}}),
             "body", "body: row 0, value 30 is 1.0000000150474662e+30; this dataset's values are pixels from 0 to 255");

  // Bytes that are not UTF-8 in a path or a header, echoed in the answer: replaced, not a 500.
  const auto unknown = client.request("GET", "/v1/deletions/del-\xff\xfe");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(json::parse(unknown.body)["error"]["message"], "no deletion request with id 'del-\xEF\xBF\xBD\xEF\xBF\xBD'");
  EXPECT_EQ(client.request("GET", "/v1/retrain/\xff").status, 404);
  EXPECT_EQ(client.request("GET", "/v1/\xff").status, 404);
  const auto dtype = client.request("POST", "/v1/predict", std::string(36, '\0'),
                                    {{"Content-Type", "application/octet-stream"}, {"X-Lethe-Dtype", "\xff"}});
  EXPECT_EQ(dtype.status, 400) << dtype.body;
  EXPECT_EQ(json::parse(dtype.body)["error"]["field"], "X-Lethe-Dtype");

  // Nothing above leaked the library's text, and nothing was a 500; the service still works.
  const auto metrics = client.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("lethe_http_responses_total{class=\"5xx\"} 0\n"), std::string::npos) << metrics;
  EXPECT_EQ(json::parse(send("/v1/predict", json{{"inputs", row}}.dump()).body).at("predictions").size(), 1u);
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

// Issue 14, finding 6: connections that never send a request cannot lock out /healthz or the token
// holder; the limit is `lethe serve --max-connections` and /metrics counts the evictions.
TEST_F(ServiceTest, IdleConnectionsCannotLockOutHealthzOrTheTokenHolder) {
  auto service = serve(1, "--max-connections 4 --header-timeout 60");
  std::vector<std::unique_ptr<http::testing::RawConnection>> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(std::make_unique<http::testing::RawConnection>(service.port()));

  auto anonymous = http::Client(http::parse_url(service.url()), std::nullopt, std::chrono::seconds(10));
  const auto health = anonymous.request("GET", "/healthz");
  EXPECT_EQ(health.status, 200) << health.body;
  EXPECT_EQ(json::parse(health.body).at("status"), "ok") << health.body;
  auto client = service.client(kToken);
  EXPECT_EQ(client.request("GET", "/v1/models").status, 200);
  // The first two idle connections made room for them.
  for (int i = 0; i < 2; ++i) {
    (void)idle[static_cast<std::size_t>(i)]->read_until_closed(std::chrono::seconds(10));
    EXPECT_TRUE(idle[static_cast<std::size_t>(i)]->closed()) << "idle connection " << i;
  }
  const auto metrics = client.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("lethe_http_connections_evicted_total 2\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("lethe_http_connections_refused_total 0\n"), std::string::npos) << metrics;
  EXPECT_EQ(service.terminate(), 0) << service.log_text();
}

}  // namespace
}  // namespace lethe::test
