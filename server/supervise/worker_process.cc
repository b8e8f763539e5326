#include "server/supervise/worker_process.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/errors.h"

extern char** environ;

namespace slim::server {
namespace {

constexpr size_t kMaxLineBytes = 1 << 20;  // longer event lines are dropped with a warning
constexpr size_t kQuoteBytes = 200;        // how much of a bad line a warning quotes
constexpr size_t kTailBytes = 2048;        // WorkerExit::stderr_tail

// Owns a file descriptor so that every early return of Start closes what it opened.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(-1); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void Reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

absl::Status ErrnoError(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// The child's dup2 actions write fds 0-3, in order. A source descriptor that is itself one of
// 0-3 (possible when the server runs with stdin closed) could be overwritten before it is
// copied, and dup2(fd, fd) has its own CLOEXEC rules; keeping every source at 4 or above
// avoids both.
absl::Status MoveAbove3(UniqueFd& fd) {
  if (fd.get() > 3) return absl::OkStatus();
  const int moved = fcntl(fd.get(), F_DUPFD_CLOEXEC, 4);
  if (moved < 0) return ErrnoError("fcntl(F_DUPFD_CLOEXEC)", errno);
  fd.Reset(moved);
  return absl::OkStatus();
}

absl::Status SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoError("fcntl(O_NONBLOCK)", errno);
  }
  return absl::OkStatus();
}

// RAII for the spawn attribute objects (their destroy functions must run on every path).
struct SpawnSetup {
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  SpawnSetup() {
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
  }
  ~SpawnSetup() {
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;
};

// write(2) that never raises SIGPIPE in this process, whatever its disposition: SIGPIPE for a
// pipe write is directed at the writing thread, so blocking it here and consuming the one the
// write raised leaves other threads and an already-pending SIGPIPE untouched.
ssize_t WriteWithoutSigpipe(int fd, const char* data, size_t size) {
  sigset_t pipe_set, old_mask, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
  sigpending(&pending);
  const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
  ssize_t n;
  do {
    n = write(fd, data, size);
  } while (n < 0 && errno == EINTR);
  const int saved_errno = errno;
  if (n < 0 && saved_errno == EPIPE && !was_pending) {
    const timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  errno = saved_errno;
  return n;
}

// The last ~kTailBytes of the log, starting at a line boundary when the file is longer.
std::string ReadTail(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (fd.get() < 0 || fstat(fd.get(), &st) != 0 || st.st_size <= 0) return "";
  const off_t start = std::max<off_t>(0, st.st_size - static_cast<off_t>(kTailBytes));
  std::string tail(static_cast<size_t>(st.st_size - start), '\0');
  size_t got = 0;
  while (got < tail.size()) {
    const ssize_t n =
        pread(fd.get(), tail.data() + got, tail.size() - got, start + static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  tail.resize(got);
  if (start > 0) {
    const size_t newline = tail.find('\n');
    if (newline != std::string::npos && newline + 1 < tail.size()) tail.erase(0, newline + 1);
  }
  return tail;
}

// A pidfd for `pid`, or -1 (kernels before 5.3). The raw syscall because Debian 12's glibc 2.36
// declares pidfd_open in <sys/pidfd.h> without extern "C", so C++ cannot link against it.
int PidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

TrainingEvent Warning(std::string message) {
  TrainingEvent event;
  event.kind = EventKind::kWarning;
  event.time = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  event.code = ErrorCodeName(ErrorCode::kInternal);
  event.message = std::move(message);
  return event;
}

std::string Quote(const std::string& line) {
  if (line.size() <= kQuoteBytes) return absl::StrCat("'", line, "'");
  return absl::StrCat("'", line.substr(0, kQuoteBytes), "...' (", line.size(), " bytes)");
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(WorkerOptions options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return absl::InvalidArgumentError("WorkerOptions.argv must name the executable");
  }

  // All descriptors are O_CLOEXEC from birth, so a worker spawned concurrently from another
  // thread never inherits this one's pipe ends.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoError("pipe2 (control)", errno);
  UniqueFd control_read(fds[0]), control_write(fds[1]);
  if (pipe2(fds, O_CLOEXEC) != 0) return ErrnoError("pipe2 (events)", errno);
  UniqueFd event_read(fds[0]), event_write(fds[1]);
  UniqueFd log(open(options.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644));
  if (log.get() < 0) return ErrnoError(absl::StrCat("open ", options.log_path), errno);
  for (UniqueFd* fd : {&control_read, &event_write, &log}) {
    if (absl::Status s = MoveAbove3(*fd); !s.ok()) return s;
  }
  // Only the server's ends are non-blocking (O_NONBLOCK belongs to the open file description,
  // and each pipe end has its own): the worker sees ordinary blocking stdin and fd 3.
  if (absl::Status s = SetNonBlocking(control_write.get()); !s.ok()) return s;
  if (absl::Status s = SetNonBlocking(event_read.get()); !s.ok()) return s;

  SpawnSetup setup;
  int err = 0;
  // dup2 onto a different fd clears FD_CLOEXEC on the target, so 0-3 survive the exec while the
  // originals (all >= 4) are closed by it.
  auto add_dup2 = [&](int from, int to) {
    if (err == 0) err = posix_spawn_file_actions_adddup2(&setup.actions, from, to);
  };
  add_dup2(control_read.get(), STDIN_FILENO);
  add_dup2(options.on_stdout_line ? event_write.get() : log.get(), STDOUT_FILENO);
  add_dup2(log.get(), STDERR_FILENO);
  add_dup2(event_write.get(), 3);
#if defined(__GLIBC__) && __GLIBC_PREREQ(2, 34)
  // Descriptors that other threads opened without O_CLOEXEC do not leak into the worker.
  if (err == 0) err = posix_spawn_file_actions_addclosefrom_np(&setup.actions, 4);
#endif
  if (err != 0) return ErrnoError("posix_spawn_file_actions", err);

  // Own process group (so Terminate/Kill reach the worker's children), and a clean signal
  // state: slimd blocks SIGTERM/SIGINT for sigwait and ignores SIGPIPE, and both the mask and
  // ignored dispositions would otherwise be inherited across exec — a worker that cannot see
  // SIGTERM cannot checkpoint and stop.
  sigset_t empty_mask, defaults;
  sigemptyset(&empty_mask);
  sigemptyset(&defaults);
  for (int sig : {SIGTERM, SIGINT, SIGPIPE, SIGHUP, SIGQUIT}) sigaddset(&defaults, sig);
  err = posix_spawnattr_setflags(
      &setup.attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  if (err == 0) err = posix_spawnattr_setpgroup(&setup.attr, 0);
  if (err == 0) err = posix_spawnattr_setsigmask(&setup.attr, &empty_mask);
  if (err == 0) err = posix_spawnattr_setsigdefault(&setup.attr, &defaults);
  if (err != 0) return ErrnoError("posix_spawnattr", err);

  std::vector<char*> argv;
  argv.reserve(options.argv.size() + 1);
  for (std::string& arg : options.argv) argv.push_back(arg.data());
  argv.push_back(nullptr);

  pid_t pid = -1;
  // glibc runs the child with CLONE_VFORK and reports a failed exec (missing file, not
  // executable) here, as the return value, rather than through a child exiting 127.
  const auto spawn = [&] { err = posix_spawn(&pid, argv[0], &setup.actions, &setup.attr, argv.data(), environ); };
  if (options.nice > 0) {
    // Linux keeps a niceness per thread, and a new process takes its spawning thread's. A
    // short-lived thread lowers its own priority (always permitted) and spawns, so the worker
    // starts at it and everything it forks inherits it. (Lowering the group's priority after the
    // spawn missed a child the worker forked at that moment.)
    errno = 0;
    const int base = getpriority(PRIO_PROCESS, 0);
    const int niceness = std::min(19, (errno == 0 ? base : 0) + options.nice);
    std::thread spawner([&] {
      if (setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), niceness) != 0) {
        std::fprintf(stderr, "slimd: cannot lower the priority of a worker: %s\n", std::strerror(errno));
      }
      spawn();
    });
    spawner.join();
  } else {
    spawn();
  }
  if (err != 0) return ErrnoError(absl::StrCat("cannot start ", options.argv[0]), err);

  // The child holds its own copies now; closing ours lets EOF on fd 3 and EPIPE on stdin mean
  // what they say.
  control_read.Reset(-1);
  event_write.Reset(-1);
  log.Reset(-1);

  std::unique_ptr<WorkerProcess> process(new WorkerProcess());
  process->options_ = std::move(options);
  process->pid_ = pid;
  process->event_fd_ = event_read.release();
  // The pidfd tells the reader that the worker exited even while a grandchild still holds fd 3
  // open. Without it (kernels before 5.3) the reader waits for EOF instead.
  process->pid_fd_ = PidfdOpen(pid);
  {
    absl::MutexLock lock(&process->mu_);
    process->control_fd_ = control_write.release();
  }
  process->reader_ = std::thread(&WorkerProcess::ReadEvents, process.get());
  return process;
}

WorkerProcess::~WorkerProcess() {
  {
    absl::MutexLock lock(&mu_);
    SignalGroupLocked(SIGKILL);  // no-op once reaped
  }
  if (reader_.joinable()) reader_.join();
  std::thread killer;
  {
    absl::MutexLock lock(&mu_);
    killer = std::move(killer_);
  }
  // The killer returns as soon as it sees reaped_, which the reader has set.
  if (killer.joinable()) killer.join();
}

absl::Status WorkerProcess::SendControl(const std::string& line) {
  if (line.find('\n') != std::string::npos) {
    return absl::InvalidArgumentError("control line must not contain '\\n'");
  }
  // Up to PIPE_BUF bytes a pipe write is atomic: all of it or (non-blocking) none of it, so a
  // full pipe can never leave half a line behind.
  if (line.size() + 1 > PIPE_BUF) {
    return absl::InvalidArgumentError(
        absl::StrCat("control line is ", line.size(), " bytes; at most ", PIPE_BUF - 1));
  }
  const std::string data = line + '\n';
  // mu_ is held across the write (it cannot block: the fd is non-blocking) so the reader
  // cannot close control_fd_ under it and have the number reused.
  absl::MutexLock lock(&mu_);
  if (reaped_ || control_fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat("worker ", pid_, " has exited"));
  }
  const ssize_t n = WriteWithoutSigpipe(control_fd_, data.data(), data.size());
  if (n == static_cast<ssize_t>(data.size())) return absl::OkStatus();
  if (n >= 0) {  // cannot happen for writes of at most PIPE_BUF bytes
    return absl::InternalError(absl::StrCat("short write to worker ", pid_, "'s stdin"));
  }
  if (errno == EPIPE) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker ", pid_, " has exited or closed its stdin"));
  }
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    return absl::UnavailableError(
        absl::StrCat("worker ", pid_, " is not reading its stdin (control pipe full)"));
  }
  return ErrnoError(absl::StrCat("write to worker ", pid_, "'s stdin"), errno);
}

void WorkerProcess::Terminate(double grace_seconds) {
  absl::MutexLock lock(&mu_);
  if (reaped_) return;
  SignalGroupLocked(SIGTERM);
  // !(x > 0) also catches NaN.
  const absl::Duration grace =
      grace_seconds > 0 ? absl::Seconds(grace_seconds) : absl::ZeroDuration();
  kill_deadline_ = std::min(kill_deadline_, absl::Now() + grace);
  if (!killer_.joinable()) killer_ = std::thread(&WorkerProcess::KillAtDeadline, this);
}

void WorkerProcess::Kill() {
  absl::MutexLock lock(&mu_);
  SignalGroupLocked(SIGKILL);
}

void WorkerProcess::WaitForExit() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&exited_));
}

bool WorkerProcess::exited() const {
  absl::MutexLock lock(&mu_);
  return exited_;
}

void WorkerProcess::SignalGroupLocked(int sig) {
  // After waitpid the pid (and so the group id) may already belong to someone else.
  if (reaped_) return;
  kill(-pid_, sig);
}

void WorkerProcess::KillAtDeadline() {
  absl::MutexLock lock(&mu_);
  while (!reaped_) {
    const absl::Time deadline = kill_deadline_;
    // Wake early if the worker is reaped or a later Terminate brought the deadline forward.
    auto woken = [this, deadline] { return reaped_ || kill_deadline_ < deadline; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&woken), deadline)) {
      SignalGroupLocked(SIGKILL);
      return;
    }
  }
}

void WorkerProcess::ReadEvents() {
  pollfd fds[2] = {{event_fd_, POLLIN, 0}, {pid_fd_, POLLIN, 0}};
  const nfds_t nfds = pid_fd_ >= 0 ? 2 : 1;
  for (;;) {
    if (poll(fds, nfds, -1) < 0) {
      if (errno == EINTR) continue;
      break;  // cannot happen with valid fds; go on to reap rather than spin
    }
    if (fds[0].revents != 0 && !ReadAvailable()) break;  // EOF: every writer is gone
    if (nfds == 2 && fds[1].revents != 0) {
      // The worker is dead, so everything it wrote is already in the pipe (a writer blocked
      // on a full pipe cannot exit). Take that and stop, instead of waiting for an EOF that a
      // grandchild holding fd 3 could delay forever.
      ReadAvailable();
      break;
    }
  }
  if (!partial_.empty() && !discarding_) DispatchLine(partial_);  // unterminated last line
  partial_.clear();
  close(event_fd_);
  event_fd_ = -1;

  // Wait for the exit without reaping: the zombie keeps pid_ and the group id from being
  // reused while the group is cleaned up below. Blocking here is only possible in the EOF
  // path (the worker closed fd 3 but is still running), and it holds no lock.
  siginfo_t info;
  int wait_result;
  do {
    wait_result = waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT);
  } while (wait_result < 0 && errno == EINTR);

  WorkerExit result;
  {
    absl::MutexLock lock(&mu_);
    int status = 0;
    pid_t reaped = -1;
    if (wait_result == 0) {
      SignalGroupLocked(SIGKILL);  // stragglers of the group must not outlive the worker
      do {
        reaped = waitpid(pid_, &status, 0);
      } while (reaped < 0 && errno == EINTR);
    }
    reaped_ = true;
    if (reaped == pid_ && WIFSIGNALED(status)) {
      result.signaled = true;
      result.signal = WTERMSIG(status);
    } else if (reaped == pid_ && WIFEXITED(status)) {
      result.exit_status = WEXITSTATUS(status);
    } else {
      result.exit_status = -1;  // reaped by someone else (SIGCHLD ignored?)
    }
    if (control_fd_ >= 0) close(control_fd_);
    control_fd_ = -1;
  }
  if (pid_fd_ >= 0) close(pid_fd_);
  pid_fd_ = -1;
  result.stderr_tail = ReadTail(options_.log_path);
  if (options_.on_exit) options_.on_exit(result);
  absl::MutexLock lock(&mu_);
  exited_ = true;
}

bool WorkerProcess::ReadAvailable() {
  char buf[64 * 1024];
  for (;;) {
    const ssize_t n = read(event_fd_, buf, sizeof buf);
    if (n == 0) return false;
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    const char* p = buf;
    const char* const end = buf + n;
    while (p < end) {
      const char* newline = static_cast<const char*>(std::memchr(p, '\n', end - p));
      const char* stop = newline != nullptr ? newline : end;
      if (!discarding_) {
        partial_.append(p, stop);
        if (partial_.size() > kMaxLineBytes) {
          DispatchLine(partial_);  // reported as malformed below, quoting its start
          partial_.clear();
          discarding_ = true;
        }
      }
      if (newline == nullptr) break;
      if (!discarding_) DispatchLine(partial_);
      partial_.clear();
      discarding_ = false;
      p = newline + 1;
    }
  }
}

void WorkerProcess::DispatchLine(const std::string& line) {
  if (options_.on_stdout_line) {
    if (line.size() <= kMaxLineBytes) options_.on_stdout_line(line);
    return;
  }
  if (line.empty()) return;
  TrainingEvent event;
  if (line.size() > kMaxLineBytes) {
    event = Warning(absl::StrCat("worker event line longer than ", kMaxLineBytes,
                                 " bytes dropped: ", Quote(line)));
  } else {
    try {
      event = EventFromJson(line);
    } catch (const std::exception& e) {
      event = Warning(absl::StrCat("malformed worker event line (", e.what(), "): ", Quote(line)));
    }
  }
  if (options_.on_event) options_.on_event(event);
}

}  // namespace slim::server
