// End to end: `lethe serve` on a job whose blocks sit on a frozen TorchScript trunk (model.trunk):
// predictions through the trunk by both models, in JSON and binary alike, and a deletion that both
// routes apply (the noisy-GD route recomputes features through the trunk) with the bytes erased.
#include <gtest/gtest.h>

#include "http/client.h"
#include "service_process.h"
#include "tests/trainer/cli_job_fixture.h"

namespace lethe::test {
namespace {

using nlohmann::json;

constexpr const char* kToken = "0123456789abcdef-trunk-service-token";

class TrunkServiceTest : public CliJobTest {};

TEST_F(TrunkServiceTest, PredictsThroughTheTrunkAndDeletesByBothRoutes) {
  fs::copy_file(fs::path(LETHE_TEST_DATA_DIR) / "trunk_conv.pt", dir_ / "trunk.pt");
  std::ofstream(dir_ / "job.yaml")
      << "dataset: train.h5\ntest_dataset: test.h5\nbackbone: backbone.h5\njob_dir: run\nseed: 11\n"
      << "s3t: {shards: 2, slices: 2, sequences: 2}\n"
      << "model: {architecture: convnet, trunk: trunk.pt, conv_widths: [8], widths: [16, 12], lora_rank: 2, "
         "lora_alpha: 4, num_classes: 3}\n"
      << "training: {epochs: 1, batch_size: 16, learning_rate: 0.005}\n"
      << "pretrain: {epochs: 4, batch_size: 16, learning_rate: 0.01}\n"
      << "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 40, target_epsilon: 1.0}\n";
  const auto pre = pretrain(dir_ / "job.yaml");
  ASSERT_EQ(pre.status, 0) << pre.out;
  const auto trained = train(dir_ / "job.yaml", dir_ / "run");
  ASSERT_EQ(trained.status, 0) << trained.out;
  write_token_file(dir_ / "token", kToken);
  const auto trunk_bytes = read_text(dir_ / "run" / "trunk.pt");

  auto service = serve_job(dir_ / "run", dir_ / "token", dir_ / "serve.log", "");
  auto client = service.client(kToken);

  // Both models answer through the trunk, and the binary body gives the JSON body's answer.
  std::string rows;
  json inputs = json::array();
  for (int r = 0; r < 3; ++r) {
    std::vector<int> values(36);
    for (int v = 0; v < 36; ++v) values[static_cast<std::size_t>(v)] = ((v / 6) / 2 == r ? 200 : 20);
    for (const int v : values) rows.push_back(static_cast<char>(v));
    inputs.push_back(values);
  }
  for (const char* model : {"s3t", "noisy_gd"}) {
    const auto response = client.request("POST", "/v1/predict", json{{"inputs", inputs}, {"model", model}}.dump());
    ASSERT_EQ(response.status, 200) << response.body;
    const auto as_json = json::parse(response.body);
    ASSERT_EQ(as_json.at("predictions").size(), 3u);
    // Each row is a clean example of its class (the fixture's classes brighten their band of rows).
    for (int r = 0; r < 3; ++r) EXPECT_EQ(as_json["predictions"][r]["class"], r) << model << " row " << r;
    const auto binary = client.request("POST", "/v1/predict", rows,
                                       {{"Content-Type", "application/octet-stream"}, {"X-Lethe-Dtype", "uint8"}, {"X-Lethe-Model", model}});
    ASSERT_EQ(binary.status, 200) << binary.body;
    EXPECT_EQ(json::parse(binary.body).at("predictions"), as_json.at("predictions")) << model;
  }

  const auto victim = live_private_ids(dir_ / "train.h5").at(5);
  const auto submitted = client.request("POST", "/v1/deletions", json{{"records", {victim}}}.dump());
  ASSERT_EQ(submitted.status, 202) << submitted.body;
  const auto receipt = wait_for_receipt(client, json::parse(submitted.body).at("id"));
  ASSERT_EQ(receipt.at("status"), "completed") << receipt.dump(2);
  EXPECT_EQ(receipt.at("records_erased"), 1);
  ASSERT_EQ(receipt.at("models").size(), 2u) << receipt.dump(2);
  EXPECT_EQ(receipt["models"][0]["route"], "slice_deactivation");
  EXPECT_EQ(receipt["models"][1]["route"], "noisy_gd");
  EXPECT_TRUE(receipt["models"][1]["certified"].get<bool>()) << receipt.dump(2);
  EXPECT_EQ(client.request("POST", "/v1/predict", json{{"inputs", inputs}, {"model", "noisy_gd"}}.dump()).status, 200);
  EXPECT_EQ(read_text(dir_ / "run" / "trunk.pt"), trunk_bytes) << "serving must not touch the frozen trunk";
}

}  // namespace
}  // namespace lethe::test
