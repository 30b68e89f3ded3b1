#include "trainer/noisy_gd_route.h"

#include <torch/torch.h>

#include <optional>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "trainer/error.h"
#include "trainer/frozen_backbone.h"
#include "trainer/model.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/routes.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct NoisyGdState {
  comm::Communicator* comm = nullptr;
  std::optional<NoisyGdModel> model;  // every rank
  std::optional<NoisyGdShare> share;  // every rank, when loaded for deletion
  // Rank 0.
  JobManifest manifest;  // what the model's checkpoints record about the job (its section not kept current)
  NoisyGdSection section;
  std::shared_ptr<FrozenBackbone> backbone;
  std::int64_t feature_batch = 1024;
};

class NoisyGdRoute final : public ModelRoute {
 public:
  explicit NoisyGdRoute(std::shared_ptr<const NoisyGdState> state) : state_(std::move(state)) {}

  [[nodiscard]] std::string_view name() const override { return kNoisyGdRouteName; }

  [[nodiscard]] RouteChange prepare_deletion(const DeletionBatch& batch) const override {
    const auto& s = *state_;
    RouteChange change;
    change.next = std::make_shared<NoisyGdRoute>(state_);
    if (batch.ids.empty()) {
      if (s.comm->rank() == 0) change.section = encode_noisy_gd_section(s.section);
      return change;
    }
    if (!s.share) throw std::logic_error("the noisy-GD route was loaded without its records; load it for deletion");
    // On copies: the model (weights are replaced, never written in place) and the share.
    auto next = std::make_shared<NoisyGdState>(s);
    comm::on_every_rank(*s.comm, "preparing the noisy-GD records", [&] { next->share = without(*s.share, batch.ids); });
    const auto receipt = next->model->delete_records(next->share->data);
    comm::on_root(*s.comm, "committing the noisy-GD model", [&] {
      next->section = commit_noisy_gd_model(*next->model, s.manifest);
      const int version = next->section.version;
      const fs::path checkpoints = s.manifest.checkpoints_path();
      change.discard = [checkpoints, version] { storage::CheckpointStore(checkpoints).abandon(kNoisyGdSeries, version); };
      try {
        describe_change(*next, receipt, change);
      } catch (...) {
        change.discard();
        throw;
      }
    });
    change.next = std::make_shared<NoisyGdRoute>(next);
    return change;
  }

  [[nodiscard]] at::Tensor predict(const at::Tensor& inputs) const override {
    const auto& s = *state_;
    torch::Tensor features;
    s.backbone->use([&](LetheModel& model) { features = noisy_gd_features(model, inputs, s.feature_batch); });
    torch::NoGradGuard no_grad;
    return torch::softmax(features.matmul(s.model->weights()), 1);
  }

  [[nodiscard]] json eval_details() const override {
    return {{"version", state_->section.version},
            {"digest", state_->section.digest},
            {"trained_records", state_->model->accountant().current_n()}};
  }

  [[nodiscard]] RetrainNeed retrain_need() const override {
    // A deletion either certifies or retrains on the spot: nothing is ever left for a retrain.
    return {false, "deletions are certified by noisy steps or retrained at once", json::object(), 1, 1, 1.0};
  }

 private:
  // Rank 0: the receipt part and what to purge once `next`'s version is committed.
  void describe_change(const NoisyGdState& next, const DeletionReceipt& receipt, RouteChange& change) const {
    const int version = next.section.version;
    json purged = json::array();
    // Every earlier version was trained with the deleted records.
    for (const auto& old : storage::CheckpointStore(state_->manifest.checkpoints_path()).versions(kNoisyGdSeries)) {
      if (old.version == version) continue;
      change.purge.push_back({kNoisyGdSeries, old.version});
      purged.push_back(std::string(kNoisyGdSeries) + "/v" + std::to_string(old.version));
    }
    change.receipt = to_json(receipt);
    change.receipt["name"] = kNoisyGdRouteName;
    change.receipt["route"] = receipt.retrained ? "full_retrain" : "noisy_gd";
    change.receipt["version"] = version;
    change.receipt["checkpoints_purged"] = purged;
    change.section = encode_noisy_gd_section(next.section);
  }

  std::shared_ptr<const NoisyGdState> state_;
};

json describe(const JobManifest& manifest, const json& encoded) {
  const auto section = decode_noisy_gd_section(encoded, manifest.path().string());
  return {{"name", kNoisyGdRouteName},
          {"route", "noisy_gd"},
          {"version", section.version},
          {"records", section.records},
          {"steps_taken", section.steps_taken}};
}

std::unique_ptr<ModelRoute> load(const RouteContext& context) {
  const auto& manifest = context.manifest;
  auto state = std::make_shared<NoisyGdState>();
  state->comm = &context.comm;
  state->manifest = manifest;
  state->backbone = context.backbone;
  state->feature_batch = manifest.config.training.cache_batch_size;
  comm::on_every_rank(context.comm, "loading the noisy-GD model", [&] {
    state->section = decode_noisy_gd_section(*manifest.section(kNoisyGdRouteName), manifest.path().string());
    state->model.emplace(load_noisy_gd_model(manifest, context.comm));
    if (context.for_deletion) {
      // Rows a committed batch deleted are left out even while their bytes still await erasure.
      std::vector<std::uint64_t> pending;
      if (manifest.last_batch) pending = manifest.last_batch->erase_rows;
      state->share = load_noisy_gd_share(context.dataset, *context.backbone, pending, context.comm);
    }
  });
  return std::make_unique<NoisyGdRoute>(state);
}

bool configured(const JobSettings& settings) { return settings.noisy_gd.enabled; }

json check_inputs(const JobSettings& settings, const storage::Dataset& /*dataset*/) {
  return to_json(settings).at("noisy_gd");
}

json train(const JobSettings& settings, comm::Communicator& comm, bool resume) {
  return to_json(run_noisy_gd_job(settings, comm, resume));
}

}  // namespace

const RouteKind& noisy_gd_route_kind() {
  static const RouteKind kind{kNoisyGdRouteName, configured, train, check_inputs, load, describe, nullptr, nullptr};
  return kind;
}

}  // namespace lethe::trainer
