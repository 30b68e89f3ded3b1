#include "storage/progress.h"

#include <atomic>

namespace lethe::storage {

namespace {

class NullProgress final : public ProgressSink {
 public:
  void begin(const std::string&, std::int64_t, const std::string&) override {}
  void advance(std::int64_t) override {}
  void end() override {}
};

NullProgress null_progress;
std::atomic<ProgressSink*> current{&null_progress};

}  // namespace

ProgressSink& progress_sink() { return *current.load(); }

void set_progress_sink(ProgressSink* sink) { current.store(sink != nullptr ? sink : &null_progress); }

ProgressTask::ProgressTask(const std::string& label, std::int64_t total, const std::string& unit) : sink_(progress_sink()) {
  sink_.begin(label, total, unit);
}

ProgressTask::~ProgressTask() { sink_.end(); }

}  // namespace lethe::storage
