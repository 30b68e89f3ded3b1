// deletion/job_session.h — what a process needs to delete from a job, over its MPI ranks: the job's
// writer lock, ledger and coordinator on rank 0, the loaded models (JobRouter) on every rank.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "comm/communicator.h"
#include "deletion/coordinator.h"
#include "deletion/job_router.h"
#include "storage/job_lock.h"
#include "storage/ledger.h"

namespace lethe::deletion {

class JobSession {
 public:
  // Collective. Rank 0 takes the job's lock as `holder`, runs `preflight` (checks that must fail
  // before any work, e.g. reading the token file), opens the ledger; every rank then loads the
  // job. A failure on rank 0 reaches every rank as an exception, so none waits for a dead peer.
  // The ledger must be the job's own: a job that has applied a deletion batch refuses to start
  // without its ledger, or with a ledger that does not hold that batch's requests (replaced), with
  // storage::LedgerError kDamaged; `lost_log` kAccept (`--accept-ledger-loss`) starts anyway.
  JobSession(const std::filesystem::path& job_dir, comm::Communicator& comm, const std::string& holder,
             CoordinatorOptions options, const std::function<void()>& preflight = {},
             storage::Ledger::LostLog lost_log = storage::Ledger::LostLog::kRefuse);
  ~JobSession();

  [[nodiscard]] JobRouter& router() { return *router_; }
  // Rank 0 only (nullptr elsewhere).
  [[nodiscard]] Coordinator* coordinator() { return coordinator_.get(); }
  [[nodiscard]] storage::Ledger* ledger() { return ledger_.get(); }

 private:
  std::unique_ptr<storage::JobLock> lock_;
  std::unique_ptr<storage::DatasetLock> dataset_lock_;
  std::unique_ptr<storage::Ledger> ledger_;
  std::unique_ptr<JobRouter> router_;
  std::unique_ptr<Coordinator> coordinator_;
};

}  // namespace lethe::deletion
