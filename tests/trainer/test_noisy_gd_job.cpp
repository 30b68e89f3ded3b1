// A job's noisy-GD model end to end: `lethe train` with noisy GD only and beside S3T, the same
// checkpoint digest under mpiexec -n 1 and -n 2, `lethe eval` per model, resume, and the API the
// deletion coordinator uses (shares over ranks, loading the manifest's version, committing).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli_job_fixture.h"
#include "comm/in_process.h"
#include "storage/checkpoint_store.h"
#include "storage/erasure.h"
#include "storage/dataset.h"
#include "test_noisy_gd_fixtures.h"
#include "trainer/frozen_backbone.h"
#include "trainer/job_manifest.h"
#include "trainer/noisy_gd_job.h"

namespace {

namespace fs = std::filesystem;
using lethe::test::json_of;
using lethe::test::lethe_cmd;
using lethe::test::run_command;
using lethe::trainer::NoisyGdShare;
using nlohmann::json;

constexpr const char* kNoisyGd = "noisy_gd: {lambda: 0.05, sigma: 0.02, steps: 60}\n";

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  if (at == std::string::npos) throw std::runtime_error("'" + from + "' not in:\n" + text);
  return text.replace(at, from.size(), to);
}

// The manifest as stored (JSON), to assert on its content.
json manifest_json(const fs::path& job) { return lethe::trainer::encode_job_manifest(lethe::trainer::read_job_manifest(job)); }

// One rank's share of a job's noisy-GD records, read as the route reads it.
NoisyGdShare share_of(const fs::path& job, lethe::comm::Communicator& comm) {
  const auto manifest = lethe::trainer::read_job_manifest(job);
  lethe::trainer::FrozenBackbone backbone(manifest.model, manifest.backbone_path(), "cpu");
  const auto dataset = lethe::storage::Dataset::open(manifest.dataset.path);
  return lethe::trainer::load_noisy_gd_share(dataset, backbone, {}, comm);
}

class NoisyGdJob : public lethe::test::CliJobTest {
 protected:
  // S3T on (2 shards x 3 slices x 2 sequences, 1 epoch) or off, plus the noisy_gd section.
  fs::path write_job(const std::string& name, bool with_s3t) {
    std::string text = lethe::test::job_config_text({2, 3, 2, 1}) + kNoisyGd;
    if (!with_s3t) text = replace(text, "s3t: {", "s3t: {enabled: false, ");
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  // The ids of the training dataset's live non-public records.
  std::set<std::string> trainable_ids() const {
    const auto dataset = lethe::storage::Dataset::open(dir_ / "train.h5");
    lethe::storage::RecordFilter filter;
    filter.public_records = lethe::storage::PublicRecords::exclude;
    std::set<std::string> ids;
    for (const auto row : dataset.select(filter)) ids.emplace(dataset.id(row));
    return ids;
  }
};

TEST_F(NoisyGdJob, NoisyGdOnlyJobTrainsCommitsAndEvaluates) {
  const auto config = write_job("job.yaml", false);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto t = train(config, dir_ / "run");
  ASSERT_EQ(t.status, 0) << t.out;
  const auto tj = json_of(t);
  EXPECT_EQ(tj.at("models"), json::array({"noisy_gd"}));
  EXPECT_FALSE(tj.contains("s3t")) << "no S3T";
  const auto& report = tj.at("noisy_gd");
  const auto n = static_cast<std::int64_t>(trainable_ids().size());
  EXPECT_EQ(report.at("records"), n);
  EXPECT_EQ(report.at("steps"), 60);
  EXPECT_EQ(report.at("version"), 1);
  EXPECT_GT(report.at("train_accuracy").get<double>(), 0.8) << t.out;

  const auto manifest = manifest_json(dir_ / "run");
  EXPECT_EQ(manifest.at("status"), "trained");
  EXPECT_FALSE(manifest.at("routes").contains("s3t"));
  const auto& section = manifest.at("routes").at("noisy_gd");
  EXPECT_EQ(section.at("series"), lethe::trainer::kNoisyGdSeries);
  EXPECT_EQ(section.at("version"), 1);
  EXPECT_EQ(section.at("records"), n);
  EXPECT_EQ(section.at("digest"), report.at("digest"));
  EXPECT_DOUBLE_EQ(section.at("delta").get<double>(), 1.0 / static_cast<double>(n)) << "default delta 1/n";
  EXPECT_EQ(section.at("certified"), true);
  for (const char* f : {"config.yaml", "config.json", "backbone.h5"}) EXPECT_TRUE(fs::exists(dir_ / "run" / f)) << f;
  const lethe::storage::CheckpointStore store(dir_ / "run" / "checkpoints");
  EXPECT_EQ(store.names(), std::vector<std::string>{lethe::trainer::kNoisyGdSeries});
  const auto versions = store.versions(lethe::trainer::kNoisyGdSeries);
  ASSERT_EQ(versions.size(), 1u);
  EXPECT_EQ(versions[0].digest, section.at("digest"));
  EXPECT_EQ(versions[0].metadata.at("job").at("config_digest"), manifest.at("config_digest"));
  EXPECT_EQ(versions[0].metadata.at("config").at("train_steps"), 60);

  const auto e = run_command(lethe_cmd() + " eval --job " + (dir_ / "run").string());
  ASSERT_EQ(e.status, 0) << e.out;
  const auto ej = json_of(e);
  EXPECT_EQ(ej.at("records"), 150);
  ASSERT_EQ(ej.at("models").size(), 1u) << e.out;
  const auto& model = ej.at("models")[0];
  EXPECT_EQ(model.at("name"), "noisy_gd");
  EXPECT_EQ(model.at("version"), 1);
  EXPECT_GT(model.at("accuracy").get<double>(), 0.8) << e.out;
  EXPECT_EQ(ej.at("accuracy"), model.at("accuracy")) << "without S3T the job's accuracy is noisy GD's";

  // Again without --resume: refused, nothing touched; with --resume: the committed model is kept.
  const auto before = lethe::test::snapshot(dir_ / "run");
  const auto again = train(config, dir_ / "run");
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  EXPECT_TRUE(lethe::test::snapshot(dir_ / "run") == before) << "a refused run changed the job directory";
  const auto resumed = train(config, dir_ / "run", 1, "--resume");
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  EXPECT_EQ(json_of(resumed).at("noisy_gd").at("resumed"), true);
  EXPECT_EQ(json_of(resumed).at("noisy_gd").at("digest"), report.at("digest"));
  EXPECT_EQ(store.versions(lethe::trainer::kNoisyGdSeries).size(), 1u);
}

TEST_F(NoisyGdJob, BesideS3TBothModelsTrainAndEvalReportsEach) {
  const auto config = write_job("job.yaml", true);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto t = train(config, dir_ / "run");
  ASSERT_EQ(t.status, 0) << t.out;
  const auto tj = json_of(t);
  EXPECT_EQ(tj.at("models"), json::array({"s3t", "noisy_gd"}));
  EXPECT_EQ(tj.at("s3t").at("digests").size(), 4u);
  const auto manifest = manifest_json(dir_ / "run");
  EXPECT_EQ(manifest.at("routes").at("s3t").at("shards").size(), 2u);
  EXPECT_EQ(manifest.at("routes").at("noisy_gd").at("digest"), tj.at("noisy_gd").at("digest"));

  const auto e = run_command(lethe_cmd() + " eval --job " + (dir_ / "run").string());
  ASSERT_EQ(e.status, 0) << e.out;
  const auto ej = json_of(e);
  ASSERT_EQ(ej.at("models").size(), 2u) << e.out;
  EXPECT_EQ(ej.at("models")[0].at("name"), "s3t");
  EXPECT_EQ(ej.at("models")[1].at("name"), "noisy_gd");
  EXPECT_EQ(ej.at("accuracy"), ej.at("models")[0].at("accuracy")) << "with S3T the job's accuracy is the ensemble's";
  EXPECT_GT(ej.at("models")[1].at("accuracy").get<double>(), 0.8) << e.out;
}

TEST_F(NoisyGdJob, SameCheckpointDigestUnderOneAndTwoMpiRanks) {
  const auto config = write_job("job.yaml", false);
  ASSERT_EQ(pretrain(config).status, 0);
  std::vector<std::string> digests;
  for (const int ranks : {1, 2}) {
    auto job = dir_ / "n";
    job += std::to_string(ranks);  // not "n" + to_string(): GCC 12 misreports a memcpy overflow there
    const auto r = train(config, job, ranks);
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = json_of(r);
    EXPECT_EQ(j.at("ranks"), ranks);
    digests.push_back(j.at("noisy_gd").at("digest").get<std::string>());
    const lethe::storage::CheckpointStore store(job / "checkpoints");
    EXPECT_EQ(store.versions(lethe::trainer::kNoisyGdSeries).at(0).digest, digests.back());
  }
  EXPECT_EQ(digests[0].size(), 64u);
  EXPECT_EQ(digests[0], digests[1]) << "the weights differ between 1 and 2 ranks";
}

TEST_F(NoisyGdJob, SharesPartitionTheLiveNonPublicRecordsAndTheApiRoundTrips) {
  const auto config = write_job("job.yaml", false);
  ASSERT_EQ(pretrain(config).status, 0);
  ASSERT_EQ(train(config, dir_ / "run").status, 0);
  const auto job = dir_ / "run";
  // A tombstoned record is not live: no share may hold it. Erased as the job's router erases after a
  // deletion (the storage call; `lethe erase` refuses a job's dataset).
  const auto erased = *trainable_ids().begin();
  const std::vector<std::string> to_erase = {erased};
  ASSERT_EQ(lethe::storage::erase_records(dir_ / "train.h5", to_erase).erased.size(), 1u);
  const auto expected = trainable_ids();
  ASSERT_EQ(expected.count(erased), 0u);

  std::vector<NoisyGdShare> shares(2);
  lethe::comm::run_in_process(2, [&](lethe::comm::Communicator& comm) {
    shares[static_cast<std::size_t>(comm.rank())] = share_of(job, comm);
  });
  std::set<std::string> all;
  const auto dataset = lethe::storage::Dataset::open(dir_ / "train.h5");
  std::map<std::string, std::int64_t> label_of;
  std::vector<std::uint64_t> rows(dataset.size());
  for (std::uint64_t row = 0; row < rows.size(); ++row) rows[row] = row;
  const auto labels = dataset.labels_of(rows);
  for (const auto row : rows) label_of[std::string(dataset.id(row))] = labels[row];
  for (const auto& share : shares) {
    ASSERT_EQ(share.data.features.size(0), static_cast<std::int64_t>(share.ids.size()));
    ASSERT_EQ(share.data.labels.size(0), static_cast<std::int64_t>(share.ids.size()));
    EXPECT_EQ(share.data.features.size(1), 16 + 1) << "top block width + bias input";
    EXPECT_EQ(share.data.features.scalar_type(), torch::kFloat64);
    EXPECT_LT((share.data.features.norm(2, {1}) - 1).abs().max().item<double>(), 1e-12) << "normalized";
    for (std::size_t i = 0; i < share.ids.size(); ++i) {
      EXPECT_TRUE(all.insert(share.ids[i]).second) << share.ids[i] << " is in both shares";
      EXPECT_EQ(share.data.labels[static_cast<std::int64_t>(i)].item<std::int64_t>(), label_of.at(share.ids[i]))
          << "labels aligned with ids";
    }
  }
  EXPECT_EQ(all, expected) << "the shares' union is every live non-public record";
  for (int r = 0; r < 2; ++r) {
    EXPECT_FALSE(shares[static_cast<std::size_t>(r)].rows.empty()) << "360 rows make two blocks, one per rank";
    for (const auto row : shares[static_cast<std::size_t>(r)].rows)
      EXPECT_EQ(static_cast<int>((row / lethe::trainer::kNoisyGdBlockRows) % 2), r) << "row " << row << " is in the other rank's block";
  }

  // One rank alone holds every record, with the same features, bit for bit, as the two shares.
  auto world = lethe::comm::make_in_process_world(1);
  const auto whole = share_of(job, *world.front());
  ASSERT_EQ(whole.ids.size(), expected.size());
  std::map<std::string, at::Tensor> shared_feature;
  for (const auto& share : shares) {
    for (std::size_t i = 0; i < share.ids.size(); ++i) shared_feature[share.ids[i]] = share.data.features[static_cast<std::int64_t>(i)];
  }
  for (std::size_t i = 0; i < whole.ids.size(); ++i) {
    EXPECT_TRUE(torch::equal(whole.data.features[static_cast<std::int64_t>(i)], shared_feature.at(whole.ids[i]))) << whole.ids[i];
  }

  // The manifest's version loads; a commit adds a version and returns the section naming it.
  auto manifest = lethe::trainer::read_job_manifest(job);
  auto model = lethe::trainer::load_noisy_gd_model(manifest, *world.front());
  const lethe::storage::CheckpointStore store(job / "checkpoints");
  EXPECT_EQ(model.accountant().current_n(), static_cast<std::int64_t>(expected.size()) + 1) << "trained before the erase";
  const auto receipt = model.delete_records(whole.data);
  EXPECT_EQ(receipt.deleted, 1);
  const auto section = lethe::trainer::commit_noisy_gd_model(model, manifest);
  EXPECT_EQ(section.version, 2);
  EXPECT_EQ(section.digest, store.versions(lethe::trainer::kNoisyGdSeries).back().digest);
  EXPECT_EQ(section.records, static_cast<std::int64_t>(expected.size()));
  EXPECT_EQ(manifest_json(job).at("routes").at("noisy_gd").at("version"), 1) << "the caller commits the manifest";
  const auto still_v1 = lethe::trainer::load_noisy_gd_model(lethe::trainer::read_job_manifest(job), *world.front());
  EXPECT_FALSE(torch::equal(still_v1.weights(), model.weights())) << "loads the manifest's version, not the latest";
  manifest.routes[lethe::trainer::kNoisyGdRouteName] = lethe::trainer::encode_noisy_gd_section(section);
  lethe::trainer::commit_job_manifest(manifest);
  EXPECT_TRUE(torch::equal(
      lethe::trainer::load_noisy_gd_model(lethe::trainer::read_job_manifest(job), *world.front()).weights(), model.weights()));
  EXPECT_EQ(store.versions(lethe::trainer::kNoisyGdSeries).size(), 2u);
}

TEST_F(NoisyGdJob, BenchmarkRunsOnTwoRanksWithNothingWrong) {
  const auto config = write_job("job.yaml", false);
  ASSERT_EQ(pretrain(config).status, 0);
  ASSERT_EQ(train(config, dir_ / "run").status, 0);
  const auto out = dir_ / "bench.json";
  const auto r = run_command(lethe::test::mpiexec(2) + lethe_cmd() + " bench noisy-gd --job " + (dir_ / "run").string() +
                             " --deletions 1,200 --json " + out.string());
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("#wrong: 0"), std::string::npos) << r.out;
  const auto j = json::parse(std::ifstream(out));
  EXPECT_EQ(j.at("ranks"), 2);
  EXPECT_EQ(j.at("wrong"), 0) << "1 rank, 2 ranks and the committed model agree bit for bit";
  EXPECT_GT(j.at("speedup").get<double>(), 0);
  EXPECT_GT(j.at("test_accuracy").get<double>(), 0.8);
  ASSERT_EQ(j.at("deletions").size(), 2u);
  EXPECT_EQ(j.at("deletions")[0].at("route"), "noisy_steps");
  EXPECT_LT(j.at("deletions")[0].at("unlearning_steps").get<int>(), 60);
  EXPECT_LE(j.at("deletions")[0].at("epsilon").get<double>(), 1.0);
  EXPECT_EQ(j.at("deletions")[1].at("route"), "retrain") << "deleting most records costs more than retraining";
  const auto bad = run_command(lethe_cmd() + " bench noisy-gd --job " + (dir_ / "run").string() + " --deletions 100000");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("--deletions"), std::string::npos) << bad.out;
}

TEST_F(NoisyGdJob, JobWithoutNoisyGdSaysSoWhenAskedForItsModel) {
  const auto config = write_job("job.yaml", true);
  std::ofstream(config) << lethe::test::job_config_text({2, 3, 2, 1});  // S3T only
  ASSERT_EQ(pretrain(config).status, 0);
  ASSERT_EQ(train(config, dir_ / "run").status, 0);
  auto world = lethe::comm::make_in_process_world(1);
  try {
    (void)lethe::trainer::load_noisy_gd_model(lethe::trainer::read_job_manifest(dir_ / "run"), *world.front());
    FAIL() << "loaded a model the job does not have";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("noisy_gd section"), std::string::npos) << e.what();
  }
  const auto e = run_command(lethe_cmd() + " eval --job " + (dir_ / "run").string());
  ASSERT_EQ(e.status, 0) << e.out;
  EXPECT_EQ(json_of(e).at("models").size(), 1u);
}

// The gradient sums are exact, so any split of the records over ranks, round-robin or contiguous,
// uneven or with an empty rank, trains the same bits (the S3T digests' guarantee, for noisy GD).
TEST(NoisyGdExactSums, BitIdenticalModelsForAnySplitOverRanks) {
  namespace fixtures = lethe::trainer::testing;
  const auto data = fixtures::synthetic_data(203, 41, 0.2);
  auto one = lethe::comm::make_in_process_world(1);
  lethe::trainer::NoisyGdModel reference(fixtures::small_config(3), *one.front());
  reference.train(data);
  for (const int world : {2, 3, 5}) {
    for (const bool round_robin : {true, false}) {
      std::vector<at::Tensor> weights(static_cast<std::size_t>(world));
      lethe::comm::run_in_process(world, [&](lethe::comm::Communicator& comm) {
        // 203 rows: every split is uneven.
        const auto share = round_robin ? lethe::trainer::LocalData{data.features.slice(0, comm.rank(), c10::nullopt, world).contiguous(),
                                                                   data.labels.slice(0, comm.rank(), c10::nullopt, world).contiguous()}
                                       : fixtures::share_of(data, comm.rank(), world);
        lethe::trainer::NoisyGdModel model(fixtures::small_config(3), comm);
        model.train(share);
        weights[static_cast<std::size_t>(comm.rank())] = model.weights().clone();
      });
      for (const auto& w : weights)
        EXPECT_TRUE(torch::equal(w, reference.weights())) << world << " ranks, round robin " << round_robin;
    }
  }
  // A rank without records still takes part in every step.
  std::vector<at::Tensor> weights(2);
  lethe::comm::run_in_process(2, [&](lethe::comm::Communicator& comm) {
    const auto share = comm.rank() == 0 ? data : fixtures::rows_of(data, 0, 0);
    lethe::trainer::NoisyGdModel model(fixtures::small_config(3), comm);
    model.train(share);
    weights[static_cast<std::size_t>(comm.rank())] = model.weights().clone();
  });
  EXPECT_TRUE(torch::equal(weights[1], reference.weights()));
}

TEST(NoisyGdExactSums, FeaturesOutsideTheUnitBallAreRefused) {
  namespace fixtures = lethe::trainer::testing;
  auto one = lethe::comm::make_in_process_world(1);
  lethe::trainer::NoisyGdModel model(fixtures::small_config(3), *one.front());
  auto data = fixtures::synthetic_data(20, 1);
  data.features = data.features * 3.0;  // not from normalize_features: |x| > 1 breaks the bound M
  try {
    (void)model.full_gradient(data);
    FAIL() << "a gradient on unnormalized features";
  } catch (const lethe::trainer::NoisyGdError& e) {
    EXPECT_NE(std::string(e.what()).find("normalize_features"), std::string::npos) << e.what();
  }
}

}  // namespace
