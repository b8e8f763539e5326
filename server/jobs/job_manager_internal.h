// Private to the job manager's source files (job_manager*.cc): the helpers they share, and the
// records of running jobs. The helpers are inline functions in an anonymous namespace, so each
// source file has its own copies and nothing here is visible to the rest of the server.
#pragma once

#include "server/jobs/job_manager.h"
#include "server/jobs/job_helpers.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/byte_size.h"
#include "base/dataset.h"
#include "base/errors.h"
#include "base/json.h"
#include "base/sha256.h"
#include "server/common/cpu_cores.h"
#include "server/common/status_macros.h"
#include "server/supervise/worker_process.h"

namespace slim::server {
namespace {

// The job has no devices any more (it went back to the queue).
inline void ClearPlacement(v1::Job* job) {
  job->set_device("");
  job->clear_devices();
}

// A logfmt value: bare when it is a plain word, else quoted with \ " and newlines escaped.
inline std::string LogfmtValue(const std::string& value) {
  const bool plain = !value.empty() && value.find_first_of(" =\"\\\n\t") == std::string::npos;
  if (plain) return value;
  std::string quoted = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') quoted += '\\';
    quoted += c == '\n' ? std::string("\\n") : std::string(1, c);
  }
  return quoted + "\"";
}

// The start of slimd's log line about a job (docs/operations.md, "Logs"):
// "slimd: time=<UTC, seconds> job=<id> event=<event>"; callers append more logfmt fields.
inline std::string JobLogLine(const std::string& job_id, const std::string& event) {
  return absl::StrCat("slimd: time=", absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::Now(), absl::UTCTimeZone()),
                      " job=", job_id, " event=", LogfmtValue(event));
}

// A process that has not exited (a zombie's command line is empty).
inline bool ProcessRuns(long pid) {
  std::ifstream now("/proc/" + std::to_string(pid) + "/cmdline");
  return now.good() && now.peek() != std::ifstream::traits_type::eof();
}

// Workers left by a server that was killed (or, in a fleet, by a replica that lost the job):
// their pids are in <job dir>/worker.pid, one per line (one per rank of a data-parallel job).
// Each that runs slim-train on this job directory on this machine has its process group ended
// and is waited for, so that the resumed workers are alone in the job directory. (A pid
// written on another machine names nothing here, or a process whose command line does not
// name this directory.)
inline void KillOrphanedWorkers(const std::string& job_dir) {
  std::ifstream pid_file(job_dir + "/worker.pid");
  std::vector<long> killed;
  for (long pid = 0; pid_file >> pid;) {
    if (pid <= 1) continue;
    std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
    std::string command((std::istreambuf_iterator<char>(cmdline)), {});
    // Arguments are NUL-separated: "--out\0<job dir>\0" is this job's worker.
    if (command.find("slim-train") == std::string::npos ||
        command.find(std::string("--out") + '\0' + job_dir + '\0') == std::string::npos) {
      continue;  // gone, the pid was reused, or another job's worker
    }
    ::kill(-static_cast<pid_t>(pid), SIGKILL);
    killed.push_back(pid);
  }
  // They are not our children, so they cannot be waited for. Dead is enough: a zombie (empty
  // command line) writes nothing, whether or not an init process reaps it soon.
  for (int i = 0; i < 500 && std::any_of(killed.begin(), killed.end(), ProcessRuns); ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
}

}  // namespace

// One worker process of a running job: the only one of an ordinary job, one rank of a
// data-parallel one.
struct JobManager::Rank {
  std::string device;
  std::unique_ptr<WorkerProcess> worker;  // null once it exited (moved to finished_workers_)
  bool exited = false;
  int exit_order = 0;                     // 1 for the group's first rank to exit, 2, ...
  bool told_to_stop = false;              // slimd sent it SIGTERM or SIGKILL
  WorkerExit exit;                        // once exited
  std::string failed_code;                // its `failed` event, if it reported one
  std::string failed_message;
  int blas_threads = 0;                   // CPU workers: the BLAS threads it was last given
};

// A data-parallel rank's `failed` event that is about itself, not about a peer that went away
// ("another rank exited, ..." or "could not join at ...", engine/data_parallel.cc).
inline bool JobManager::OwnFailure(const Rank& k) {
  return !k.failed_code.empty() && k.failed_message.find("another rank exited") == std::string::npos &&
         k.failed_message.find("could not join at") == std::string::npos;
}

struct JobManager::Running {
  std::vector<Rank> ranks;  // rank 0 first
  int attempt = 0;
  bool cancelling = false;
  bool draining = false;      // server shutdown: the job goes back to the queue
  bool saw_terminal = false;  // the worker reported finished, stopped or failed
  bool lost = false;          // fleet: the job is not this replica's any more; record nothing
  int64_t fence_epoch = 0;    // fence_.epoch() at launch: a later one means self-fencing killed it
  int64_t stopped_step = -1;  // fleet, draining: where the worker stopped
  int64_t pending_quota = 0;  // shrink or grow requested, not yet confirmed by the worker
  bool shrink_refused = false;  // the worker could not fit a smaller quota
  bool grow_refused = false;    // the worker could not take its requested quota back
  std::string shrink_for;     // the job the shrink makes room for
  // Data-parallel: the rank whose own failure or unrequested abnormal end came first (-1: none
  // yet); from then on the group is ending and the others have been told to stop.
  int culprit = -1;

  WorkerProcess& worker() { return *ranks.front().worker; }  // rank 0, while it runs
  bool data_parallel() const { return ranks.size() > 1; }
  // SIGTERM (SIGKILL after the grace) to every live rank not told to stop yet: a second
  // SIGTERM would end a worker at once, before its checkpoint.
  void TerminateAll(double grace_seconds) {
    for (Rank& k : ranks) {
      if (k.worker == nullptr || k.told_to_stop) continue;
      k.told_to_stop = true;
      k.worker->Terminate(grace_seconds);
    }
  }
  void KillAll() {
    for (Rank& k : ranks) {
      if (k.worker == nullptr) continue;
      k.told_to_stop = true;
      k.worker->Kill();
    }
  }
};


class JobManager::ReservationHold : public DeviceHold {
 public:
  ReservationHold(JobManager& manager, std::string id, std::string device)
      : manager_(manager), id_(std::move(id)), device_(std::move(device)) {}
  // Returns the memory and wakes the scheduler, which may place a queued job in it.
  ~ReservationHold() {
    absl::MutexLock lock(&manager_.mu_);
    manager_.reservations_.erase(id_);
    manager_.wake_ = true;
  }
  ReservationHold(const ReservationHold&) = delete;
  ReservationHold& operator=(const ReservationHold&) = delete;
  const std::string& device() const override { return device_; }

 private:
  JobManager& manager_;
  const std::string id_, device_;
};

}  // namespace slim::server
