#include "deletion/job_session.h"

#include "comm/agree.h"
#include "trainer/job_manifest.h"

namespace lethe::deletion {

namespace {

// The ledger of `job_dir`, checked against the job's last deletion batch (its manifest): a job that
// has deleted must not silently start over with a new or another job's ledger.
std::unique_ptr<storage::Ledger> open_job_ledger(const std::filesystem::path& job_dir, const trainer::JobManifest& manifest,
                                                 storage::Ledger::LostLog lost_log) {
  const auto path = storage::job_ledger_path(job_dir);
  const bool accept = lost_log == storage::Ledger::LostLog::kAccept;
  const auto missing_batch = [&] {
    return std::to_string(manifest.last_batch->request_ids.size()) + " request(s) of its last deletion batch (model version " +
           std::to_string(manifest.last_batch->model_version) + ")";
  };
  const bool had_ledger = manifest.last_batch && !manifest.last_batch->request_ids.empty();
  if (had_ledger && !std::filesystem::exists(path) && !accept) {
    throw storage::LedgerError(storage::StorageErrorKind::kDamaged,
                               "ledger " + path.string() + " is missing, but the job has carried out deletions (" +
                                   missing_batch() + "): its receipts and unfinished requests are in that file. "
                                   "Restore it (with its -wal file) from where it was moved or a backup. If it is gone "
                                   "for good, start once with --accept-ledger-loss: a new ledger (new salt) is created");
  }
  auto ledger = std::make_unique<storage::Ledger>(path, storage::Ledger::Access::kReadWrite, lost_log);
  if (had_ledger && !accept && !ledger->get(manifest.last_batch->request_ids.front())) {
    throw storage::LedgerError(storage::StorageErrorKind::kDamaged,
                               "ledger " + path.string() + " does not hold the " + missing_batch() +
                                   ": it is not this job's ledger (replaced, or restored from an older backup). Put the "
                                   "job's own ledger.sqlite back; if it is gone for good, start once with "
                                   "--accept-ledger-loss");
  }
  return ledger;
}

}  // namespace

JobSession::JobSession(const std::filesystem::path& job_dir, comm::Communicator& comm, const std::string& holder,
                       CoordinatorOptions options, const std::function<void()>& preflight,
                       storage::Ledger::LostLog lost_log) {
  comm::on_root(comm, "opening the job " + job_dir.string(), [&] {
    lock_ = std::make_unique<storage::JobLock>(job_dir, holder);
    if (preflight) preflight();
    const auto manifest = trainer::read_job_manifest(job_dir);
    // `lethe erase` and `lethe compact` are refused on the dataset while this session runs.
    if (std::filesystem::exists(manifest.dataset.path)) {
      dataset_lock_ = std::make_unique<storage::DatasetLock>(manifest.dataset.path, storage::DatasetLock::Mode::kJobWriter);
    }
    ledger_ = open_job_ledger(job_dir, manifest, lost_log);
  });
  router_ = std::make_unique<JobRouter>(job_dir, comm);
  if (comm.rank() == 0) coordinator_ = std::make_unique<Coordinator>(*router_, *ledger_, comm, options);
}

// The coordinator goes first: its stop() may still use the router and the ledger.
JobSession::~JobSession() { coordinator_.reset(); }

}  // namespace lethe::deletion
