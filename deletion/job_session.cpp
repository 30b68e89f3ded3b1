#include "deletion/job_session.h"

#include "comm/agree.h"

namespace lethe::deletion {

JobSession::JobSession(const std::filesystem::path& job_dir, comm::Communicator& comm, const std::string& holder,
                       CoordinatorOptions options, const std::function<void()>& preflight) {
  comm::on_root(comm, "opening the job " + job_dir.string(), [&] {
    lock_ = std::make_unique<storage::JobLock>(job_dir, holder);
    if (preflight) preflight();
    ledger_ = std::make_unique<storage::Ledger>(storage::job_ledger_path(job_dir));
  });
  router_ = std::make_unique<JobRouter>(job_dir, comm);
  if (comm.rank() == 0) coordinator_ = std::make_unique<Coordinator>(*router_, *ledger_, comm, options);
}

// The coordinator goes first: its stop() may still use the router and the ledger.
JobSession::~JobSession() { coordinator_.reset(); }

}  // namespace lethe::deletion
