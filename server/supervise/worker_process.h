// One worker process (`slim-train run ... --events-fd 3`) and the JSON-lines events it writes
// (docs/worker-protocol.md). The process is spawned with posix_spawn — never forked from the
// server, which runs gRPC threads and possibly CUDA — with its own process group, stdin as a
// control pipe, fd 3 as the event pipe, and stdout/stderr appended to a log file. The child
// starts with an empty signal mask and default dispositions for SIGTERM, SIGINT, SIGPIPE,
// SIGHUP and SIGQUIT, whatever the server blocks or ignores (slimd blocks SIGTERM/SIGINT in all
// threads for sigwait). Descriptors other than 0-3 are closed in the child.
//
// Lifetime of the process group: Terminate and Kill signal the whole group (the worker and
// anything it started). When the worker itself exits, whatever is left of its group is killed
// with SIGKILL before the worker is reaped, so no stray child outlives a job; events written
// by such stragglers after the worker exited are dropped.
//
// Requirements on the hosting process:
//  - SIGCHLD must not be SIG_IGN (the kernel would reap the worker and its exit status would be
//    lost; on_exit then reports exit_status -1).
//  - Nothing else may waitpid(-1) / wait() for children.
//  - SIGPIPE need not be ignored: SendControl blocks SIGPIPE in the calling thread around its
//    write and consumes the signal it raised, so a closed control pipe is an EPIPE error, not a
//    dead server. (slimd ignores SIGPIPE anyway; that remains harmless.)
//
// Thread-safety: all public methods may be called from any thread. Callbacks run on the
// process's own reader thread, one at a time, in the order the worker wrote the events; they
// must not block for long (they should hand off to the caller's state under its own lock),
// must not throw, and must not destroy the WorkerProcess (the destructor joins that thread).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/worker_events.h"

namespace slim::server {

struct WorkerExit {
  bool signaled = false;  // killed by a signal (then `signal` is set), else exited
  int exit_status = 0;    // when !signaled: 0 done, 75 stopped after a checkpoint, 1/2/3 failed;
                          // -1 if the status could not be collected (see SIGCHLD above)
  int signal = 0;
  std::string stderr_tail;  // last ~2 KiB of the worker's log, for error reports
};

struct WorkerOptions {
  std::vector<std::string> argv;  // argv[0] is the executable path (no PATH search)
  std::string log_path;           // stdout and stderr are appended here (created 0644)
  // Called for every event line the worker writes; malformed lines (and lines over 1 MiB) are
  // reported as a kWarning event with code "internal" whose message quotes the line (the first
  // 200 bytes). Empty lines are skipped. May be empty.
  std::function<void(const TrainingEvent&)> on_event;
  // One-shot commands (engine_commands.h): when set, the process's stdout is the pipe read here
  // instead of the log, and each of its lines is handed over as written (lines over 1 MiB are
  // dropped), not parsed as an event; on_event is not called.
  std::function<void(const std::string&)> on_stdout_line;
  // Called once, after the event pipe is drained and the process has been reaped. May be empty.
  std::function<void(const WorkerExit&)> on_exit;
  // Niceness steps below the spawning thread's (0..19; the result is capped at 19), so that the
  // host's own threads (slimd answering RPCs) get the CPU first when it is short. Applied to the
  // worker's whole process group right after the spawn: the kernel renices every thread of the
  // group, and threads and processes created later inherit their creator's niceness.
  int nice = 0;
};

class WorkerProcess {
 public:
  // Spawns the process. Errors: INVALID_ARGUMENT for an empty argv; INTERNAL with the errno
  // text if the log cannot be opened or the process cannot be started — including an
  // executable that does not exist or is not executable (glibc's posix_spawn reports the exec
  // failure, so there is no child that exits 127).
  static absl::StatusOr<std::unique_ptr<WorkerProcess>> Start(WorkerOptions options);
  // Kills the process group if the worker is still running, then waits for the reader thread
  // (so on_exit has run when this returns). Must not be called from a callback.
  ~WorkerProcess();

  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Writes one line (a '\n' is appended) to the worker's stdin without blocking.
  // Errors: INVALID_ARGUMENT if `line` contains '\n' or is longer than PIPE_BUF - 1 bytes (so
  // that every line is written whole); FAILED_PRECONDITION after exit or when the worker has
  // closed its stdin (EPIPE); UNAVAILABLE when the pipe is full (the worker is not reading).
  absl::Status SendControl(const std::string& line);
  // SIGTERM to the process group now, SIGKILL if it has not exited after `grace_seconds`.
  // Returns at once; on_exit reports the outcome. Calling it again re-sends SIGTERM and the
  // earliest SIGKILL deadline wins. No-op after the worker has been reaped.
  void Terminate(double grace_seconds);
  // SIGKILL to the process group now. No-op after the worker has been reaped.
  void Kill();
  // Blocks until on_exit has run. Must not be called from a callback.
  void WaitForExit();
  // True once on_exit has returned (so WaitForExit would not block).
  bool exited() const;

 private:
  WorkerProcess() = default;
  void ReadEvents();      // the reader thread: reads fd, dispatches, reaps, calls on_exit
  void KillAtDeadline();  // the killer thread: SIGKILL at kill_deadline_ unless reaped first
  // Reads what the event pipe holds now; false at EOF or on a read error.
  bool ReadAvailable();
  void DispatchLine(const std::string& line);
  void SignalGroupLocked(int sig) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  WorkerOptions options_;
  pid_t pid_ = -1;
  int event_fd_ = -1;        // read end of the event pipe (non-blocking); owned by the reader
  int pid_fd_ = -1;          // pidfd of the worker, or -1 where pidfd_open is unavailable
  std::string partial_;      // reader thread only: an event line not yet ended by '\n'
  bool discarding_ = false;  // reader thread only: skipping the rest of an over-long line
  std::thread reader_;
  std::thread killer_ ABSL_GUARDED_BY(mu_);  // the SIGKILL timer of Terminate
  mutable absl::Mutex mu_;
  int control_fd_ ABSL_GUARDED_BY(mu_) = -1;  // write end of the stdin pipe (non-blocking)
  // Set (with mu_ held) right after waitpid: from then on pid_ may name another process, so
  // nothing may signal it.
  bool reaped_ ABSL_GUARDED_BY(mu_) = false;
  bool exited_ ABSL_GUARDED_BY(mu_) = false;  // on_exit has returned
  absl::Time kill_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
};

}  // namespace slim::server
