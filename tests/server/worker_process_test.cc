// WorkerProcess against fake workers: small /bin/sh scripts written to the test's temp dir.
// Synchronisation is by events the scripts write to fd 3 and by WaitForExit; the only sleeps
// are inside the scripts. Waits that could hang on a bug have a generous safety timeout.
#include "server/supervise/worker_process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace slim::server {
namespace {

const absl::Duration kSafetyTimeout = absl::Seconds(60);

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// Collects what the callbacks report.
class Recorder {
 public:
  void Attach(WorkerOptions& options) {
    options.on_event = [this](const TrainingEvent& event) {
      absl::MutexLock lock(&mu_);
      events_.push_back(event);
    };
    options.on_exit = [this](const WorkerExit& exit) {
      absl::MutexLock lock(&mu_);
      exits_.push_back(exit);
      events_at_exit_ = events_.size();
    };
  }
  bool WaitForEvents(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n] { return events_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kSafetyTimeout);
  }
  bool WaitForExitCall() {
    absl::MutexLock lock(&mu_);
    auto called = [this] { return !exits_.empty(); };
    return mu_.AwaitWithTimeout(absl::Condition(&called), kSafetyTimeout);
  }
  std::vector<TrainingEvent> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  std::vector<WorkerExit> exits() const {
    absl::MutexLock lock(&mu_);
    return exits_;
  }
  size_t events_at_exit() const {
    absl::MutexLock lock(&mu_);
    return events_at_exit_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<TrainingEvent> events_ ABSL_GUARDED_BY(mu_);
  std::vector<WorkerExit> exits_ ABSL_GUARDED_BY(mu_);
  size_t events_at_exit_ ABSL_GUARDED_BY(mu_) = 0;
};

// Blocks signals in the calling thread for its lifetime, as slimd does for sigwait.
class ScopedSignalBlock {
 public:
  explicit ScopedSignalBlock(std::initializer_list<int> signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : signals) sigaddset(&set, sig);
    pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~ScopedSignalBlock() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

// pidfd_open through syscall(2): Debian 12's <sys/pidfd.h> lacks extern "C".
int PidfdOpen(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// True if the process behind `pidfd` terminates within the safety timeout.
bool WaitForPidfd(int pidfd) {
  pollfd p{pidfd, POLLIN, 0};
  int n;
  do {
    n = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(kSafetyTimeout)));
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

// One line a fake worker writes to fd 3 once it is ready (e.g. its trap is installed).
constexpr char kReady[] =
    "printf '%s\\n' '{\"event\":\"started\",\"step\":0,\"total_steps\":1}' >&3\n";

class WorkerProcessTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& path : files_) std::remove(path.c_str());
  }

  // A per-test path in the temp dir, removed after the test.
  std::string TempPath(const std::string& suffix) {
    const std::string path =
        ::testing::TempDir() + "worker_process_test_" + std::to_string(getpid()) + "_" +
        ::testing::UnitTest::GetInstance()->current_test_info()->name() + suffix;
    std::remove(path.c_str());
    files_.push_back(path);
    return path;
  }

  // Options that run `script` with /bin/sh, logging to this test's log file.
  WorkerOptions ScriptOptions(const std::string& script,
                              const std::vector<std::string>& args = {}) {
    const std::string path = TempPath(".sh");
    WriteFile(path, script);
    WorkerOptions options;
    options.argv = {"/bin/sh", path};
    options.argv.insert(options.argv.end(), args.begin(), args.end());
    options.log_path = log_path_;
    recorder_.Attach(options);
    return options;
  }

  std::unique_ptr<WorkerProcess> StartOrDie(WorkerOptions options) {
    absl::StatusOr<std::unique_ptr<WorkerProcess>> process =
        WorkerProcess::Start(std::move(options));
    EXPECT_TRUE(process.ok()) << process.status();
    return process.ok() ? std::move(process).value() : nullptr;
  }

  // Waits for on_exit and returns its report (the only one: on_exit runs once).
  WorkerExit ExitOf(WorkerProcess& process) {
    if (!recorder_.WaitForExitCall()) {
      ADD_FAILURE() << "on_exit not called";
      process.Kill();  // so that WaitForExit below cannot hang the suite
    }
    process.WaitForExit();
    EXPECT_TRUE(process.exited());
    const std::vector<WorkerExit> exits = recorder_.exits();
    EXPECT_EQ(exits.size(), 1u);
    return exits.empty() ? WorkerExit{} : exits.front();
  }

  Recorder recorder_;  // outlives every WorkerProcess of the test (declared first)
  std::vector<std::string> files_;
  std::string log_path_ = TempPath(".log");
};

TEST_F(WorkerProcessTest, EventsArriveInOrderThenExitZero) {
  auto process = StartOrDie(ScriptOptions(
      "printf '%s\\n' '{\"event\":\"started\",\"step\":0,\"total_steps\":3,\"device\":\"cpu\"}' "
      ">&3\n"
      "printf '%s\\n' '{\"event\":\"progress\",\"step\":1,\"total_steps\":3,\"loss\":2.5}' >&3\n"
      "printf '%s\\n' '{\"event\":\"finished\",\"step\":3,\"total_steps\":3,\"path\":\"m.st\"}' "
      ">&3\n"
      "exit 0\n"));
  ASSERT_NE(process, nullptr);
  EXPECT_GT(process->pid(), 0);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.exit_status, 0);
  EXPECT_EQ(recorder_.events_at_exit(), 3u) << "every event is delivered before on_exit";
  const std::vector<TrainingEvent> events = recorder_.events();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].kind, EventKind::kStarted);
  EXPECT_EQ(events[0].device, "cpu");
  EXPECT_EQ(events[1].kind, EventKind::kProgress);
  EXPECT_EQ(events[1].step, 1);
  EXPECT_EQ(events[1].loss, 2.5);
  EXPECT_EQ(events[2].kind, EventKind::kFinished);
  EXPECT_EQ(events[2].step, 3);
  EXPECT_EQ(events[2].path, "m.st");
}

TEST_F(WorkerProcessTest, MalformedLineBecomesWarningAndLastLineNeedsNoNewline) {
  auto process =
      StartOrDie(ScriptOptions("printf 'this is not json\\n' >&3\n"
                               "printf '\\n' >&3\n"  // empty lines are skipped
                               "printf '%s' '{\"event\":\"progress\",\"step\":7}' >&3\n"));
  ASSERT_NE(process, nullptr);
  EXPECT_EQ(ExitOf(*process).exit_status, 0);
  const std::vector<TrainingEvent> events = recorder_.events();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, EventKind::kWarning);
  EXPECT_EQ(events[0].code, "internal");
  EXPECT_NE(events[0].message.find("'this is not json'"), std::string::npos) << events[0].message;
  EXPECT_GT(events[0].time, 0);
  EXPECT_EQ(events[1].kind, EventKind::kProgress);
  EXPECT_EQ(events[1].step, 7);
}

TEST_F(WorkerProcessTest, FailureExitStatusAndLogTail) {
  WriteFile(log_path_, "line from an earlier run\n");
  auto process =
      StartOrDie(ScriptOptions("echo 'to stdout'\n"
                               "echo 'spec: learning_rate must be > 0' >&2\n"
                               "exit 2\n"));
  ASSERT_NE(process, nullptr);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.exit_status, 2);
  EXPECT_NE(exit.stderr_tail.find("spec: learning_rate must be > 0"), std::string::npos)
      << exit.stderr_tail;
  EXPECT_EQ(ReadFile(log_path_),
            "line from an earlier run\nto stdout\nspec: learning_rate must be > 0\n")
      << "stdout and stderr are appended to the log";
}

TEST_F(WorkerProcessTest, StderrTailIsTheEndOfALongLog) {
  auto process = StartOrDie(
      ScriptOptions("i=0; while [ $i -lt 500 ]; do echo \"filler line $i\"; i=$((i+1)); done\n"
                    "echo 'the last words' >&2\n"
                    "exit 1\n"));
  ASSERT_NE(process, nullptr);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_EQ(exit.exit_status, 1);
  EXPECT_LE(exit.stderr_tail.size(), 2048u);
  EXPECT_GT(exit.stderr_tail.size(), 1000u);
  EXPECT_EQ(exit.stderr_tail.rfind("the last words\n"), exit.stderr_tail.size() - 15);
  EXPECT_EQ(exit.stderr_tail.rfind("filler line ", 0), 0u) << "starts at a line boundary";
}

TEST_F(WorkerProcessTest, TerminateLetsTheWorkerStopEvenIfTheServerBlocksSigterm) {
  std::unique_ptr<WorkerProcess> process;
  {
    // slimd blocks SIGTERM/SIGINT in every thread; the worker must not inherit that mask.
    ScopedSignalBlock block({SIGTERM, SIGINT});
    process = StartOrDie(ScriptOptions(std::string("trap 'echo stopping; exit 75' TERM\n") +
                                       kReady + "while :; do sleep 0.1; done\n"));
  }
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));  // the trap is installed
  process->Terminate(/*grace_seconds=*/60);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.exit_status, 75);
  EXPECT_NE(exit.stderr_tail.find("stopping"), std::string::npos);
}

// Checked on a program that keeps what it inherits (cat), not on sh: dash clears its mask.
TEST_F(WorkerProcessTest, ChildStartsWithCleanSignalState) {
  WorkerOptions options;
  options.argv = {"/bin/cat", "/proc/self/status"};
  options.log_path = log_path_;
  recorder_.Attach(options);
  std::unique_ptr<WorkerProcess> process;
  {
    // As in slimd: SIGTERM/SIGINT blocked for sigwait, SIGPIPE ignored.
    ScopedSignalBlock block({SIGTERM, SIGINT});
    struct sigaction ignore = {};
    struct sigaction old_pipe = {};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ignore, &old_pipe);
    process = StartOrDie(std::move(options));
    sigaction(SIGPIPE, &old_pipe, nullptr);
  }
  ASSERT_NE(process, nullptr);
  ASSERT_EQ(ExitOf(*process).exit_status, 0);
  const std::string status = ReadFile(log_path_);
  auto mask = [&status](const std::string& field) -> unsigned long long {
    const size_t at = status.find("\n" + field + ":\t");
    if (at == std::string::npos) {
      ADD_FAILURE() << field << " missing in " << status;
      return ~0ULL;
    }
    return std::stoull(status.substr(at + field.size() + 3, 16), nullptr, 16);
  };
  EXPECT_EQ(mask("SigBlk"), 0u);
  const unsigned long long ignored = mask("SigIgn");
  for (int sig : {SIGTERM, SIGINT, SIGPIPE}) {
    EXPECT_EQ(ignored & (1ULL << (sig - 1)), 0u) << "signal " << sig << " ignored in the worker";
  }
}

TEST_F(WorkerProcessTest, ChildInheritsOnlyFdsZeroToThree) {
  // A descriptor some other thread opened without O_CLOEXEC must not reach the worker.
  const int leaky = open("/dev/null", O_RDONLY);
  ASSERT_GE(leaky, 0);
  WorkerOptions options;
  options.argv = {"/bin/ls", "/proc/self/fd"};
  options.log_path = log_path_;
  recorder_.Attach(options);
  auto process = StartOrDie(std::move(options));
  close(leaky);
  ASSERT_NE(process, nullptr);
  ASSERT_EQ(ExitOf(*process).exit_status, 0);
  // 0-3 are the worker's; ls lists one more, the directory it is reading.
  EXPECT_EQ(ReadFile(log_path_), "0\n1\n2\n3\n4\n");
}

TEST_F(WorkerProcessTest, TerminateEscalatesToSigkillAfterGrace) {
  auto process = StartOrDie(
      ScriptOptions(std::string("trap '' TERM\n") + kReady + "while :; do sleep 0.1; done\n"));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  process->Terminate(/*grace_seconds=*/0.3);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.signal, SIGKILL);
}

TEST_F(WorkerProcessTest, LaterTerminateWithShorterGraceWins) {
  auto process = StartOrDie(
      ScriptOptions(std::string("trap '' TERM\n") + kReady + "while :; do sleep 0.1; done\n"));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  process->Terminate(/*grace_seconds=*/3600);
  process->Terminate(/*grace_seconds=*/0);
  const WorkerExit exit = ExitOf(*process);
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.signal, SIGKILL);
}

TEST_F(WorkerProcessTest, TerminateSignalsTheWholeProcessGroup) {
  const std::string pid_file = TempPath(".pid");
  // The background sleep keeps SIGTERM's default action; the shell itself ignores it.
  auto process = StartOrDie(ScriptOptions(std::string("sleep 1000 &\n"
                                                      "echo $! > \"$1\"\n"
                                                      "trap '' TERM\n") +
                                              kReady + "while :; do sleep 0.1; done\n",
                                          {pid_file}));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  const pid_t child = std::stoi(ReadFile(pid_file));
  const int child_fd = PidfdOpen(child);  // the sleep is alive: the pid is still its own
  ASSERT_GE(child_fd, 0) << std::strerror(errno);
  process->Terminate(/*grace_seconds=*/3600);
  EXPECT_TRUE(WaitForPidfd(child_fd)) << "the worker's child did not get SIGTERM";
  close(child_fd);
  EXPECT_FALSE(process->exited()) << "the worker ignores SIGTERM";
  process->Kill();
  const WorkerExit exit = ExitOf(*process);
  EXPECT_TRUE(exit.signaled);
  EXPECT_EQ(exit.signal, SIGKILL);
}

TEST_F(WorkerProcessTest, LeftoverChildrenDieWithTheWorkerAndDoNotDelayOnExit) {
  const std::string pid_file = TempPath(".pid");
  // The sleep inherits fd 3, so an EOF on the event pipe would wait for it; it must not.
  auto process = StartOrDie(ScriptOptions(std::string("sleep 1000 &\n"
                                                      "echo $! > \"$1\"\n") +
                                              kReady + "read line\nexit 0\n",
                                          {pid_file}));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  const pid_t child = std::stoi(ReadFile(pid_file));
  const int child_fd = PidfdOpen(child);
  ASSERT_GE(child_fd, 0) << std::strerror(errno);
  ASSERT_TRUE(process->SendControl("go").ok());
  const WorkerExit exit = ExitOf(*process);
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.exit_status, 0);
  EXPECT_TRUE(WaitForPidfd(child_fd)) << "the worker's leftover child is still running";
  close(child_fd);
}

// The worker, a child it started at once (possibly before the priority was lowered) and one it
// starts afterwards all run `nice` steps below the spawning thread (capped at 19).
TEST_F(WorkerProcessTest, NiceLowersThePriorityOfTheWholeGroup) {
  const std::string out = TempPath(".out");
  WorkerOptions options = ScriptOptions(
      "sleep 1000 & first=$!\n"
      "read line\n"  // the test's "go": Start has returned
      "sleep 1000 & second=$!\n"
      "echo $(cut -d' ' -f19 /proc/$$/stat) $(cut -d' ' -f19 /proc/$first/stat) $(cut -d' ' -f19 /proc/$second/stat) "
      "> \"$1\"\n"
      "exit 0\n",
      {out});
  options.nice = 7;
  errno = 0;
  const int base = getpriority(PRIO_PROCESS, 0);
  ASSERT_EQ(errno, 0);
  auto process = StartOrDie(std::move(options));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(process->SendControl("go").ok());
  EXPECT_EQ(ExitOf(*process).exit_status, 0);
  const std::string n = std::to_string(std::min(19, base + 7));
  EXPECT_EQ(ReadFile(out), n + " " + n + " " + n + "\n");
}

TEST_F(WorkerProcessTest, SendControlWritesALineToStdin) {
  const std::string out = TempPath(".out");
  auto process = StartOrDie(ScriptOptions("read line\necho \"got: $line\" > \"$1\"\n", {out}));
  ASSERT_NE(process, nullptr);
  EXPECT_EQ(process->SendControl("two\nlines").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(process->SendControl(std::string(PIPE_BUF, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(process->SendControl("{\"command\":\"stop\"}").ok());
  EXPECT_EQ(ExitOf(*process).exit_status, 0);
  EXPECT_EQ(ReadFile(out), "got: {\"command\":\"stop\"}\n");
  EXPECT_EQ(process->SendControl("late").code(), absl::StatusCode::kFailedPrecondition);
}

// The test binary keeps SIGPIPE's default action, so this also checks that a write to a closed
// pipe does not kill the caller.
TEST_F(WorkerProcessTest, SendControlToAClosedStdinFailsWithoutSigpipe) {
  auto process = StartOrDie(
      ScriptOptions(std::string("exec 0<&-\n") + kReady + "while :; do sleep 0.1; done\n"));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  EXPECT_EQ(process->SendControl("stop").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(process->exited());
  process->Kill();
  EXPECT_TRUE(ExitOf(*process).signaled);
}

TEST_F(WorkerProcessTest, SendControlToAWorkerThatDoesNotReadIsUnavailable) {
  auto process = StartOrDie(ScriptOptions(std::string(kReady) + "while :; do sleep 0.1; done\n"));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  const std::string line(1000, 'x');
  absl::Status status;
  // A pipe holds 64 KiB by default (at most 1 MiB unless raised by root): a bounded loop.
  for (int i = 0; i < 2000 && status.ok(); ++i) status = process->SendControl(line);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  process->Kill();
  EXPECT_TRUE(ExitOf(*process).signaled);
}

TEST_F(WorkerProcessTest, MissingExecutableIsAStartError) {
  WorkerOptions options;
  options.argv = {"/nonexistent/slim-train", "run"};
  options.log_path = log_path_;
  recorder_.Attach(options);
  absl::StatusOr<std::unique_ptr<WorkerProcess>> process = WorkerProcess::Start(options);
  ASSERT_FALSE(process.ok());
  EXPECT_EQ(process.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(process.status().message().find("/nonexistent/slim-train"), std::string::npos);
  EXPECT_NE(process.status().message().find("No such file"), std::string::npos) << process.status();
  EXPECT_TRUE(recorder_.exits().empty());
}

TEST_F(WorkerProcessTest, UnwritableLogIsAStartError) {
  WorkerOptions options = ScriptOptions("exit 0\n");
  options.log_path = "/nonexistent/dir/worker.log";
  absl::StatusOr<std::unique_ptr<WorkerProcess>> process = WorkerProcess::Start(options);
  ASSERT_FALSE(process.ok());
  EXPECT_EQ(process.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(process.status().message().find("/nonexistent/dir/worker.log"), std::string::npos);
}

TEST_F(WorkerProcessTest, EmptyArgvIsInvalid) {
  EXPECT_EQ(WorkerProcess::Start(WorkerOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(WorkerProcessTest, DestroyingARunningWorkerKillsItAndReportsTheExit) {
  auto process = StartOrDie(ScriptOptions(std::string(kReady) + "while :; do sleep 0.1; done\n"));
  ASSERT_NE(process, nullptr);
  ASSERT_TRUE(recorder_.WaitForEvents(1));
  process.reset();
  const std::vector<WorkerExit> exits = recorder_.exits();
  ASSERT_EQ(exits.size(), 1u) << "on_exit has run when the destructor returns";
  EXPECT_TRUE(exits[0].signaled);
  EXPECT_EQ(exits[0].signal, SIGKILL);
}

TEST_F(WorkerProcessTest, DestroyingAnExitedWorkerReturns) {
  auto process = StartOrDie(ScriptOptions("exit 3\n"));
  ASSERT_NE(process, nullptr);
  EXPECT_EQ(ExitOf(*process).exit_status, 3);
  process->Terminate(1);  // no-ops after the exit
  process->Kill();
  process.reset();
  EXPECT_EQ(recorder_.exits().size(), 1u);
}

}  // namespace
}  // namespace slim::server
