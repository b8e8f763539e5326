#include "server/api/job_logs.h"

#include <algorithm>
#include <fstream>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/api/serial_write_reactor.h"
#include "server/api/slim_service.h"
#include "server/jobs/job_helpers.h"

namespace slim::server {

constexpr size_t kLogMessageBytes = 64 << 10;
constexpr int64_t kTailBlockBytes = 64 << 10;

int64_t TailOffset(const std::string& path, int64_t lines) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in || lines <= 0) return 0;
  const int64_t size = static_cast<int64_t>(in.tellg());
  // Scan backwards for the newline that ends the line before the last `lines`; a final "\n"
  // ends the last line rather than starting an empty one.
  int64_t newlines = 0;
  int64_t end = size;
  std::string block;
  while (end > 0) {
    const int64_t start = std::max<int64_t>(0, end - kTailBlockBytes);
    block.resize(static_cast<size_t>(end - start));
    in.seekg(start);
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    for (int64_t i = static_cast<int64_t>(block.size()) - 1; i >= 0; --i) {
      if (block[static_cast<size_t>(i)] != '\n' || start + i == size - 1) continue;
      if (++newlines == lines) return start + i + 1;
    }
    end = start;
  }
  return 0;
}

std::string ReadLogLines(const std::string& path, int64_t* offset, size_t max_bytes, bool flush_partial) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const int64_t size = static_cast<int64_t>(in.tellg());
  if (size < *offset) *offset = 0;  // truncated or replaced by hand: read it again
  if (size == *offset) return "";
  const size_t limit = 4 * max_bytes;
  std::string data(static_cast<size_t>(std::min<int64_t>(size - *offset, static_cast<int64_t>(limit))), '\0');
  in.seekg(*offset);
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  if (data.empty()) return "";
  // Whole lines up to about max_bytes: cut after the last "\n" at or below it, or after the
  // first one beyond it (a long line); with none, the data is a partial line.
  size_t cut = data.rfind('\n', std::min(max_bytes, data.size()) - 1);
  if (cut == std::string::npos) cut = data.find('\n');
  if (cut != std::string::npos) {
    data.resize(cut + 1);
    *offset += static_cast<int64_t>(data.size());
    return data;
  }
  if (data.size() < limit && !flush_partial) return "";  // a line still being written
  // A line longer than the limit is sent in pieces; a partial last line is ended here.
  *offset += static_cast<int64_t>(data.size());
  return data + "\n";
}

PollTicker::~PollTicker() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

int64_t PollTicker::Add(std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  callbacks_[next_] = std::move(callback);
  return next_++;
}

void PollTicker::Remove(int64_t handle) {
  absl::MutexLock lock(&mu_);
  callbacks_.erase(handle);
}

void PollTicker::Loop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), period_);
    if (stopping_) return;
    for (auto& [handle, callback] : callbacks_) callback();
  }
}

namespace {

// Writes every rank's new whole lines, one message at a time; then, following, waits for the
// ticker and looks again until the job has ended and its logs are read to the end.
class JobLogsReactor final : public SerialWriteReactor<v1::GetJobLogsResponse> {
 public:
  JobLogsReactor(JobManager& manager, PollTicker& ticker, const v1::GetJobLogsRequest& request,
                 const absl::StatusOr<Principal>& caller)
      : manager_(manager), ticker_(ticker) {
    absl::StatusOr<JobManager::JobLogs> logs = !caller.ok()           ? absl::StatusOr<JobManager::JobLogs>(caller.status())
                                               : request.id().empty() ? absl::InvalidArgumentError("id: is required")
                                                                      : manager_.LogsOf(request.id(), *caller);
    if (request.tail_lines() < 0) logs = absl::InvalidArgumentError("tail_lines: must be >= 0");
    if (!logs.ok()) {
      absl::MutexLock lock(&guard()->mu);
      End(ToGrpcStatus(logs.status()));
      return;
    }
    // Set up before the guard is locked: the ticker calls with its own lock held, then takes
    // the guard's, so registering under the guard's would order the two both ways.
    caller_ = *caller;
    job_id_ = request.id();
    follow_ = request.follow();
    ended_ = IsTerminal(logs->job.state());
    paths_ = logs->paths;
    for (const std::string& path : paths_) offsets_.push_back(TailOffset(path, request.tail_lines()));
    if (follow_ && !ended_) {
      std::shared_ptr<StreamGuard> guard = this->guard();
      ticker_handle_ = ticker_.Add([guard, this] {
        absl::MutexLock lock(&guard->mu);
        if (guard->alive && waiting_) {
          waiting_ = false;
          Next();
        }
      });
    }
    absl::MutexLock lock(&guard()->mu);
    Next();
  }

 private:
  void Next() override ABSL_EXCLUSIVE_LOCKS_REQUIRED(guard()->mu) {
    if (!CanWrite()) return;
    // Ranks take turns, so that one busy rank does not hold back the others.
    for (size_t i = 0; i < paths_.size(); ++i) {
      const size_t rank = (next_rank_ + i) % paths_.size();
      std::string data = ReadLogLines(paths_[rank], &offsets_[rank], kLogMessageBytes, last_pass_);
      if (data.empty()) continue;
      next_rank_ = rank + 1;
      message_.set_rank(static_cast<int32_t>(rank));
      message_.set_data(std::move(data));
      return Write(&message_);
    }
    if (last_pass_) return End(grpc::Status::OK);
    if (!follow_ || ended_) {
      last_pass_ = true;  // what is left: partial last lines
      return Next();
    }
    if (manager_.stopped()) {
      return End(grpc::Status(grpc::StatusCode::UNAVAILABLE, "slimd is shutting down; follow the log again later"));
    }
    const absl::StatusOr<v1::Job> job = manager_.GetJob(job_id_, caller_);
    if (!job.ok()) return End(ToGrpcStatus(job.status()));
    if (IsTerminal(job->state())) {
      ended_ = true;  // read once more: its last lines may have come since the read above
      return Next();
    }
    waiting_ = true;  // the ticker calls again
  }

  void Release() override {
    if (ticker_handle_ != 0) ticker_.Remove(ticker_handle_);
  }

  JobManager& manager_;
  PollTicker& ticker_;
  Principal caller_;
  std::string job_id_;
  bool follow_ = false;
  int64_t ticker_handle_ = 0;
  std::vector<std::string> paths_;
  std::vector<int64_t> offsets_ ABSL_GUARDED_BY(guard()->mu);
  size_t next_rank_ ABSL_GUARDED_BY(guard()->mu) = 0;
  bool ended_ ABSL_GUARDED_BY(guard()->mu) = false;
  bool last_pass_ ABSL_GUARDED_BY(guard()->mu) = false;
  bool waiting_ ABSL_GUARDED_BY(guard()->mu) = false;
  v1::GetJobLogsResponse message_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GetJobLogsResponse>* NewJobLogsReactor(JobManager& manager, PollTicker& ticker,
                                                                    const v1::GetJobLogsRequest& request,
                                                                    const absl::StatusOr<Principal>& caller) {
  return new JobLogsReactor(manager, ticker, request, caller);
}

}  // namespace slim::server
