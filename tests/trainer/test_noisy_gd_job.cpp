// A job's noisy-GD model end to end: `lethe train` with noisy GD only and beside S3T, the same
// checkpoint digest under mpiexec -n 1 and -n 2, `lethe eval` per model, resume, and the API the
// deletion coordinator uses (shares over ranks, loading the manifest's version, committing).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
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
  lethe::trainer::FrozenBackbone backbone(manifest.model, manifest.backbone_path(), manifest.trunk_path(), "cpu");
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
    EXPECT_EQ(share.data.block_ends, std::vector<std::int64_t>{static_cast<std::int64_t>(share.ids.size())})
        << "one block of dataset rows per rank";
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
  EXPECT_EQ(whole.data.block_ends, (std::vector<std::int64_t>{static_cast<std::int64_t>(shares[0].ids.size()),
                                                               static_cast<std::int64_t>(expected.size())}));
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

// Blocks of the data the split tests use: full ones of 256 rows, shorter ones (a block whose
// records were partly deleted, down to 1 row) and one of 300 rows (cut into tiles of 256 and 44).
const std::vector<std::int64_t> kBlockRows{256, 256, 100, 256, 37, 256, 1, 300, 180};

// The blocks `blocks` of `data` (block k: rows [ends[k - 1], ends[k])), in that order, as one
// rank's share with its block ends.
lethe::trainer::LocalData blocks_of(const lethe::trainer::LocalData& data, const std::vector<std::int64_t>& ends,
                                    const std::vector<std::size_t>& blocks) {
  std::vector<std::int64_t> rows;
  lethe::trainer::LocalData out;
  for (const auto b : blocks) {
    for (std::int64_t row = b == 0 ? 0 : ends[b - 1]; row < ends[b]; ++row) rows.push_back(row);
    out.block_ends.push_back(static_cast<std::int64_t>(rows.size()));
  }
  const auto index = torch::tensor(rows, torch::kInt64);
  out.features = data.features.index_select(0, index).contiguous();
  out.labels = data.labels.index_select(0, index).contiguous();
  return out;
}

// The weights after training on every rank of `world`, rank r holding the blocks assign(r).
template <typename Assign>
std::vector<at::Tensor> train_on_ranks(const lethe::trainer::LocalData& data, const std::vector<std::int64_t>& ends,
                                       int world, Assign&& assign) {
  std::vector<at::Tensor> weights(static_cast<std::size_t>(world));
  lethe::comm::run_in_process(world, [&](lethe::comm::Communicator& comm) {
    const auto share = blocks_of(data, ends, assign(comm.rank()));
    lethe::trainer::NoisyGdModel model(lethe::trainer::testing::small_config(3), comm);
    model.train(share);
    weights[static_cast<std::size_t>(comm.rank())] = model.weights().clone();
  });
  return weights;
}

// Each block's gradient is computed alone and the sums are exact, so any assignment of whole
// blocks to ranks, round-robin or contiguous, uneven, in any order or with an empty rank, trains
// the same bits (the S3T digests' guarantee, for noisy GD).
TEST(NoisyGdExactSums, BitIdenticalModelsForAnyAssignmentOfWholeBlocksToRanks) {
  namespace fixtures = lethe::trainer::testing;
  std::vector<std::int64_t> ends;
  for (const auto rows : kBlockRows) ends.push_back((ends.empty() ? 0 : ends.back()) + rows);
  const std::size_t blocks = ends.size();
  auto data = fixtures::synthetic_data(ends.back(), 41, 0.2);
  data.block_ends = ends;
  auto one = lethe::comm::make_in_process_world(1);
  lethe::trainer::NoisyGdModel reference(fixtures::small_config(3), *one.front());
  reference.train(data);

  for (const int world : {2, 3, 5}) {
    const auto n_ranks = static_cast<std::size_t>(world);
    const std::map<std::string, std::function<std::vector<std::size_t>(int)>> splits{
        {"round robin",
         [&](int rank) {
           std::vector<std::size_t> mine;
           for (std::size_t b = static_cast<std::size_t>(rank); b < blocks; b += n_ranks) mine.push_back(b);
           return mine;
         }},
        {"contiguous",
         [&](int rank) {
           std::vector<std::size_t> mine;
           const auto r = static_cast<std::size_t>(rank);
           for (std::size_t b = blocks * r / n_ranks; b < blocks * (r + 1) / n_ranks; ++b) mine.push_back(b);
           return mine;
         }},
        {"uneven and reversed, ranks past 1 empty",  // rank 0 one block, rank 1 the rest backwards
         [&](int rank) {
           std::vector<std::size_t> mine;
           if (rank == 0) mine.push_back(3);
           if (rank == 1)
             for (std::size_t b = blocks; b-- > 0;)
               if (b != 3) mine.push_back(b);
           return mine;
         }},
    };
    for (const auto& [name, assign] : splits) {
      for (const auto& w : train_on_ranks(data, ends, world, assign))
        EXPECT_TRUE(torch::equal(w, reference.weights())) << world << " ranks, " << name;
    }
  }
  // A rank without records still takes part in every step.
  std::vector<std::size_t> all(blocks);
  for (std::size_t b = 0; b < blocks; ++b) all[b] = b;
  for (const auto& w : train_on_ranks(data, ends, 2, [&](int rank) { return rank == 0 ? all : std::vector<std::size_t>{}; }))
    EXPECT_TRUE(torch::equal(w, reference.weights())) << "an empty rank";

  // A block of more rows than a tile is cut into tiles from its first row: blocks of 256 rows
  // and one of 600 rows give the same bits; so do no block ends and one block of every row.
  auto rows_600 = fixtures::rows_of(data, 0, 600);
  lethe::trainer::NoisyGdModel one_block(fixtures::small_config(3), *one.front());
  one_block.train(rows_600);
  for (const auto& block_ends : {std::vector<std::int64_t>{600}, std::vector<std::int64_t>{256, 512, 600}}) {
    rows_600.block_ends = block_ends;
    lethe::trainer::NoisyGdModel model(fixtures::small_config(3), *one.front());
    model.train(rows_600);
    EXPECT_TRUE(torch::equal(model.weights(), one_block.weights())) << block_ends.size() << " blocks";
  }
  rows_600.block_ends = {100, 600};  // other tiles: other float roundings, the same model up to them
  lethe::trainer::NoisyGdModel other_tiles(fixtures::small_config(3), *one.front());
  other_tiles.train(rows_600);
  EXPECT_LT((other_tiles.weights() - one_block.weights()).abs().max().item<double>(), 1e-12);
}

TEST(NoisyGdExactSums, BlockEndsFollowTheDatasetRowsAndSurviveDeletions) {
  using lethe::trainer::noisy_gd_block_ends;
  using Ends = std::vector<std::int64_t>;
  EXPECT_EQ(noisy_gd_block_ends(std::vector<std::uint64_t>{}), Ends{});
  EXPECT_EQ(noisy_gd_block_ends(std::vector<std::uint64_t>{0, 1, 255, 256, 300, 512, 1025}), (Ends{3, 5, 6, 7}));
  EXPECT_EQ(noisy_gd_block_ends(std::vector<std::uint64_t>{768, 1000, 1023}), Ends{3}) << "rank 1 of 2: block 3 only";

  NoisyGdShare share;
  share.rows = {0, 2, 255, 256, 300, 600, 1000};
  for (const auto row : share.rows) share.ids.push_back("r" + std::to_string(row));
  const auto rows = static_cast<std::int64_t>(share.rows.size());
  share.data.features = torch::arange(rows * 2, torch::kFloat64).reshape({rows, 2});
  share.data.labels = torch::arange(rows, torch::kInt64);
  share.data.block_ends = noisy_gd_block_ends(share.rows);
  ASSERT_EQ(share.data.block_ends, (Ends{3, 5, 6, 7}));
  const auto kept = lethe::trainer::without(share, {"r2", "r256", "r600"});
  EXPECT_EQ(kept.rows, (std::vector<std::uint64_t>{0, 255, 300, 1000}));
  EXPECT_EQ(kept.data.block_ends, (Ends{2, 3, 4})) << "block 2 lost its only record";
  EXPECT_TRUE(torch::equal(kept.data.labels, torch::tensor({0, 2, 4, 6}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(lethe::trainer::without(share, {"r0", "r2", "r255", "r256", "r300", "r600", "r1000"}).data.labels,
                           torch::zeros({0}, torch::kInt64)));
  EXPECT_TRUE(lethe::trainer::without(share, {"r0", "r2", "r255", "r256", "r300", "r600", "r1000"}).data.block_ends.empty());
}

TEST(NoisyGdExactSums, BlockEndsThatDoNotCoverTheRowsAreRefused) {
  namespace fixtures = lethe::trainer::testing;
  auto one = lethe::comm::make_in_process_world(1);
  lethe::trainer::NoisyGdModel model(fixtures::small_config(3), *one.front());
  auto data = fixtures::synthetic_data(20, 1);
  for (const auto& ends : {std::vector<std::int64_t>{10}, std::vector<std::int64_t>{0, 20},
                           std::vector<std::int64_t>{10, 10, 20}, std::vector<std::int64_t>{10, 21}}) {
    data.block_ends = ends;
    EXPECT_THROW((void)model.full_gradient(data), lethe::trainer::NoisyGdError) << ends.size() << " ends";
  }
  data.block_ends = {5, 20};
  EXPECT_NO_THROW((void)model.full_gradient(data));
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
