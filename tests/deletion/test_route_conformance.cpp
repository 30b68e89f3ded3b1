// The deletion-route contract (trainer/model_route.h), run on every registered route through the
// coordinator's router (deletion/job_router.h), as nccl-tests runs every collective through one
// harness: a deletion makes the committed model forget the record and purges the checkpoints it
// influenced; a reload gives the same state; a crash before the manifest commit leaves the old
// state; a failure at any commit (a full disk) or on any rank leaves memory and disk as they were,
// and the retry is exact. A new route is done when it has an entry in routes_under_test() and
// this suite passes.
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "comm/agree.h"
#include "comm/in_process.h"
#include "deletion/job_router.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "storage/error.h"
#include "tests/trainer/cli_job_fixture.h"
#include "trainer/job.h"
#include "trainer/job_manifest.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/routes.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_state.h"

namespace lethe::test {
namespace {

using nlohmann::json;

// One route as this suite trains and checks it.
struct RouteUnderTest {
  std::string name;
  // The job config's sections that train this route alone (appended to job_config_text()).
  std::string sections;
  // From the job's files alone: the committed model no longer depends on record `id`. `before`
  // is the manifest (as stored) before the deletion.
  std::function<void(const fs::path& job, const std::string& id, const json& before)> expect_forgotten;
};

// S3T: every sequence of the record's shard is cut before the record's slice, and no checkpoint
// trained on that slice remains in the store.
void expect_s3t_forgot(const fs::path& job, const std::string& id, const json& /*before*/) {
  const auto manifest = trainer::read_job_manifest(job);
  const auto section = trainer::decode_s3t_section(*manifest.section(trainer::kS3TRouteName), "test");
  const auto dataset = storage::Dataset::open(manifest.dataset.path);
  const auto a = dataset.assigner().assign(id, static_cast<int>(section.shards.size()), section.shards[0].plan.slices);
  const auto& shard = section.shards.at(static_cast<std::size_t>(a.shard));
  const storage::CheckpointStore store(manifest.checkpoints_path());
  for (const auto& sequence : shard.plan.sequences) {
    const std::vector<int> served(sequence.order.begin(), sequence.order.begin() + sequence.surviving_prefix);
    EXPECT_EQ(std::count(served.begin(), served.end(), a.slice), 0) << "a served prefix still holds slice " << a.slice;
  }
  for (const auto& series : shard.series) {
    for (const auto& info : store.versions(series.name)) {
      const auto slices = info.metadata.at("slices").get<std::vector<int>>();
      EXPECT_EQ(std::count(slices.begin(), slices.end(), a.slice), 0) << info.path << " was trained on the record's slice";
    }
  }
}

// Noisy GD: the committed version is the only one left, its accountant counts one record fewer,
// and the deletion is certified at the target.
void expect_noisy_gd_forgot(const fs::path& job, const std::string& /*id*/, const json& before) {
  const auto manifest = trainer::read_job_manifest(job);
  const auto section = trainer::decode_noisy_gd_section(*manifest.section(trainer::kNoisyGdRouteName), "test");
  const auto records_before = before.at("routes").at("noisy_gd").at("records").get<std::int64_t>();
  EXPECT_EQ(section.records, records_before - 1);
  const storage::CheckpointStore store(manifest.checkpoints_path());
  const auto versions = store.versions(section.series);
  ASSERT_EQ(versions.size(), 1u) << "every version trained with the record must be purged";
  EXPECT_EQ(versions[0].version, section.version);
  auto world = comm::make_in_process_world(1);
  EXPECT_EQ(trainer::load_noisy_gd_model(manifest, *world.front()).accountant().current_n(), records_before - 1);
}

const std::vector<RouteUnderTest>& routes_under_test() {
  static const std::vector<RouteUnderTest> routes = {
      {"s3t", "", expect_s3t_forgot},
      {"noisy_gd", "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 40, target_epsilon: 1.0}\n", expect_noisy_gd_forgot},
  };
  return routes;
}

const RouteUnderTest& route_under_test(const std::string& name) {
  for (const auto& r : routes_under_test()) {
    if (r.name == name) return r;
  }
  throw std::runtime_error("no conformance entry for route " + name);
}

// A trained single-route job per route, made once; each test works on its own copy.
class RouteConformance : public ::testing::TestWithParam<std::string> {
 protected:
  static fs::path template_dir(const std::string& route) {
    return fs::temp_directory_path() / ("lethe_route_conformance_" + std::to_string(::getpid()) + "_" + route);
  }

  static void TearDownTestSuite() {
    for (const auto& r : routes_under_test()) fs::remove_all(template_dir(r.name));
  }

  void SetUp() override {
    const auto& route = route_under_test(GetParam());
    const auto source = template_dir(route.name);
    if (!fs::exists(source / "run" / "manifest.json")) make_template(route, source);
    if (HasFatalFailure()) return;
    dir_ = fs::temp_directory_path() / ("lethe_route_conformance_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_.parent_path());
    fs::copy(source, dir_, fs::copy_options::recursive);
    const auto dataset = storage::Dataset::open(dir_ / "train.h5");
    for (std::uint64_t row = 0; row < dataset.size(); ++row) {
      if (!dataset.is_public(row)) private_ids_.emplace_back(dataset.id(row));
    }
    const auto test = storage::Dataset::open(dir_ / "test.h5");
    const std::size_t width = test.layout().bytes_per_record();
    std::vector<std::uint64_t> rows;
    for (std::uint64_t row = 0; row < 24; ++row) rows.push_back(row);
    std::vector<std::uint8_t> bytes(rows.size() * width);
    test.read_features(rows, bytes);
    json inputs = json::array();
    for (std::size_t r = 0; r < rows.size(); ++r) inputs.push_back(std::vector<int>(bytes.begin() + r * width, bytes.begin() + (r + 1) * width));
    predict_body_ = {{"inputs", inputs}, {"model", GetParam()}};
  }

  void TearDown() override { fs::remove_all(dir_); }

  static void make_template(const RouteUnderTest& route, const fs::path& dir) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    write_csv(dir / "train.csv", 360, 1, "tr");
    write_csv(dir / "test.csv", 60, 2, "te");
    const auto ingest = lethe_cmd() + " ingest --format csv --id-column id --feature-type uint8 --feature-shape 6x6 --seed 3 ";
    ASSERT_EQ(run_command(ingest + "--csv " + (dir / "train.csv").string() + " --out " + (dir / "train.h5").string() +
                          " --public-fraction 0.3").status, 0);
    ASSERT_EQ(run_command(ingest + "--csv " + (dir / "test.csv").string() + " --out " + (dir / "test.h5").string()).status, 0);
    std::string config = job_config_text({2, 3, 3, 1});
    if (route.name != "s3t") config.replace(config.find("s3t: {"), 6, "s3t: {enabled: false, ");
    std::ofstream(dir / "job.yaml") << config << route.sections;
    const auto pretrain = run_command(lethe_cmd() + " pretrain --config " + (dir / "job.yaml").string());
    ASSERT_EQ(pretrain.status, 0) << pretrain.out;
    const auto train = run_command(lethe_cmd() + " train --config " + (dir / "job.yaml").string());
    ASSERT_EQ(train.status, 0) << train.out;
    ASSERT_EQ(json_of(train).at("models"), json::array({route.name})) << "the template trains this route alone";
  }

  [[nodiscard]] fs::path job() const { return dir_ / "run"; }
  // A copy of the template job (dataset beside it), for one attempt.
  fs::path fresh_copy(const std::string& name) const {
    const auto copy = dir_ / name;
    fs::create_directories(copy);
    fs::copy(job(), copy / "run", fs::copy_options::recursive);
    fs::copy_file(dir_ / "train.h5", copy / "train.h5");
    fs::copy_file(dir_ / "test.h5", copy / "test.h5");
    return copy / "run";
  }
  [[nodiscard]] static json manifest_json(const fs::path& job) {
    return trainer::encode_job_manifest(trainer::read_job_manifest(job));
  }
  // The router's models without the job directory (copies differ only there).
  [[nodiscard]] static json models_of(const deletion::JobRouter& router) {
    auto models = router.models_json();
    models.erase("job_dir");
    return models;
  }
  // The batch of one record, resolved by rank 0.
  [[nodiscard]] static std::vector<deletion::ResolvedRecord> one_record(const deletion::JobRouter& router, const std::string& id) {
    deletion::DeletionRequest request;
    request.records = {id};
    return router.resolve(request);
  }

  fs::path dir_;
  std::vector<std::string> private_ids_;
  json predict_body_;
};

TEST(RouteConformanceTable, EveryRegisteredRouteIsUnderTest) {
  std::set<std::string> registered, tested;
  for (const auto& kind : trainer::route_kinds()) registered.emplace(kind.name);
  for (const auto& route : routes_under_test()) tested.insert(route.name);
  EXPECT_EQ(registered, tested) << "add an entry to routes_under_test() for every route in trainer/routes.cpp";
}

TEST_P(RouteConformance, ADeletionForgetsTheRecordPurgesItsCheckpointsAndReloadsToTheSameState) {
  const auto& route = route_under_test(GetParam());
  const auto victim = private_ids_.at(5);
  const auto before = manifest_json(job());
  auto world = comm::make_in_process_world(1);
  deletion::JobRouter router(job(), *world.front());
  EXPECT_EQ(router.predict(predict_body_).at("model_version"), 0);

  const auto outcome = router.apply_batch(one_record(router, victim), {"request-1"});
  EXPECT_EQ(outcome.records_deleted, 1);
  EXPECT_EQ(outcome.model_version, 1);
  ASSERT_EQ(outcome.models.size(), 1u);
  EXPECT_EQ(outcome.models[0].at("name"), route.name) << "a receipt part names its route";
  EXPECT_TRUE(outcome.models[0].at("route").is_string());
  router.purge(outcome.purge);
  EXPECT_EQ(router.erase({victim}), 1);

  const storage::CheckpointStore store(job() / "checkpoints");
  for (const auto& target : outcome.purge) {
    for (const auto& info : store.versions(target.series)) EXPECT_NE(info.version, target.version) << target.series;
  }
  route.expect_forgotten(job(), victim, before);
  const auto predicted_after = router.predict(predict_body_);
  EXPECT_EQ(predicted_after.at("model_version"), 1);

  // A reload from disk (the dataset now erased) serves exactly the in-memory state.
  deletion::JobRouter reloaded(job(), *world.front());
  EXPECT_EQ(reloaded.predict(predict_body_), predicted_after);
  EXPECT_EQ(reloaded.models_json(), router.models_json());
}

TEST_P(RouteConformance, ACrashBeforeTheManifestCommitLeavesTheOldState) {
  auto world = comm::make_in_process_world(1);
  auto& comm = *world.front();
  json predicted_before;
  {
    deletion::JobRouter router(job(), comm);
    predicted_before = router.predict(predict_body_);
    // Every route prepares its change (and writes what it writes) but the batch never commits:
    // the process "dies" here, with nothing discarded.
    const auto manifest = trainer::open_trained_job(job(), comm);
    const auto loaded = trainer::load_job_routes(manifest, comm, /*for_deletion=*/true);
    const auto resolved = one_record(router, private_ids_.at(7));
    trainer::DeletionBatch batch{{resolved[0].id}, {*resolved[0].row}};
    for (const auto& r : loaded.routes) (void)r->prepare_deletion(batch);
  }
  deletion::JobRouter restarted(job(), comm);
  EXPECT_EQ(restarted.predict(predict_body_), predicted_before);
  EXPECT_EQ(restarted.model_version(), 0);
}

// A full disk at each commit in turn (checkpoint data, checkpoint manifest, job manifest, ...).
TEST_P(RouteConformance, AFailedCommitAtEveryStepLeavesMemoryAndDiskAsBeforeAndTheRetryIsExact) {
  auto world = comm::make_in_process_world(1);
  auto& comm = *world.front();
  const auto victim = private_ids_.at(9);
  json reference;
  {
    const auto copy = fresh_copy("reference");
    deletion::JobRouter router(copy, comm);
    (void)router.apply_batch(one_record(router, victim), {"request-1"});
    reference = router.predict(predict_body_);
  }
  int failures = 0;
  for (int nth = 1;; ++nth) {
    ASSERT_LE(nth, 20) << "a batch should not need 20 commits";
    const auto copy = fresh_copy("fault-" + std::to_string(nth));
    deletion::JobRouter router(copy, comm);
    const auto predicted = router.predict(predict_body_);
    const auto models = models_of(router);
    const auto files = snapshot(copy);
    const auto batch = one_record(router, victim);
    storage::fault_injection::fail_nth_commit(nth);
    bool committed = false;
    try {
      (void)router.apply_batch(batch, {"request-1"});
      committed = true;
    } catch (const storage::StorageError& e) {
      EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
    }
    storage::fault_injection::fail_nth_commit(0);
    if (committed) {
      EXPECT_EQ(router.predict(predict_body_), reference);
      break;
    }
    ++failures;
    EXPECT_EQ(router.predict(predict_body_), predicted) << "commit " << nth << ": memory changed";
    EXPECT_EQ(models_of(router), models) << "commit " << nth;
    EXPECT_TRUE(snapshot(copy) == files) << "commit " << nth << ": the job directory changed";
    EXPECT_EQ(deletion::JobRouter(copy, comm).predict(predict_body_), predicted) << "commit " << nth << ": a reload differs";
    (void)router.apply_batch(batch, {"request-1"});
    EXPECT_EQ(router.predict(predict_body_), reference) << "commit " << nth << ": the retry is not exact";
  }
  EXPECT_GE(failures, 1);
}

// A rank's error at each agreement in turn, on two ranks (threads of one process).
TEST_P(RouteConformance, ARanksFailureAtEveryStepLeavesEveryRankAsBeforeAndTheRetryIsExact) {
  const auto victim = private_ids_.at(11);
  json reference;
  {
    auto world = comm::make_in_process_world(1);
    deletion::JobRouter router(fresh_copy("reference"), *world.front());
    (void)router.apply_batch(one_record(router, victim), {"request-1"});
    reference = router.predict(predict_body_);
  }
  int failures = 0;
  for (int nth = 1;; ++nth) {
    ASSERT_LE(nth, 20) << "a batch should not need 20 agreements";
    const auto copy = fresh_copy("rank-fault-" + std::to_string(nth));
    const auto files = snapshot(copy);
    bool committed = false;
    comm::run_in_process(2, [&](comm::Communicator& comm) {
      deletion::JobRouter router(copy, comm);
      json predicted;
      std::vector<deletion::ResolvedRecord> batch;
      if (comm.rank() == 0) {
        predicted = router.predict(predict_body_);
        batch = one_record(router, victim);
        comm::fault_injection::fail_nth_agreement(1, nth);
      }
      comm.barrier();
      bool ok = false;
      try {
        (void)router.apply_batch(batch, comm.rank() == 0 ? std::vector<std::string>{"request-1"} : std::vector<std::string>{});
        ok = true;
      } catch (const std::exception&) {
      }
      comm.barrier();
      if (comm.rank() == 0) {
        comm::fault_injection::fail_nth_agreement(1, 0);
        committed = ok;
        if (!ok) {
          EXPECT_EQ(router.predict(predict_body_), predicted) << "agreement " << nth << ": memory changed";
          EXPECT_TRUE(snapshot(copy) == files) << "agreement " << nth << ": the job directory changed";
        }
      }
      std::int32_t retry = ok ? 0 : 1;
      comm.broadcast({&retry, 1, comm::DataType::kInt32}, 0);
      if (retry != 0) (void)router.apply_batch(batch, comm.rank() == 0 ? std::vector<std::string>{"request-1"} : std::vector<std::string>{});
      if (comm.rank() == 0) EXPECT_EQ(router.predict(predict_body_), reference) << "agreement " << nth;
    });
    if (committed) break;
    ++failures;
  }
  EXPECT_GE(failures, 1);
}

std::vector<std::string> route_names() {
  std::vector<std::string> names;
  for (const auto& route : routes_under_test()) names.push_back(route.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(Routes, RouteConformance, ::testing::ValuesIn(route_names()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace lethe::test
