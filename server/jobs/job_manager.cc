#include "server/jobs/job_manager.h"

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
#include "server/common/cpu_cores.h"
#include "base/sha256.h"
#include "server/common/status_macros.h"
#include "server/supervise/worker_process.h"

namespace slim::server {
namespace {

namespace fs = std::filesystem;

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

absl::Status FromEngineError(const EngineError& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: return absl::InvalidArgumentError(e.what());
    case ErrorCode::kResourceExhausted: return absl::ResourceExhaustedError(e.what());
    case ErrorCode::kInternal: return absl::InternalError(e.what());
  }
  return absl::InternalError(e.what());
}

// Marks `job` FAILED with `error`; `code` classifies it for clients (Job.error_code).
void SetFailed(v1::Job* job, absl::StatusCode code, const std::string& error) {
  job->set_state(v1::JOB_STATE_FAILED);
  job->set_error(error);
  job->set_error_code(static_cast<int>(code));
}

// The worker protocol's error code names (docs/worker-protocol.md) as status codes.
absl::StatusCode WorkerErrorCode(const std::string& name) {
  return static_cast<absl::StatusCode>(GrpcCode(ErrorCodeFromName(name)));
}

std::string QuotaCommand(int64_t quota_bytes) {
  ControlCommand c;
  c.kind = ControlCommand::Kind::kSetQuota;
  c.quota_bytes = quota_bytes;
  return ControlToJson(c);
}

std::string ThreadsCommand(int64_t threads) {
  ControlCommand c;
  c.kind = ControlCommand::Kind::kSetThreads;
  c.threads = threads;
  return ControlToJson(c);
}

google::protobuf::Timestamp Now() {
  const int64_t micros = absl::ToUnixMicros(absl::Now());
  google::protobuf::Timestamp t;
  t.set_seconds(micros / 1000000);
  t.set_nanos(static_cast<int32_t>(micros % 1000000) * 1000);
  return t;
}

// "RUNNING" for JOB_STATE_RUNNING: the name people see in messages.
std::string StateName(v1::JobState s) { return v1::JobState_Name(s).substr(std::strlen("JOB_STATE_")); }

// The job has no devices any more (it went back to the queue).
void ClearPlacement(v1::Job* job) {
  job->set_device("");
  job->clear_devices();
}

// Data-parallel ranks of a job (1 for an ordinary job).
int Workers(const v1::JobSpec& spec) { return std::max(1, spec.data_parallel().workers()); }

// Memory a job commits on all its devices together: its quota is per worker.
int64_t CommittedBytes(const v1::Job& job) { return job.quota_bytes() * Workers(job.spec()); }

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<int> PageSize(int requested) {
  if (requested < 0 || requested > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: must be in [0, ", kMaxPageSize, "], got ", requested));
  }
  return requested == 0 ? kDefaultPageSize : requested;
}

v1::JobEvent Event(const std::string& kind, const std::string& message = "") {
  v1::JobEvent e;
  e.set_kind(kind);
  e.set_message(message);
  *e.mutable_time() = Now();
  return e;
}


bool IsCpuDevice(const std::string& device) { return device.rfind("cpu", 0) == 0; }

// "cpu:1" → "cpu" (declared CPU devices share the process's CPU), "cuda:0" stays.
std::string WorkerDevice(const std::string& device) { return IsCpuDevice(device) ? "cpu" : device; }

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError("cannot write " + tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError("cannot write " + path + ": " + ec.message());
  return absl::OkStatus();
}

// Model.config_json: the model file's config metadata.
std::string ConfigJson(const ModelSummary& summary) {
  Json o = JsonObject();
  for (const auto& [k, v] : summary.config) o.members[k] = JsonString(v);
  return SerializeJson(o);
}

// A process that has not exited (a zombie's command line is empty).
bool ProcessRuns(long pid) {
  std::ifstream now("/proc/" + std::to_string(pid) + "/cmdline");
  return now.good() && now.peek() != std::ifstream::traits_type::eof();
}

// Workers left by a server that was killed (or, in a fleet, by a replica that lost the job):
// their pids are in <job dir>/worker.pid, one per line (one per rank of a data-parallel job).
// Each that runs slim-train on this job directory on this machine has its process group ended
// and is waited for, so that the resumed workers are alone in the job directory. (A pid
// written on another machine names nothing here, or a process whose command line does not
// name this directory.)
void KillOrphanedWorkers(const std::string& job_dir) {
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

// The store listing for `caller`: its tenant's records (and shared models), or all for admins.
ListScope Scope(const Principal& caller) { return caller.admin() ? ListScope::All() : ListScope::Of(caller.tenant); }

// One page of what `caller` may see. The store lists the caller's tenant only (Scope), so one
// fetch fills a page; `visible` checks again. Store pages are fetched with the size still
// missing, so every fetched item is either returned or skipped for good and the store's page
// token stays exact.
template <typename T, typename Fetch>
absl::StatusOr<Page<T>> VisiblePage(int page_size, std::string token, const Fetch& fetch,
                                    const std::function<bool(const T&)>& visible) {
  Page<T> out;
  while (true) {
    ASSIGN_OR_RETURN(Page<T> page, fetch(page_size - static_cast<int>(out.items.size()), token));
    for (T& item : page.items) {
      if (visible(item)) out.items.push_back(std::move(item));
    }
    token = page.next_page_token;
    if (token.empty() || static_cast<int>(out.items.size()) == page_size) {
      out.next_page_token = token;
      return out;
    }
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
bool JobManager::OwnFailure(const Rank& k) {
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
  int64_t fence_epoch = 0;    // fence_epoch_ at launch: a later one means self-fencing killed it
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

JobManager::JobManager(Store& store, JobManagerOptions options, JobObserver* observer)
    : store_(store),
      options_(std::move(options)),
      observer_(observer),
      cpu_thread_budget_(options_.worker_cpu_threads < 0   ? 0
                         : options_.worker_cpu_threads > 0 ? options_.worker_cpu_threads
                                                           : AvailableCpuCores()),
      engine_(EngineCommandsOptions{options_.worker_binary, options_.calibration_cache_dir, TempDir()}) {}

JobManager::~JobManager() { Shutdown(); }

std::string JobManager::TempDir() const {
  const fs::path tmp = fs::path(options_.data_dir) / "tmp";
  return (fleet() ? tmp / options_.replica_id : tmp).string();
}

absl::Status JobManager::Start() {
  for (const std::string& dir : {std::string("datasets"), std::string("models"), std::string("jobs"), TempDir()}) {
    std::error_code ec;
    fs::create_directories(fs::path(options_.data_dir) / dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", options_.data_dir, "/", dir, ": ", ec.message()));
  }
  // Uploads in progress when a previous server stopped are incomplete: remove them (in a
  // fleet only this replica's: the others' may be in progress).
  for (const auto& entry : fs::directory_iterator(TempDir())) {
    std::error_code ec;
    if (entry.is_regular_file(ec)) fs::remove(entry.path(), ec);
  }
  if (fleet()) {
    // Listening first: nothing recorded by another replica from here on goes unheard.
    RETURN_IF_ERROR(store_.Listen([this](const StoreNotification& n) { OnStoreNotification(n); }));
    const auto asked = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(const std::vector<JobLease> owned, store_.RenewLeases(Lease()));
    NoteRenewal(asked);
    RETURN_IF_ERROR(store_.PublishDevices(DeclaredDevices()));
    {
      // This replica id's jobs from before a restart: their workers are gone or are killed
      // here; the others' jobs are theirs until their leases expire.
      absl::MutexLock lock(&mu_);
      devices_published_at_ = std::chrono::steady_clock::now();
      for (const JobLease& lease : owned) SettleOwnedJob(lease, "the server restarted; resuming from the last checkpoint");
    }
    lease_thread_ = std::thread([this] { LeaseLoop(); });
    fence_thread_ = std::thread([this] { FenceLoop(); });
    scheduler_ = std::thread([this] { SchedulerLoop(); });
    return absl::OkStatus();
  }
  // A previous server's running jobs: their workers are gone (they die with the server's
  // process group or were killed); resume them from their last checkpoints.
  ASSIGN_OR_RETURN(const std::vector<v1::Job> left,
                   store_.JobsInStates({v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  {
    absl::MutexLock lock(&mu_);
    for (v1::Job job : left) {
      KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / job.id()).string());
      const bool cancelling = job.state() == v1::JOB_STATE_CANCELLING;
      job.set_state(cancelling ? v1::JOB_STATE_CANCELLED : v1::JOB_STATE_QUEUED);
      ClearPlacement(&job);
      if (cancelling) *job.mutable_end_time() = Now();
      RETURN_IF_ERROR(Record(job, Event(cancelling ? "cancelled" : "requeued",
                                        cancelling ? "the server restarted during cancellation"
                                                   : "the server restarted; resuming from the last checkpoint"))
                          .status());
    }
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  return absl::OkStatus();
}

void JobManager::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    draining_ = true;
    for (auto& [id, r] : running_) {
      r->draining = true;
      r->TerminateAll(options_.cancel_grace_seconds);
    }
    // Workers checkpoint and exit; OnWorkerExit removes them. (In a fleet the lease thread
    // keeps their leases meanwhile.)
    const auto all_exited = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&all_exited), absl::Seconds(options_.cancel_grace_seconds + 10));
    stopping_ = true;
    wake_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
  if (lease_thread_.joinable()) {
    {
      absl::MutexLock lock(&fence_mu_);
      lease_stop_ = true;
    }
    lease_thread_.join();
  }
  if (fence_thread_.joinable()) fence_thread_.join();
  std::vector<std::unique_ptr<WorkerProcess>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : reserved_) (void)store_.ReleaseJob(id);  // others may run them now
    reserved_.clear();
    finished.swap(finished_workers_);
    for (auto& [id, r] : running_) {
      for (Rank& k : r->ranks) {
        if (k.worker != nullptr) finished.push_back(std::move(k.worker));  // still alive: killed
      }
    }
    running_.clear();
    absl::MutexLock fence(&fence_mu_);
    live_workers_.clear();
  }
  finished.clear();
  stopped_ = true;
  store_.StopListening();
  NotifyAllWatchers();
}

// ---------------------------------------------------------------------------------------------
// Specs and plans

absl::StatusOr<JobSpec> JobManager::ResolveSpec(const v1::JobSpec& api, const Principal& caller,
                                                std::string* device_kind) {
  Json doc = JsonObject();
  Json model = JsonObject();
  if (!api.model().base().empty()) {
    ASSIGN_OR_RETURN(const std::string path, ModelPath(api.model().base(), caller));
    model.members["base"] = JsonString(path);
  }
  if (!api.model().preset().empty()) model.members["preset"] = JsonString(api.model().preset());
  if (api.model().init_seed() != 0) model.members["init_seed"] = JsonNumber(static_cast<double>(api.model().init_seed()));
  doc.members["model"] = model;

  Json data = JsonObject();
  const auto sources = [&](const google::protobuf::RepeatedPtrField<v1::DataRef>& refs,
                           const std::string& field) -> absl::StatusOr<Json> {
    Json list = JsonArray();
    for (int i = 0; i < refs.size(); ++i) {
      const v1::DataRef& ref = refs[i];
      if (ref.dataset().empty()) {
        return absl::InvalidArgumentError(absl::StrCat("spec: data.", field, "[", i, "].dataset: is required"));
      }
      absl::StatusOr<v1::Dataset> dataset = store_.GetDataset(ref.dataset());
      if (!dataset.ok() || !caller.Sees(dataset->tenant())) {
        return absl::NotFoundError(absl::StrCat("spec: data.", field, "[", i, "].dataset: no dataset '", ref.dataset(), "'"));
      }
      Json source = JsonObject();
      source.members["path"] = JsonString((fs::path(options_.data_dir) / "datasets" / dataset->id()).string());
      source.members["format"] = JsonString(ref.format().empty() ? dataset->format() : ref.format());
      if (!ref.text_field().empty()) source.members["text_field"] = JsonString(ref.text_field());
      list.items.push_back(source);
    }
    return list;
  };
  if (api.data().train_size() > 0) {
    ASSIGN_OR_RETURN(data.members["train"], sources(api.data().train(), "train"));
  }
  if (api.data().validation_size() > 0) {
    ASSIGN_OR_RETURN(data.members["validation"], sources(api.data().validation(), "validation"));
  }
  if (api.data().validation_fraction() != 0) data.members["validation_fraction"] = JsonNumber(api.data().validation_fraction());
  if (api.data().seed() != 0) data.members["seed"] = JsonNumber(static_cast<double>(api.data().seed()));
  doc.members["data"] = data;

  // Proto3 zero values mean "not set": only the fields that were given go into the document,
  // so the spec reader applies its defaults and its range checks to exactly what the user sent.
  const auto put = [](Json* o, const char* key, double v) {
    if (v != 0) o->members[key] = JsonNumber(v);
  };
  const auto put_str = [](Json* o, const char* key, const std::string& v) {
    if (!v.empty()) o->members[key] = JsonString(v);
  };
  const v1::TrainingSpec& t = api.training();
  Json training = JsonObject();
  put(&training, "seq_len", t.seq_len());
  put(&training, "batch_size", t.batch_size());
  put(&training, "grad_accum", t.grad_accum());
  put(&training, "steps", t.steps());
  put(&training, "epochs", t.epochs());
  put(&training, "grad_clip", t.grad_clip());
  put_str(&training, "precision", t.precision());
  put_str(&training, "tuning", t.tuning());
  if (t.has_optimizer()) {
    Json o = JsonObject();
    put_str(&o, "name", t.optimizer().name());
    put(&o, "lr", t.optimizer().lr());
    put(&o, "weight_decay", t.optimizer().weight_decay());
    put(&o, "beta1", t.optimizer().beta1());
    put(&o, "beta2", t.optimizer().beta2());
    put(&o, "eps", t.optimizer().eps());
    put(&o, "momentum", t.optimizer().momentum());
    training.members["optimizer"] = o;
  }
  if (t.has_schedule()) {
    Json s = JsonObject();
    put_str(&s, "name", t.schedule().name());
    put(&s, "warmup_steps", t.schedule().warmup_steps());
    put(&s, "min_lr_ratio", t.schedule().min_lr_ratio());
    training.members["schedule"] = s;
  }
  if (t.has_lora()) {
    Json l = JsonObject();
    put(&l, "rank", t.lora().rank());
    put(&l, "alpha", t.lora().alpha());
    if (t.lora().targets_size() > 0) {
      Json targets = JsonArray();
      for (const std::string& name : t.lora().targets()) targets.items.push_back(JsonString(name));
      l.members["targets"] = targets;
    }
    training.members["lora"] = l;
  }
  doc.members["training"] = training;

  const v1::MemorySpec& m = api.memory();
  if (!m.device_kind().empty() && m.device_kind() != "cpu" && m.device_kind() != "cuda") {
    return absl::InvalidArgumentError("spec: memory.device_kind: unknown value '" + m.device_kind() +
                                      "' (allowed: cpu, cuda, or empty for any)");
  }
  *device_kind = m.device_kind().empty() ? options_.devices.front().kind : m.device_kind();
  Json memory = JsonObject();
  put_str(&memory, "quota", m.quota());
  put(&memory, "chunk_size", m.chunk_size());
  put_str(&memory, "mode", m.mode());
  // The device is decided at placement; plan on the first device of the kind. Without a quota
  // the default policy supplies one (Plan), so validation sees a placeholder quota.
  memory.members["device"] = JsonString(*device_kind == "cuda" ? "cuda:0" : "cpu");
  if (m.quota().empty() && m.chunk_size() == 0) memory.members["quota"] = JsonNumber(1);
  doc.members["memory"] = memory;

  Json eval = JsonObject();
  put(&eval, "every", api.eval().every());
  put(&eval, "max_sequences", api.eval().max_sequences());
  doc.members["eval"] = eval;
  Json checkpoint = JsonObject();
  checkpoint.members["every"] = JsonNumber(api.checkpoint().every() != 0 ? api.checkpoint().every() : options_.checkpoint_every);
  put(&checkpoint, "keep", api.checkpoint().keep());
  doc.members["checkpoint"] = checkpoint;
  if (api.data_parallel().workers() != 0) {
    Json parallel = JsonObject();
    parallel.members["workers"] = JsonNumber(api.data_parallel().workers());
    doc.members["data_parallel"] = parallel;
  }

  try {
    JobSpec spec = JobSpecFromJson(doc);
    if (m.quota().empty()) spec.quota_bytes = 0;  // the placeholder above; Plan applies the policy
    return spec;
  } catch (const EngineError& e) {
    return FromEngineError(e);
  }
}

v1::ListDevicesResponse JobManager::DeclaredDevices() const {
  v1::ListDevicesResponse response;
  for (const DeviceCapacity& d : options_.devices) {
    v1::Device* device = response.add_devices();
    device->set_name(d.name);
    device->set_kind(d.kind);
    device->set_capacity_bytes(d.capacity_bytes);
  }
  return response;
}

JobManager::KindCapacity JobManager::CapacityOf(const std::string& kind) {
  KindCapacity capacity;
  const auto add = [&](const v1::ListDevicesResponse& server) {
    int count = 0;
    for (const v1::Device& d : server.devices()) {
      if (d.kind() != kind) continue;
      capacity.largest = std::max(capacity.largest, d.capacity_bytes());
      ++count;
    }
    capacity.most_on_one_server = std::max(capacity.most_on_one_server, count);
  };
  add(DeclaredDevices());
  capacity.here = capacity.largest > 0;
  if (!fleet()) return capacity;
  // Every live replica's devices (published with their lease renewals); without the store,
  // this replica's own.
  absl::StatusOr<std::vector<v1::ListDevicesResponse>> fleet_devices = store_.FleetDevices(Lease());
  if (fleet_devices.ok()) {
    for (const v1::ListDevicesResponse& replica : *fleet_devices) add(replica);
  }
  return capacity;
}

absl::StatusOr<v1::PlanJobResponse> JobManager::Plan(const JobSpec& spec, const std::string& kind, bool quota_given) {
  const KindCapacity capacity = CapacityOf(kind);
  // Planning calibrates on a device of the kind here.
  if (!capacity.here) return absl::FailedPreconditionError("spec: memory.device_kind: this server has no " + kind + " device");
  // slim-train plans with the worker's own planner; without a quota (spec.quota_bytes 0) it
  // applies the default policy (docs/service.md), capped at the largest device of the kind.
  JobSpec planned = spec;
  if (!quota_given) planned.quota_bytes = 0;
  ASSIGN_OR_RETURN(const AdmissionPlan plan, engine_.Plan(planned, capacity.largest));
  v1::PlanJobResponse response;
  response.set_device_kind(kind);
  response.set_quota_bytes(plan.quota_bytes);
  response.set_min_quota_bytes(plan.min_quota_bytes);
  response.set_feasible(plan.feasible && plan.quota_bytes <= capacity.largest);
  if (plan.chunk_size > 0) {
    response.set_chunk_size(plan.chunk_size);
    response.set_mode(StartStateModeName(plan.mode));
    response.set_predicted_peak_bytes(plan.predicted_peak_bytes);
    response.set_est_step_seconds(plan.est_step_seconds);
  }
  response.set_total_steps(spec.steps);
  return response;
}

absl::StatusOr<v1::PlanJobResponse> JobManager::PlanJob(const v1::JobSpec& api, const Principal& caller) {
  std::string kind;
  ASSIGN_OR_RETURN(const JobSpec spec, ResolveSpec(api, caller, &kind));
  return Plan(spec, kind, !api.memory().quota().empty());
}

// ---------------------------------------------------------------------------------------------
// Jobs

absl::StatusOr<v1::Job> JobManager::CreateJob(const v1::CreateJobRequest& request, const Principal& caller) {
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("the server is shutting down; not accepting jobs");
  }
  if (request.display_name().size() > 200) return absl::InvalidArgumentError("display_name: at most 200 characters");
  if (request.priority() < -1000 || request.priority() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("priority: must be in [-1000, 1000], got ", request.priority()));
  }
  std::string kind;
  ASSIGN_OR_RETURN(const JobSpec spec, ResolveSpec(request.spec(), caller, &kind));
  const bool quota_given = !request.spec().memory().quota().empty();
  ASSIGN_OR_RETURN(const v1::PlanJobResponse plan, Plan(spec, kind, quota_given));
  // In a fleet: the devices of every live replica.
  const KindCapacity capacity = CapacityOf(kind);
  const int64_t largest = capacity.largest;
  // The ranks of a data-parallel job run on one server's devices (their rendezvous is a file
  // in the job directory), one device each.
  const int workers = Workers(request.spec());
  if (workers > capacity.most_on_one_server) {
    return absl::FailedPreconditionError(absl::StrCat("spec: data_parallel.workers: ", workers,
                                                      " workers need as many ", kind, " devices; ",
                                                      fleet() ? "the replica with the most has " : "this server has ",
                                                      capacity.most_on_one_server));
  }
  if (plan.quota_bytes() > largest) {
    return absl::ResourceExhaustedError(absl::StrCat("spec: memory.quota: ", FormatBytes(plan.quota_bytes()),
                                                     " is more than the largest ", kind, " device (",
                                                     FormatBytes(largest), ")"));
  }
  if (!plan.feasible()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "spec: memory.quota: ", FormatBytes(plan.quota_bytes()), " cannot fit this job; the minimum is ",
        FormatBytes(plan.min_quota_bytes()), " (min_quota_bytes=", plan.min_quota_bytes(), ")"));
  }
  v1::Job job;
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("job"));
  job.set_id(id);
  job.set_display_name(request.display_name());
  job.set_tenant(caller.tenant);
  job.set_state(v1::JOB_STATE_QUEUED);
  *job.mutable_spec() = request.spec();
  job.set_priority(request.priority());
  job.set_quota_bytes(plan.quota_bytes());
  job.set_requested_quota_bytes(plan.quota_bytes());
  job.set_chunk_size(plan.chunk_size());
  job.set_mode(plan.mode());
  job.set_predicted_peak_bytes(plan.predicted_peak_bytes());
  job.set_min_quota_bytes(plan.min_quota_bytes());
  job.mutable_progress()->set_total_steps(plan.total_steps());
  *job.mutable_create_time() = Now();
  v1::JobEvent queued = Event("queued", absl::StrCat("quota ", FormatBytes(plan.quota_bytes()), ", chunk size ",
                                                         plan.chunk_size(), " (", plan.mode(), "), predicted peak ",
                                                         FormatBytes(plan.predicted_peak_bytes())));
  queued.set_state(v1::JOB_STATE_QUEUED);
  queued.set_quota_bytes(plan.quota_bytes());
  queued.set_chunk_size(plan.chunk_size());
  queued.set_predicted_peak_bytes(plan.predicted_peak_bytes());
  absl::StatusOr<v1::Job> created;
  {
    absl::MutexLock admission(&admission_mu_);
    RETURN_IF_ERROR(CheckJobLimits(caller, plan.quota_bytes() * workers));
    created = store_.CreateJob(job, queued);
  }
  if (created.ok() && observer_ != nullptr) {
    absl::MutexLock lock(&mu_);
    queued.set_sequence(created->last_sequence());
    observer_->OnJobEvent(*created, queued);
  }
  Wake();
  return created;
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Job> job = store_.GetJob(id);
  if (job.ok() && !caller.Sees(job->tenant())) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return job;
}

absl::StatusOr<v1::ListJobsResponse> JobManager::ListJobs(const v1::ListJobsRequest& request, const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  std::vector<v1::JobState> states;
  for (int s : request.states()) {
    if (!v1::JobState_IsValid(s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("states: unknown job state ", s));
    }
    states.push_back(static_cast<v1::JobState>(s));
  }
  ASSIGN_OR_RETURN(Page<v1::Job> page,
                   VisiblePage<v1::Job>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListJobs(states, size, token, Scope(caller)); },
                       [&](const v1::Job& job) { return caller.Sees(job.tenant()); }));
  v1::ListJobsResponse response;
  for (v1::Job& job : page.items) *response.add_jobs() = std::move(job);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(id));
  if (!caller.Sees(job.tenant())) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(job.state()),
                                                      "; only queued or running jobs can be cancelled"));
  }
  if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  const auto it = running_.find(id);
  if (it != running_.end() && !it->second->lost) return CancelRunning(job, "");
  if (!fleet()) return CancelQueued(job, "cancelled while queued");
  // A fleet: the job is queued, or another replica runs it. Reads race with other replicas,
  // so a refused write means "look again".
  for (int attempt = 1;; ++attempt) {
    if (job.state() == v1::JOB_STATE_QUEUED) {
      absl::StatusOr<v1::Job> cancelled = CancelQueued(job, "cancelled while queued");
      if (cancelled.ok() || (cancelled.status().code() != absl::StatusCode::kAborted &&
                             cancelled.status().code() != absl::StatusCode::kFailedPrecondition)) {
        return cancelled;
      }
    }
    // Claimed or run by a replica (possibly this one, between a worker and its record): its
    // owner carries it out within a pass.
    absl::StatusOr<std::string> owner = store_.RequestCancel(id);
    if (owner.ok()) return job;
    if (owner.status().code() != absl::StatusCode::kFailedPrecondition) return owner.status();
    if (attempt == 3) {
      return absl::AbortedError(absl::StrCat("job ", id, " kept changing while being cancelled; try again"));
    }
    ASSIGN_OR_RETURN(job, store_.GetJob(id));
    if (IsTerminal(job.state())) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(job.state()),
                                                        "; only queued or running jobs can be cancelled"));
    }
    if (job.state() == v1::JOB_STATE_CANCELLING) return job;
  }
}

absl::StatusOr<v1::Job> JobManager::CancelQueued(v1::Job job, const std::string& why) {
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.set_queue_position(0);
  *job.mutable_end_time() = Now();
  absl::StatusOr<v1::Job> cancelled = Record(job, Event("cancelled", why));
  if (cancelled.ok()) reserved_.erase(job.id());
  return cancelled;
}

absl::StatusOr<v1::Job> JobManager::CancelRunning(v1::Job job, const std::string& why) {
  Running& r = *running_.at(job.id());
  job.set_state(v1::JOB_STATE_CANCELLING);
  r.cancelling = true;
  r.TerminateAll(options_.cancel_grace_seconds);
  return Record(job, Event("cancelling", "the worker finishes its step, writes a checkpoint and stops" + why));
}

absl::StatusOr<std::vector<v1::JobEvent>> JobManager::Events(const std::string& job_id, int64_t after_sequence,
                                                              int limit) {
  return store_.ListEvents(job_id, after_sequence, limit);
}

int64_t JobManager::Watch(const std::string& job_id, std::function<void()> notify) {
  absl::MutexLock lock(&watch_mu_);
  const int64_t handle = next_watch_++;
  watchers_[handle] = {job_id, std::move(notify)};
  return handle;
}

void JobManager::Unwatch(int64_t handle) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(handle);
}

void JobManager::NotifyWatchers(const std::string& job_id) {
  std::vector<std::function<void()>> to_call;
  {
    absl::MutexLock lock(&watch_mu_);
    for (const auto& [handle, w] : watchers_) {
      if (w.first == job_id) to_call.push_back(w.second);
    }
  }
  for (const auto& f : to_call) f();
}

void JobManager::NotifyAllWatchers() {
  std::vector<std::function<void()>> to_call;
  {
    absl::MutexLock lock(&watch_mu_);
    for (const auto& [handle, w] : watchers_) to_call.push_back(w.second);
  }
  for (const auto& f : to_call) f();
}

void JobManager::OnStoreNotification(const StoreNotification& n) {
  switch (n.kind) {
    case StoreNotification::Kind::kEvent:
      NotifyWatchers(n.job_id);  // often this replica's own event: then a spurious wake-up
      break;
    case StoreNotification::Kind::kQueued:           // claimable now
    case StoreNotification::Kind::kCancelRequested:  // perhaps ours: the pass finds out
      poke_ = true;
      break;
    case StoreNotification::Kind::kResync:
      NotifyAllWatchers();
      poke_ = true;
      break;
  }
}

absl::StatusOr<v1::Job> JobManager::Record(v1::Job job, v1::JobEvent event) {
  event.set_state(job.state());
  if (event.kind() == "progress" || event.kind() == "eval") *event.mutable_progress() = job.progress();
  event.set_device(job.device());
  const v1::JobEvent recorded = event;
  ASSIGN_OR_RETURN(v1::Job stored, store_.UpdateJob(std::move(job), std::move(event)));
  if (observer_ != nullptr) {
    v1::JobEvent with_sequence = recorded;
    with_sequence.set_sequence(stored.last_sequence());
    observer_->OnJobEvent(stored, with_sequence);
  }
  NotifyWatchers(stored.id());
  return stored;
}

v1::ListDevicesResponse JobManager::ListDevices() {
  absl::MutexLock lock(&mu_);
  return DevicesLocked();
}

std::vector<v1::Job> JobManager::JobsForStatus(int recent) {
  std::vector<v1::Job> out;
  absl::StatusOr<std::vector<v1::Job>> active =
      store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING});
  if (active.ok()) out.assign(active->rbegin(), active->rend());
  absl::StatusOr<Page<v1::Job>> ended =
      store_.ListJobs({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}, recent, "");
  if (ended.ok()) out.insert(out.end(), ended->items.begin(), ended->items.end());
  return out;
}

v1::ListDevicesResponse JobManager::DevicesLocked() {
  v1::ListDevicesResponse response;
  for (const DeviceCapacity& d : options_.devices) {
    v1::Device* device = response.add_devices();
    device->set_name(d.name);
    device->set_kind(d.kind);
    device->set_description(d.kind == "cpu" ? "CPU memory declared to the scheduler" : "CUDA GPU");
    device->set_capacity_bytes(d.capacity_bytes);
    for (const auto& [id, r] : running_) {
      const auto on_device = std::find_if(r->ranks.begin(), r->ranks.end(),
                                          [&](const Rank& k) { return k.device == d.name; });
      if (on_device == r->ranks.end()) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(id);
      if (!job.ok()) continue;
      device->add_job_ids(id);
      device->set_committed_bytes(device->committed_bytes() + job->quota_bytes());
      if (on_device == r->ranks.begin()) {  // a data-parallel job's measurements are rank 0's
        device->set_observed_bytes(device->observed_bytes() + job->observed_peak_bytes());
        device->set_current_bytes(device->current_bytes() + job->progress().current_bytes());
      }
    }
    for (const auto& [id, held] : reservations_) {
      if (held.device != d.name) continue;
      device->add_reservations(absl::StrCat(id, " (", FormatBytes(held.bytes), ")"));
      device->set_committed_bytes(device->committed_bytes() + held.bytes);
    }
  }
  return response;
}

class JobManager::ReservationHold {
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
  const std::string& device() const { return device_; }

 private:
  JobManager& manager_;
  const std::string id_, device_;
};

std::map<std::string, int64_t> JobManager::CommittedLocked() {
  std::map<std::string, int64_t> committed;
  for (const auto& [id, r] : running_) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    for (const Rank& k : r->ranks) committed[k.device] += std::max(job->quota_bytes(), r->pending_quota);
  }
  for (const auto& [id, held] : reservations_) committed[held.device] += held.bytes;
  return committed;
}

absl::StatusOr<std::unique_ptr<JobManager::ReservationHold>> JobManager::Reserve(const std::string& kind, int64_t bytes,
                                                                                  const std::string& purpose) {
  absl::MutexLock lock(&mu_);
  const std::map<std::string, int64_t> committed = CommittedLocked();
  const DeviceCapacity* best = nullptr;
  int64_t best_free = 0;
  for (const DeviceCapacity& d : options_.devices) {
    if (d.kind != kind) continue;
    const auto it = committed.find(d.name);
    const int64_t free = d.capacity_bytes - (it == committed.end() ? 0 : it->second);
    if (best == nullptr || free > best_free) best = &d, best_free = free;
  }
  if (best == nullptr) return absl::FailedPreconditionError(absl::StrCat(purpose, ": this server has no ", kind, " device"));
  if (best_free < bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        purpose, ": needs ", FormatBytes(bytes), " of a ", kind, " device and the most any has free is ",
        FormatBytes(std::max<int64_t>(best_free, 0)), " (", best->name,
        "); the rest is committed to jobs. Try again when one ends"));
  }
  const std::string id = absl::StrCat(purpose, "-", next_reservation_++);
  reservations_[id] = {best->name, bytes, purpose};
  wake_ = true;  // the status page and metrics show the new commitment at the next pass
  return std::make_unique<ReservationHold>(*this, id, best->name);
}

// ---------------------------------------------------------------------------------------------
// Scheduling and workers

void JobManager::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void JobManager::SchedulerLoop() {
  while (true) {
    std::vector<std::unique_ptr<WorkerProcess>> finished;
    {
      absl::MutexLock lock(&mu_);
      const auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stopping_ || poke_.load(); };
      mu_.AwaitWithTimeout(absl::Condition(&woken), absl::Seconds(options_.scheduler_interval_seconds));
      if (stopping_) return;
      wake_ = false;
      poke_ = false;
      finished.swap(finished_workers_);
    }
    finished.clear();  // joins their reader threads, outside the lock
    SchedulePass();
  }
}

void JobManager::SchedulePass() {
  absl::MutexLock lock(&mu_);
  if (draining_) return;
  if (fleet()) {
    if (!RenewAndReconcile()) return;
    TakeOverExpiredJobs();
  }
  absl::StatusOr<std::vector<v1::Job>> queued_jobs = store_.JobsInStates({v1::JOB_STATE_QUEUED});
  if (!queued_jobs.ok()) {
    std::fprintf(stderr, "slimd: scheduler: %s\n", queued_jobs.status().ToString().c_str());
    return;
  }
  std::vector<QueuedJob> queued;
  for (const v1::Job& job : *queued_jobs) {
    if (running_.count(job.id())) continue;  // its previous worker has not exited yet
    // A data-parallel job's ranks must share one kind of device (one process group): without
    // a kind, the one CreateJob planned and counted devices for.
    std::string kind = job.spec().memory().device_kind();
    if (kind.empty() && Workers(job.spec()) > 1) kind = options_.devices.front().kind;
    queued.push_back({job.id(), kind, job.priority(), job.quota_bytes(),
                      job.create_time().seconds() * 1000000000 + job.create_time().nanos(), Workers(job.spec())});
  }
  if (!fleet()) {
    // A job this server's devices can never take (it was restarted with fewer or smaller
    // devices) waits, like any other, but says why, once per run of the server. (In a fleet,
    // another replica may have the devices.)
    for (const QueuedJob& q : queued) {
      const std::string why = WhyNeverPlaceable(options_.devices, q);
      if (why.empty() || !never_placeable_.insert(q.id).second) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(q.id);
      if (job.ok()) (void)Record(*job, Event("warning", "cannot be placed on this server's devices: " + why));
    }
  }
  std::vector<RunningJob> running;
  for (const auto& [id, r] : running_) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    // A job with a shrink in flight keeps its old quota committed and is not shrunk again.
    // Data-parallel jobs are never shrunk (server/sched/scheduler.h).
    const bool shrinkable = r->pending_quota == 0 && !r->shrink_refused && !r->cancelling && !r->draining &&
                            !r->data_parallel();
    // A growing job commits its larger quota at once (before the worker may use it); a
    // shrinking one keeps its old quota until the worker confirms.
    const int64_t committed = std::max(job->quota_bytes(), r->pending_quota);
    const bool may_grow = !r->grow_refused && !r->cancelling && !r->draining && !r->data_parallel();
    for (const Rank& k : r->ranks) {
      RunningJob running_job{id, k.device, job->priority(), committed, shrinkable ? job->min_quota_bytes() : 0,
                             job->create_time().seconds() * 1000000000 + job->create_time().nanos()};
      running_job.requested_quota_bytes = may_grow ? job->requested_quota_bytes() : 0;
      running_job.quota_change_pending = r->pending_quota > 0;
      running.push_back(running_job);
    }
  }
  // Reservations hold their memory like jobs that are neither shrunk nor grown.
  for (const auto& [id, held] : reservations_) running.push_back({id, held.device, 0, held.bytes, 0, 0});
  // A job for which shrinks are in flight waits for their confirmation: planned again meanwhile,
  // while the shrinking jobs still hold their old quotas and cannot be shrunk twice, it would
  // look like a job that fits nowhere and shrink jobs on another device as well.
  std::set<std::string> awaiting_shrinks;
  for (const auto& [id, r] : running_) {
    if (r->pending_quota > 0 && !r->shrink_for.empty()) awaiting_shrinks.insert(r->shrink_for);
  }
  std::vector<QueuedJob> schedulable;
  for (const QueuedJob& q : queued) {
    if (!awaiting_shrinks.count(q.id)) schedulable.push_back(q);
  }
  ScheduleDecision decision = Schedule(options_.devices, running, schedulable);
  if (fleet()) ReserveForShrinks(&decision.shrinks);
  for (const ShrinkOrder& s : decision.shrinks) {
    Running& r = *running_.at(s.job_id);
    const absl::Status sent = r.worker().SendControl(
        QuotaCommand(s.quota_bytes));
    if (sent.ok()) {
      r.pending_quota = s.quota_bytes;
      r.shrink_for = s.for_job_id;
    }
  }
  for (const GrowOrder& g : decision.grows) {
    Running& r = *running_.at(g.job_id);
    const absl::Status sent = r.worker().SendControl(
        QuotaCommand(g.quota_bytes));
    if (sent.ok()) r.pending_quota = g.quota_bytes;
  }
  std::set<std::string> placed;
  for (const Placement& p : decision.placements) {
    if (fleet()) {
      // Another replica may be placing the same job right now: the claim decides.
      absl::StatusOr<JobClaim> claim = store_.ClaimJob(p.job_id, Lease());
      if (!claim.ok()) {
        if (claim.status().code() != absl::StatusCode::kAborted &&
            claim.status().code() != absl::StatusCode::kFailedPrecondition) {
          std::fprintf(stderr, "slimd: scheduler: %s\n", claim.status().ToString().c_str());
        }
        continue;
      }
      placed.insert(p.job_id);
      reserved_.erase(p.job_id);
      if (claim->cancel_requested) {
        (void)CancelQueued(claim->job, "cancelled while queued");
        continue;
      }
    } else {
      placed.insert(p.job_id);
    }
    const absl::Status launched = Launch(p.job_id, p.devices);
    if (!launched.ok()) {
      absl::StatusOr<v1::Job> job = store_.GetJob(p.job_id);
      if (job.ok()) {
        SetFailed(&*job, launched.code(), std::string(launched.message()));
        *job->mutable_end_time() = Now();
        (void)Record(*job, Event("failed", std::string(launched.message())));
      }
    }
  }
  if (fleet()) ReleaseUnneededReservations(placed);
  BalanceCpuThreads();
  // Queue positions for the jobs still waiting. (In a fleet every replica computes the same
  // order; a write that races another replica is refused by the store and skipped.)
  std::vector<QueuedJob> waiting;
  for (const QueuedJob& q : queued) {
    if (!placed.count(q.id)) waiting.push_back(q);
  }
  std::vector<v1::Job> still_queued;
  for (const auto& [id, position] : QueuePositions(waiting)) {
    absl::StatusOr<v1::Job> job = store_.GetJob(id);
    if (!job.ok()) continue;
    if (job->queue_position() != position) {
      job->set_queue_position(position);
      (void)store_.SaveJob(*job);
    }
    still_queued.push_back(*job);
  }
  if (observer_ != nullptr) {
    absl::StatusOr<std::map<v1::JobState, int64_t>> counts = store_.CountJobsByState();
    observer_->OnSchedulePass(DevicesLocked(), still_queued, counts.ok() ? *counts : std::map<v1::JobState, int64_t>{});
  }
}

absl::Status JobManager::Launch(const std::string& job_id, const std::vector<std::string>& devices) {
  ASSIGN_OR_RETURN(v1::Job job, store_.GetJob(job_id));
  std::string kind;
  Principal owner;
  owner.tenant = job.tenant();
  ASSIGN_OR_RETURN(JobSpec spec, ResolveSpec(job.spec(), owner, &kind));
  spec.device = WorkerDevice(devices.front());
  spec.quota_bytes = job.quota_bytes();
  const fs::path dir = fs::path(options_.data_dir) / "jobs" / job_id;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("cannot create " + dir.string() + ": " + ec.message());
  // Workers of an earlier attempt that are still alive here (a replica that died or lost the
  // job on this machine) must not write checkpoints next to the new ones.
  KillOrphanedWorkers(dir.string());
  const std::string spec_path = (dir / "worker-spec.json").string();
  RETURN_IF_ERROR(WriteFileAtomically(spec_path, SerializeJson(JobSpecToJson(spec)) + "\n"));

  const int attempt = job.attempts() + 1;
  const int world_size = static_cast<int>(devices.size());
  // Data-parallel ranks meet through a c10d FileStore that must not exist yet: a new file per
  // attempt, and those of earlier attempts (left by crashed groups) removed.
  std::string rendezvous;
  if (world_size > 1) {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind("dist-init.", 0) == 0) fs::remove(it->path(), ec);
    }
    ec.clear();
    rendezvous = "file://" + (dir / absl::StrCat("dist-init.", attempt)).string();
  }
  // New CPU workers start with an even share of the cores; BalanceCpuThreads at the end of
  // this pass evens out every worker's.
  int cpu_workers = static_cast<int>(std::count_if(devices.begin(), devices.end(), IsCpuDevice));
  for (const auto& [id, other] : running_) {
    for (const Rank& k : other->ranks) cpu_workers += k.worker != nullptr && IsCpuDevice(k.device) ? 1 : 0;
  }
  const int start_threads = cpu_thread_budget_ > 0 ? std::max(1, cpu_thread_budget_ / std::max(1, cpu_workers)) : 0;
  auto r = std::make_unique<Running>();
  r->attempt = attempt;
  r->fence_epoch = fence_epoch_.load();
  r->ranks.resize(devices.size());
  std::string pids;
  absl::Status started;
  for (int rank = 0; rank < world_size && started.ok(); ++rank) {
    WorkerOptions w;
    w.argv = {options_.worker_binary, "run", "--spec", spec_path, "--out", dir.string(),
              "--events-fd", "3", "--control-stdin", "--progress-interval", "1"};
    // The cache admission planned with (EngineCommands), so both plan from one calibration.
    if (!options_.calibration_cache_dir.empty()) {
      w.argv.push_back("--calibration-cache");
      w.argv.push_back(options_.calibration_cache_dir);
    }
    if (world_size > 1) {
      for (const std::string& arg : {std::string("--dist-rank"), std::to_string(rank), std::string("--dist-world-size"),
                                     std::to_string(world_size), std::string("--dist-init"), rendezvous,
                                     std::string("--device"), WorkerDevice(devices[rank])}) {
        w.argv.push_back(arg);
      }
    }
    Rank& k = r->ranks[rank];
    k.device = devices[rank];
    if (start_threads > 0 && IsCpuDevice(k.device)) {
      w.argv.push_back("--blas-threads");
      w.argv.push_back(std::to_string(start_threads));
      k.blas_threads = start_threads;
    }
    w.log_path = (dir / (rank == 0 ? std::string("worker.log") : absl::StrCat("worker-rank", rank, ".log"))).string();
    w.nice = options_.worker_nice;
    w.on_event = [this, job_id, rank](const TrainingEvent& e) { OnWorkerEvent(job_id, rank, e); };
    w.on_exit = [this, job_id, attempt, rank](const WorkerExit& exit) { OnWorkerExit(job_id, attempt, rank, exit); };
    absl::StatusOr<std::unique_ptr<WorkerProcess>> worker = WorkerProcess::Start(std::move(w));
    if (!worker.ok()) {
      started = worker.status();
      break;
    }
    k.worker = *std::move(worker);
    absl::StrAppend(&pids, k.worker->pid(), "\n");
    absl::MutexLock fence(&fence_mu_);
    live_workers_.insert(k.worker.get());
  }
  // The workers run in their own process groups and would outlive a killed server: the next
  // server reads this file and ends them before resuming the job (KillOrphanedWorkers).
  (void)WriteFileAtomically((dir / "worker.pid").string(), pids);
  Running& running = *r;
  running_[job_id] = std::move(r);
  if (!started.ok()) {
    // A rank could not start: the ones that did are ended (their exits are not recorded) and
    // the caller fails the job.
    running.lost = true;
    for (Rank& k : running.ranks) k.exited = k.worker == nullptr;
    running.KillAll();
    if (std::all_of(running.ranks.begin(), running.ranks.end(), [](const Rank& k) { return k.exited; })) {
      running_.erase(job_id);
    }
    return started;
  }

  job.set_state(v1::JOB_STATE_RUNNING);
  job.set_device(devices.front());
  job.clear_devices();
  for (const std::string& device : devices) job.add_devices(device);
  job.set_replica(options_.replica_id);
  job.set_attempts(attempt);
  job.set_queue_position(0);
  *job.mutable_start_time() = Now();
  std::string where;
  for (int rank = 0; rank < world_size; ++rank) {
    absl::StrAppend(&where, rank == 0 ? "" : ", ", world_size > 1 ? absl::StrCat("rank ", rank, ": ") : "", "worker pid ",
                    running.ranks[rank].worker->pid(), " on ", devices[rank]);
  }
  v1::JobEvent event = Event("started", absl::StrCat(where, fleet() ? " of replica " + options_.replica_id : std::string(),
                                                     ", attempt ", attempt));
  event.set_quota_bytes(job.quota_bytes());
  const absl::StatusOr<v1::Job> recorded = Record(job, event);
  if (!recorded.ok()) {
    // Not recorded (the store is unreachable, or in a fleet the job is not ours any more): the
    // workers must not run unrecorded. The job stays QUEUED; in a fleet a pass releases it.
    std::fprintf(stderr, "slimd: job %s: cannot record its start, stopping its workers: %s\n", job_id.c_str(),
                 recorded.status().ToString().c_str());
    running.lost = true;
    running.KillAll();
  }
  return absl::OkStatus();
}

void JobManager::OnWorkerEvent(const std::string& job_id, int rank, const TrainingEvent& e) {
  absl::MutexLock lock(&mu_);
  const auto it = running_.find(job_id);
  if (it == running_.end() || it->second->lost) return;
  Running& r = *it->second;
  if (r.data_parallel() && e.kind == EventKind::kFailed) {
    // The group's outcome is decided when every rank has exited (OnWorkerExit): a rank's
    // failure makes the others fail too, and the first reason is not always the real one.
    Rank& k = r.ranks[rank];
    k.failed_code = e.code;
    k.failed_message = e.message;
    if (r.culprit < 0 && OwnFailure(k)) r.culprit = rank;
    r.TerminateAll(options_.cancel_grace_seconds);
    return;
  }
  // Ranks other than 0 report only their own plan and warnings (docs/worker-protocol.md).
  if (rank > 0 && e.kind != EventKind::kStarted && e.kind != EventKind::kWarning) return;
  // "rank 1 on cpu:1: " before the per-rank messages of a data-parallel job.
  const std::string who = r.data_parallel() ? absl::StrCat("rank ", rank, " on ", r.ranks[rank].device, ": ") : "";
  absl::StatusOr<v1::Job> stored = store_.GetJob(job_id);
  if (!stored.ok()) return;
  v1::Job job = *stored;
  v1::JobProgress& progress = *job.mutable_progress();
  v1::JobEvent event;
  switch (e.kind) {
    case EventKind::kStarted:
      if (rank == 0) {
        job.set_chunk_size(e.chunk_size);
        job.set_mode(e.mode);
        job.set_predicted_peak_bytes(e.predicted_peak_bytes);
        progress.set_total_steps(e.total_steps);
      }
      event = Event("planned", absl::StrCat(who, "chunk size ", e.chunk_size, " (", e.mode, "), predicted peak ",
                                            FormatBytes(e.predicted_peak_bytes), " of quota ", FormatBytes(e.quota_bytes),
                                            e.resumed_from_step >= 0 ? absl::StrCat(", resumed from step ", e.resumed_from_step)
                                                                     : std::string()));
      event.set_chunk_size(e.chunk_size);
      event.set_quota_bytes(e.quota_bytes);
      event.set_predicted_peak_bytes(e.predicted_peak_bytes);
      break;
    case EventKind::kProgress:
      progress.set_step(e.step);
      progress.set_total_steps(e.total_steps);
      progress.set_tokens(e.tokens);
      progress.set_loss(e.loss);
      progress.set_tokens_per_second(e.tokens_per_second);
      progress.set_eta_seconds(e.eta_seconds);
      progress.set_current_bytes(e.current_bytes);
      progress.set_step_seconds(e.step_seconds);
      progress.set_blas_threads(static_cast<int32_t>(e.blas_threads));
      job.set_observed_peak_bytes(std::max(job.observed_peak_bytes(), e.peak_bytes));
      event = Event("progress");
      event.set_observed_peak_bytes(job.observed_peak_bytes());
      break;
    case EventKind::kEval:
      progress.set_step(e.step);  // the step it was taken at (progress is throttled to ~1 s)
      progress.set_eval_loss(e.eval_loss);
      event = Event("eval", absl::StrCat("validation loss ", e.eval_loss));
      break;
    case EventKind::kCheckpoint:
      event = Event("checkpoint", absl::StrCat("step ", e.step));
      break;
    case EventKind::kReplanned: {
      const bool grown = e.quota_bytes > job.quota_bytes();
      job.set_quota_bytes(e.quota_bytes);
      job.set_chunk_size(e.chunk_size);
      job.set_mode(e.mode);
      job.set_predicted_peak_bytes(e.predicted_peak_bytes);
      job.set_observed_peak_bytes(0);  // the worker's peak restarts with the new quota
      event = Event(grown ? "grown" : "shrunk",
                    absl::StrCat("quota ", FormatBytes(e.quota_bytes), ", chunk size ", e.chunk_size, " (", e.mode,
                                 ") from step ", e.step,
                                 grown ? std::string(", the quota it asked for")
                                 : r.shrink_for.empty() ? std::string()
                                                        : ", making room for " + r.shrink_for));
      event.set_chunk_size(e.chunk_size);
      event.set_quota_bytes(e.quota_bytes);
      event.set_predicted_peak_bytes(e.predicted_peak_bytes);
      r.pending_quota = 0;
      r.shrink_for.clear();
      wake_ = true;  // the room is there now
      break;
    }
    case EventKind::kWarning:
      if (r.pending_quota > 0 && ErrorCodeFromName(e.code) == ErrorCode::kResourceExhausted) {
        // The change was refused; do not ask this worker for that kind of change again.
        (r.pending_quota > job.quota_bytes() ? r.grow_refused : r.shrink_refused) = true;
        r.pending_quota = 0;
        wake_ = true;
      }
      event = Event("warning", who + e.message);
      break;
    case EventKind::kFinished: {
      r.saw_terminal = true;
      absl::StatusOr<std::string> model_id = store_.NewId("model");
      if (!model_id.ok()) {
        SetFailed(&job, absl::StatusCode::kInternal,
                  "cannot register the output model: " + std::string(model_id.status().message()));
        event = Event("failed", job.error());
        break;
      }
      const fs::path target = fs::path(options_.data_dir) / "models" / (*model_id + ".safetensors");
      std::error_code ec;
      fs::rename(e.path, target, ec);
      if (ec) {
        SetFailed(&job, absl::StatusCode::kInternal, "cannot move the output model: " + ec.message());
        event = Event("failed", job.error());
        break;
      }
      v1::Model model;
      model.set_id(*model_id);
      model.set_name(job.display_name().empty() ? job_id : job.display_name());
      model.set_source_job(job_id);
      model.set_tenant(job.tenant());
      model.set_size_bytes(static_cast<int64_t>(fs::file_size(target, ec)));
      if (const absl::StatusOr<ModelSummary> summary = engine_.Inspect(target.string()); summary.ok()) {
        model.set_parameters(summary->parameters);
        model.set_config_json(ConfigJson(*summary));
      } else {
        std::fprintf(stderr, "slimd: %s\n", std::string(summary.status().message()).c_str());
      }
      *model.mutable_create_time() = Now();
      if (const absl::Status put = store_.PutModel(model); !put.ok()) {
        SetFailed(&job, absl::StatusCode::kInternal, "cannot register the output model: " + std::string(put.message()));
        event = Event("failed", job.error());
        break;
      }
      job.set_output_model(*model_id);
      job.set_state(v1::JOB_STATE_SUCCEEDED);
      event = Event("succeeded", "model " + *model_id);
      break;
    }
    case EventKind::kStopped:
      if (r.cancelling) {
        r.saw_terminal = true;
        job.set_state(v1::JOB_STATE_CANCELLED);
        event = Event("cancelled", absl::StrCat("stopped at step ", e.step, " after a checkpoint"));
      } else if (r.draining && fleet()) {
        // Requeued once the process is gone (OnWorkerExit): another replica may claim the
        // job at once, and must not start a worker while this one still runs.
        r.stopped_step = e.step;
        return;
      } else if (r.draining) {
        r.saw_terminal = true;
        job.set_state(v1::JOB_STATE_QUEUED);
        ClearPlacement(&job);
        event = Event("requeued", absl::StrCat("stopped at step ", e.step, " (server shutdown); resumes from its checkpoint"));
      } else {
        // Stopped by someone else (a signal from outside): OnWorkerExit requeues it once the
        // process is gone, so that no second worker can start in its directory meanwhile.
        event = Event("warning", absl::StrCat("stopped from outside at step ", e.step, "; it will resume"));
      }
      break;
    case EventKind::kFailed:
      r.saw_terminal = true;
      SetFailed(&job, WorkerErrorCode(e.code), e.code + ": " + e.message);
      event = Event("failed", job.error());
      break;
  }
  if (IsTerminal(job.state())) *job.mutable_end_time() = Now();
  const absl::StatusOr<v1::Job> recorded = Record(job, event);
  if (fleet() && (recorded.status().code() == absl::StatusCode::kFailedPrecondition ||
                  recorded.status().code() == absl::StatusCode::kAborted)) {
    // Another replica owns the job now (it took over after our lease lapsed): stop at once.
    std::fprintf(stderr, "slimd: job %s is not this replica's any more (%s); stopping its worker\n", job_id.c_str(),
                 std::string(recorded.status().message()).c_str());
    r.lost = true;
    r.KillAll();
  }
}

void JobManager::OnWorkerExit(const std::string& job_id, int attempt, int rank, const WorkerExit& rank_exit) {
  absl::MutexLock lock(&mu_);
  const auto it = running_.find(job_id);
  if (it == running_.end() || it->second->attempt != attempt) return;
  Running& group = *it->second;
  Rank& ended = group.ranks[rank];
  ended.exited = true;
  ended.exit_order = static_cast<int>(
      std::count_if(group.ranks.begin(), group.ranks.end(), [](const Rank& k) { return k.exited; }));
  ended.exit = rank_exit;
  {
    absl::MutexLock fence(&fence_mu_);
    live_workers_.erase(ended.worker.get());
  }
  finished_workers_.push_back(std::move(ended.worker));
  const bool abnormal = rank_exit.signaled || (rank_exit.exit_status != 0 && rank_exit.exit_status != 75);
  // A rank that crashed or was killed by someone else, without reporting that a peer went away.
  if (group.culprit < 0 && abnormal && !ended.told_to_stop && ended.failed_code.empty()) group.culprit = rank;
  if (group.data_parallel() && (abnormal || rank == 0)) {
    // The others fail at their next collective anyway, and after rank 0 (which writes the
    // outputs and checkpoints) there is nothing left to wait for: make sure none is left behind.
    group.TerminateAll(options_.cancel_grace_seconds);
  }
  if (!std::all_of(group.ranks.begin(), group.ranks.end(), [](const Rank& k) { return k.exited; })) return;
  // Every rank is gone: only now may the job run again.
  std::unique_ptr<Running> r = std::move(it->second);
  running_.erase(it);
  wake_ = true;
  if (r->lost) return;  // not this replica's job (any more): nothing to record
  absl::StatusOr<v1::Job> stored = store_.GetJob(job_id);
  if (!stored.ok()) return;
  v1::Job job = *stored;
  // A job whose outcome was recorded is done, unless a cancel arrived after that record.
  if (r->saw_terminal && job.state() != v1::JOB_STATE_CANCELLING) return;

  // The rank whose end explains the group's (the only one of an ordinary job): the first that
  // reported a failure of its own, or crashed or was killed before slimd stopped any rank
  // (r->culprit); else the first to end abnormally without reporting that a peer went away
  // (it may have been killed from outside just as slimd was stopping it); else the first to
  // end abnormally; else rank 0.
  const auto abnormal_exit = [](const Rank& k) {
    return k.exit.signaled || (k.exit.exit_status != 0 && k.exit.exit_status != 75);
  };
  const auto first_exit_where = [&](const auto& pred) {
    auto found = r->ranks.end();
    for (auto k = r->ranks.begin(); k != r->ranks.end(); ++k) {
      if (pred(*k) && (found == r->ranks.end() || k->exit_order < found->exit_order)) found = k;
    }
    return found;
  };
  auto culprit = r->culprit >= 0 ? r->ranks.begin() + r->culprit : r->ranks.end();
  if (culprit == r->ranks.end()) {
    culprit = first_exit_where([&](const Rank& k) { return abnormal_exit(k) && k.failed_code.empty(); });
  }
  if (culprit == r->ranks.end()) culprit = first_exit_where(abnormal_exit);
  if (culprit == r->ranks.end()) culprit = r->ranks.begin();
  const WorkerExit& exit = culprit->exit;
  const std::string worker =
      r->data_parallel() ? absl::StrCat("rank ", culprit - r->ranks.begin(), " of ", r->ranks.size(), " (",
                                        culprit->device, ")")
                         : "worker";
  const std::string how = exit.signaled ? absl::StrCat("killed by signal ", exit.signal)
                                        : absl::StrCat("exited with status ", exit.exit_status);
  const bool fenced = r->fence_epoch != fence_epoch_.load();
  v1::JobEvent event;
  if (r->cancelling) {
    job.set_state(v1::JOB_STATE_CANCELLED);
    event = Event("cancelled", worker + " " + how);
  } else if (r->draining) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", r->stopped_step >= 0
                                  ? absl::StrCat("stopped at step ", r->stopped_step,
                                                 " (server shutdown); resumes from its checkpoint")
                                  : worker + " " + how + " during server shutdown; resumes from its last checkpoint");
  } else if (fenced) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", absl::StrCat("replica ", options_.replica_id,
                                           " could not renew its leases in time and stopped the worker (", how,
                                           "); resumes from its last checkpoint"));
  } else if (r->data_parallel() && OwnFailure(*culprit)) {
    // A data-parallel rank's own failure (an ordinary worker's was recorded when reported).
    SetFailed(&job, WorkerErrorCode(culprit->failed_code),
              absl::StrCat(culprit->failed_code, ": ", worker, ": ", culprit->failed_message));
    event = Event("failed", job.error());
  } else if (!exit.signaled && exit.exit_status == 75) {
    // Stopped from outside after a checkpoint: not a crash, resume it.
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    event = Event("requeued", worker + " was stopped from outside; resumes from its last checkpoint");
  } else if (job.crash_retries() < options_.max_retries) {
    job.set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&job);
    job.set_replica("");
    job.set_crash_retries(job.crash_retries() + 1);
    event = Event("retrying", absl::StrCat(worker, " ", how, "; retrying from the last checkpoint (retry ",
                                           job.crash_retries(), " of ", options_.max_retries, ")\n", exit.stderr_tail));
  } else {
    SetFailed(&job, absl::StatusCode::kInternal,
              absl::StrCat(worker, " ", how, " after ", job.crash_retries(), " retries: ", exit.stderr_tail));
    event = Event("failed", job.error());
  }
  if (IsTerminal(job.state())) *job.mutable_end_time() = Now();
  (void)Record(job, event);
}


void JobManager::BalanceCpuThreads() {
  const int budget = cpu_thread_budget_;
  if (budget == 0) return;
  std::vector<Rank*> cpu;  // live CPU workers, in job id and rank order
  for (auto& [id, r] : running_) {
    for (Rank& k : r->ranks) {
      if (k.worker != nullptr && !r->lost && IsCpuDevice(k.device)) cpu.push_back(&k);
    }
  }
  const int n = static_cast<int>(cpu.size());
  for (int i = 0; i < n; ++i) {
    // An even split; the first budget % n workers get the cores left over.
    const int share = std::max(1, budget / n + (i < budget % n ? 1 : 0));
    if (cpu[i]->blas_threads == share) continue;
    if (cpu[i]->worker->SendControl(ThreadsCommand(share)).ok()) {
      cpu[i]->blas_threads = share;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Replicas (fleets)

void JobManager::NoteRenewal(std::chrono::steady_clock::time_point asked) {
  absl::MutexLock lock(&fence_mu_);
  renewed_at_ = std::max(renewed_at_, asked);
  fenced_ = false;
  if (renew_failing_) std::fprintf(stderr, "slimd: replica %s: leases renewed again\n", options_.replica_id.c_str());
  renew_failing_ = false;
}

void JobManager::LeaseLoop() {
  const absl::Duration lease = Lease();
  const auto renew_every = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(absl::ToDoubleSeconds(lease) / 4));
  while (true) {
    std::chrono::steady_clock::time_point renewed_at;
    {
      absl::MutexLock lock(&fence_mu_);
      fence_mu_.AwaitWithTimeout(absl::Condition(&lease_stop_), lease / 8);
      if (lease_stop_) return;
      renewed_at = renewed_at_;
    }
    // Passes renew about every second; this thread covers passes that are slow or stuck (a
    // long worker kill, a store call waiting under mu_).
    const auto asked = std::chrono::steady_clock::now();
    if (asked - renewed_at < renew_every) continue;
    const absl::StatusOr<std::vector<JobLease>> renewed = store_.RenewLeases(lease);
    if (renewed.ok()) {
      NoteRenewal(asked);
      continue;
    }
    absl::MutexLock lock(&fence_mu_);
    if (!renew_failing_) {
      std::fprintf(stderr, "slimd: replica %s: cannot renew leases: %s\n", options_.replica_id.c_str(),
                   renewed.status().ToString().c_str());
    }
    renew_failing_ = true;
  }
}

void JobManager::FenceLoop() {
  // The database's lease ends after `renewed_at_ + lease` (it counts from when the renewal ran,
  // later than when it was asked for). Killing between 2/3 and 3/4 of it leaves the rest for the
  // kill to land before any replica may take the jobs over. This thread never waits for the
  // store, which may hang for as long as the network does.
  const absl::Duration lease = Lease();
  const auto fence_after = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(absl::ToDoubleSeconds(lease) * 2 / 3));
  absl::MutexLock lock(&fence_mu_);
  while (!lease_stop_) {
    fence_mu_.AwaitWithTimeout(absl::Condition(&lease_stop_), lease / 12);
    const auto silent = std::chrono::steady_clock::now() - renewed_at_;
    if (lease_stop_ || fenced_ || live_workers_.empty() || silent < fence_after) continue;
    fenced_ = true;
    ++fence_epoch_;
    std::fprintf(stderr,
                 "slimd: replica %s: no lease renewal for %.1f s; stopping its %zu worker(s) before another replica "
                 "may take their jobs over\n",
                 options_.replica_id.c_str(), std::chrono::duration<double>(silent).count(), live_workers_.size());
    for (WorkerProcess* worker : live_workers_) worker->Kill();
  }
}

bool JobManager::RenewAndReconcile() {
  const auto asked = std::chrono::steady_clock::now();
  const absl::StatusOr<std::vector<JobLease>> leases = store_.RenewLeases(Lease());
  if (!leases.ok()) return false;  // the lease thread reports it (once per outage)
  NoteRenewal(asked);
  // For the other replicas' admission, as long as this replica lives. Every lease/4 is enough:
  // a replica counts as live while its publication is younger than a lease.
  const auto now = std::chrono::steady_clock::now();
  if (now - devices_published_at_ >= std::chrono::duration<double>(options_.lease_seconds / 4) &&
      store_.PublishDevices(DeclaredDevices()).ok()) {
    devices_published_at_ = now;
  }
  std::map<std::string, const JobLease*> owned;
  for (const JobLease& lease : *leases) owned[lease.job_id] = &lease;
  // Ours no more: another replica took it over after our lease lapsed. Its writes would be
  // refused anyway; its worker must stop writing into the job directory now.
  for (auto& [id, r] : running_) {
    // (A worker that reported its outcome released the job itself and is about to exit.)
    if (owned.count(id) || r->lost || r->saw_terminal) continue;
    std::fprintf(stderr, "slimd: job %s is not replica %s's any more (taken over); stopping its worker\n", id.c_str(),
                 options_.replica_id.c_str());
    r->lost = true;
    r->KillAll();
  }
  for (auto it = reserved_.begin(); it != reserved_.end();) {
    it = owned.count(*it) ? std::next(it) : reserved_.erase(it);
  }
  for (const JobLease& lease : *leases) {
    const auto running = running_.find(lease.job_id);
    if (running != running_.end()) {
      Running& r = *running->second;
      if (!lease.cancel_requested || r.cancelling || r.lost || r.draining || r.saw_terminal) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
      if (job.ok() && job->state() == v1::JOB_STATE_RUNNING) {
        (void)CancelRunning(*job, " (requested through another replica)");
      }
    } else if (reserved_.count(lease.job_id)) {
      if (!lease.cancel_requested) continue;
      absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
      if (job.ok()) (void)CancelQueued(*job, "cancelled while queued (requested through another replica)");
    } else {
      SettleOwnedJob(lease, absl::StrCat("its worker on replica ", options_.replica_id,
                                         " is gone and its end was not recorded; resuming from the last checkpoint"));
    }
  }
  return true;
}

void JobManager::SettleOwnedJob(const JobLease& lease, const std::string& why) {
  KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / lease.job_id).string());
  absl::StatusOr<v1::Job> job = store_.GetJob(lease.job_id);
  if (!job.ok()) return;
  absl::Status settled;
  if (job->state() == v1::JOB_STATE_QUEUED) {
    settled = lease.cancel_requested
                  ? CancelQueued(*job, "cancelled while queued (requested through another replica)").status()
                  : store_.ReleaseJob(job->id());
  } else if (job->state() == v1::JOB_STATE_CANCELLING || lease.cancel_requested) {
    const bool was_cancelling = job->state() == v1::JOB_STATE_CANCELLING;
    job->set_state(v1::JOB_STATE_CANCELLED);
    *job->mutable_end_time() = Now();
    settled = Record(*job, Event("cancelled", was_cancelling ? "its worker is gone; the cancellation is complete"
                                                             : "its worker is gone; cancelled as requested"))
                  .status();
  } else if (job->state() == v1::JOB_STATE_RUNNING) {
    job->set_state(v1::JOB_STATE_QUEUED);
    ClearPlacement(&*job);
    job->set_replica("");
    settled = Record(*job, Event("requeued", why)).status();
  }
  if (!settled.ok()) {
    std::fprintf(stderr, "slimd: job %s: %s\n", lease.job_id.c_str(), settled.ToString().c_str());
  }
}

void JobManager::TakeOverExpiredJobs() {
  const absl::StatusOr<std::vector<JobClaim>> claims = store_.TakeOverExpiredJobs(Lease());
  if (!claims.ok()) {
    std::fprintf(stderr, "slimd: taking over jobs: %s\n", claims.status().ToString().c_str());
    return;
  }
  for (const JobClaim& claim : *claims) {
    const std::string who =
        claim.previous_owner.empty() ? std::string("a slimd without replica id") : "replica " + claim.previous_owner;
    // On one machine the lost replica's worker may still run (a frozen replica): end it first.
    KillOrphanedWorkers((fs::path(options_.data_dir) / "jobs" / claim.job.id()).string());
    v1::Job job = claim.job;
    v1::JobEvent event;
    if (job.state() == v1::JOB_STATE_CANCELLING || claim.cancel_requested) {
      job.set_state(v1::JOB_STATE_CANCELLED);
      *job.mutable_end_time() = Now();
      event = Event("cancelled", who + " stopped renewing its lease while the job was being cancelled");
    } else {
      job.set_state(v1::JOB_STATE_QUEUED);
      ClearPlacement(&job);
      job.set_replica("");
      event = Event("requeued", absl::StrCat(who, " stopped renewing its lease (it stopped, crashed or lost the "
                                                  "database); taken over by replica ",
                                             options_.replica_id, ", resuming from the last checkpoint"));
    }
    std::fprintf(stderr, "slimd: replica %s took over job %s from %s\n", options_.replica_id.c_str(),
                 job.id().c_str(), who.c_str());
    if (const absl::Status recorded = Record(job, event).status(); !recorded.ok()) {
      std::fprintf(stderr, "slimd: job %s: %s\n", job.id().c_str(), recorded.ToString().c_str());
    }
  }
}

void JobManager::ReserveForShrinks(std::vector<ShrinkOrder>* shrinks) {
  std::map<std::string, bool> held;  // job the shrinks are for → this replica holds it
  for (const ShrinkOrder& s : *shrinks) {
    if (held.count(s.for_job_id)) continue;
    if (reserved_.count(s.for_job_id)) {
      held[s.for_job_id] = true;
      continue;
    }
    const absl::StatusOr<JobClaim> claim = store_.ClaimJob(s.for_job_id, Lease());
    held[s.for_job_id] = claim.ok() && !claim->cancel_requested;
    if (claim.ok()) reserved_.insert(s.for_job_id);  // a cancel request is carried out next pass
  }
  shrinks->erase(std::remove_if(shrinks->begin(), shrinks->end(),
                                [&](const ShrinkOrder& s) { return !held[s.for_job_id]; }),
                 shrinks->end());
}

void JobManager::ReleaseUnneededReservations(const std::set<std::string>& placed) {
  std::set<std::string> awaited;  // jobs that shrinks in flight make room for
  for (const auto& [id, r] : running_) {
    if (r->pending_quota > 0 && !r->shrink_for.empty()) awaited.insert(r->shrink_for);
  }
  for (auto it = reserved_.begin(); it != reserved_.end();) {
    if (placed.count(*it) || awaited.count(*it)) {
      ++it;
      continue;
    }
    (void)store_.ReleaseJob(*it);  // not ours any more, or not queued: nothing to give back
    it = reserved_.erase(it);
  }
}

// ---------------------------------------------------------------------------------------------
// Tenant limits

absl::Status JobManager::CheckJobLimits(const Principal& caller, int64_t quota_bytes) {
  if (caller.admin() || (options_.tenant_max_jobs == 0 && options_.tenant_max_quota_bytes == 0)) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const std::vector<v1::Job> active,
                   store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  int jobs = 0;
  int64_t quotas = 0;
  for (const v1::Job& job : active) {
    if (job.tenant() != caller.tenant) continue;
    ++jobs;
    quotas += CommittedBytes(job);
  }
  if (options_.tenant_max_jobs > 0 && jobs >= options_.tenant_max_jobs) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", caller.tenant, " has ", jobs,
                                                     " queued or running jobs; the limit is ", options_.tenant_max_jobs,
                                                     " (slimd --tenant-max-jobs)"));
  }
  if (options_.tenant_max_quota_bytes > 0 && quotas + quota_bytes > options_.tenant_max_quota_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant ", caller.tenant, " has ", FormatBytes(quotas), " of memory quota in use; this job's ",
        FormatBytes(quota_bytes), " would pass the limit of ", FormatBytes(options_.tenant_max_quota_bytes),
        " (slimd --tenant-max-quota)"));
  }
  return absl::OkStatus();
}

absl::Status JobManager::CheckDatasetLimit(const Principal& caller, int64_t size_bytes) {
  if (caller.admin() || options_.tenant_max_dataset_bytes == 0) return absl::OkStatus();
  int64_t stored = 0;
  std::string token;
  do {
    ASSIGN_OR_RETURN(Page<v1::Dataset> page, store_.ListDatasets(1000, token, ListScope::Of(caller.tenant)));
    for (const v1::Dataset& d : page.items) {
      if (d.tenant() == caller.tenant) stored += d.size_bytes();
    }
    token = page.next_page_token;
  } while (!token.empty());
  if (stored + size_bytes > options_.tenant_max_dataset_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant ", caller.tenant, " stores ", FormatBytes(stored), " of datasets; this upload's ", FormatBytes(size_bytes),
        " would pass the limit of ", FormatBytes(options_.tenant_max_dataset_bytes),
        " (slimd --tenant-max-dataset-storage)"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Datasets

std::string JobManager::TempPath() {
  return (fs::path(TempDir()) / absl::StrCat("upload-", ::getpid(), "-", temp_counter_++)).string();
}

absl::StatusOr<v1::Dataset> JobManager::AddDataset(const v1::UploadDatasetHeader& header, const std::string& temp_path,
                                                   const Principal& caller) {
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } cleanup{temp_path};
  if (header.name().empty() || header.name().size() > 200) {
    return absl::InvalidArgumentError("header.name: must be 1 to 200 characters");
  }
  const std::string format = header.format().empty() ? "text" : header.format();
  try {
    ParseDataFormat(format, "header.format");
  } catch (const EngineError& e) {
    return FromEngineError(e);
  }
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(temp_path, ec));
  if (ec) return absl::InternalError("upload lost: " + ec.message());
  if (size != header.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("header.size_bytes: the upload has ", size, " bytes, the header says ",
                                                   header.size_bytes()));
  }
  Sha256 sha;
  {
    std::ifstream in(temp_path, std::ios::binary);
    char buf[1 << 16];
    while (in) {
      in.read(buf, sizeof(buf));
      sha.Update(buf, static_cast<size_t>(in.gcount()));
    }
  }
  const std::string digest = sha.HexDigest();
  if (digest != header.sha256()) {
    return absl::InvalidArgumentError("header.sha256: the upload's SHA-256 is " + digest + ", the header says '" +
                                      header.sha256() + "'");
  }
  if (format != "jsonl") {  // JSONL's text field is chosen per job; the others are checked now
    DataSource source;
    source.path = temp_path;
    source.format = ParseDataFormat(format);
    source.vocab_size = int64_t{1} << 31;
    try {
      ReadTokens(source);
    } catch (const EngineError& e) {
      return absl::InvalidArgumentError(std::string("data: ") + e.what());
    }
  }
  absl::MutexLock admission(&admission_mu_);
  RETURN_IF_ERROR(CheckDatasetLimit(caller, size));
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("ds"));
  const fs::path target = fs::path(options_.data_dir) / "datasets" / id;
  fs::rename(temp_path, target, ec);
  if (ec) return absl::InternalError("cannot store the dataset: " + ec.message());
  cleanup.path.clear();
  v1::Dataset dataset;
  dataset.set_id(id);
  dataset.set_name(header.name());
  dataset.set_tenant(caller.tenant);
  dataset.set_format(format);
  dataset.set_size_bytes(size);
  dataset.set_sha256(digest);
  *dataset.mutable_create_time() = Now();
  const absl::Status put = store_.PutDataset(dataset);
  if (!put.ok()) {
    fs::remove(target, ec);
    return put;
  }
  return dataset;
}

absl::StatusOr<v1::Dataset> JobManager::GetDataset(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Dataset> dataset = store_.GetDataset(id);
  if (dataset.ok() && !caller.Sees(dataset->tenant())) return absl::NotFoundError("dataset " + id + " not found");
  return dataset;
}

absl::StatusOr<v1::ListDatasetsResponse> JobManager::ListDatasets(const v1::ListDatasetsRequest& request,
                                                                  const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(Page<v1::Dataset> page,
                   VisiblePage<v1::Dataset>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListDatasets(size, token, Scope(caller)); },
                       [&](const v1::Dataset& d) { return caller.Sees(d.tenant()); }));
  v1::ListDatasetsResponse response;
  for (v1::Dataset& d : page.items) *response.add_datasets() = std::move(d);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::Status JobManager::DeleteDataset(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const v1::Dataset dataset, store_.GetDataset(id));
  if (!caller.Sees(dataset.tenant())) return absl::NotFoundError("dataset " + id + " not found");
  ASSIGN_OR_RETURN(const std::vector<v1::Job> active,
                   store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  for (const v1::Job& job : active) {
    for (const auto* refs : {&job.spec().data().train(), &job.spec().data().validation()}) {
      for (const v1::DataRef& ref : *refs) {
        if (ref.dataset() == id) {
          return absl::FailedPreconditionError(absl::StrCat("dataset ", id, " is used by job ", job.id(), " (",
                                                            StateName(job.state()), ")"));
        }
      }
    }
  }
  RETURN_IF_ERROR(store_.DeleteDataset(id));
  std::error_code ec;
  fs::remove(fs::path(options_.data_dir) / "datasets" / dataset.id(), ec);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Models

absl::StatusOr<v1::Model> JobManager::ImportModel(const v1::ImportModelRequest& request) {
  if (request.path().empty() || request.path()[0] != '/') {
    return absl::InvalidArgumentError("path: must be an absolute path on the server, got '" + request.path() + "'");
  }
  if (request.name().size() > 200) return absl::InvalidArgumentError("name: at most 200 characters");
  absl::StatusOr<ModelSummary> summary = engine_.Inspect(request.path());
  if (!summary.ok()) {
    if (summary.status().code() != absl::StatusCode::kInvalidArgument) return summary.status();
    return absl::InvalidArgumentError(absl::StrCat("path: ", summary.status().message()));
  }
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("model"));
  const fs::path target = fs::path(options_.data_dir) / "models" / (id + ".safetensors");
  const fs::path tmp = fs::path(TempPath());
  std::error_code ec;
  fs::copy_file(request.path(), tmp, ec);
  if (!ec) fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return absl::InternalError("cannot copy the model: " + ec.message());
  }
  v1::Model model;
  model.set_id(id);
  model.set_name(request.name().empty() ? fs::path(request.path()).filename().string() : request.name());
  model.set_size_bytes(static_cast<int64_t>(fs::file_size(target, ec)));
  model.set_parameters(summary->parameters);
  model.set_config_json(ConfigJson(*summary));
  *model.mutable_create_time() = Now();
  RETURN_IF_ERROR(store_.PutModel(model));
  return model;
}

absl::StatusOr<v1::Model> JobManager::GetModel(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Model> model = store_.GetModel(id);
  if (model.ok() && !caller.Sees(model->tenant(), /*shared_if_unowned=*/true)) {
    return absl::NotFoundError("model " + id + " not found");
  }
  return model;
}

absl::StatusOr<v1::ListModelsResponse> JobManager::ListModels(const v1::ListModelsRequest& request,
                                                              const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(Page<v1::Model> page,
                   VisiblePage<v1::Model>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListModels(size, token, Scope(caller)); },
                       [&](const v1::Model& m) { return caller.Sees(m.tenant(), /*shared_if_unowned=*/true); }));
  v1::ListModelsResponse response;
  for (v1::Model& m : page.items) *response.add_models() = std::move(m);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<std::string> JobManager::ModelPath(const std::string& id, const Principal& caller) {
  absl::StatusOr<v1::Model> model = GetModel(id, caller);
  if (!model.ok()) return absl::NotFoundError("model: no model '" + id + "'");
  return (fs::path(options_.data_dir) / "models" / (model->id() + ".safetensors")).string();
}

absl::Status JobManager::Generate(const v1::GenerateRequest& request, const Principal& caller,
                                  const std::function<bool(const std::string&)>& emit) {
  if (request.max_tokens() < 0 || request.max_tokens() > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: must be in [1, 4096] (0 means 64), got ", request.max_tokens()));
  }
  if (!(request.temperature() >= 0) || request.temperature() > 100) {
    return absl::InvalidArgumentError("temperature: must be in [0, 100]");
  }
  if (request.top_k() < 0) return absl::InvalidArgumentError("top_k: must be >= 0");
  ASSIGN_OR_RETURN(const std::string path, ModelPath(request.model(), caller));
  if (request.prompt().empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  // The sampling process runs on a device of the server's first kind, inside a reservation
  // that the scheduler counts like a job (docs/service.md, "Generation").
  std::error_code ec;
  const int64_t model_bytes = static_cast<int64_t>(fs::file_size(path, ec));
  const int64_t quota = options_.generate_quota_bytes > 0 ? options_.generate_quota_bytes
                                                          : model_bytes + model_bytes / 2 + (int64_t{16} << 20);
  ASSIGN_OR_RETURN(const std::unique_ptr<ReservationHold> hold, Reserve(options_.devices.front().kind, quota, "generate"));
  GenerateParams params;
  params.device = WorkerDevice(hold->device());
  params.memory_cap = quota;
  params.max_tokens = request.max_tokens() == 0 ? 64 : request.max_tokens();
  params.temperature = request.temperature();
  params.top_k = request.top_k();
  params.seed = static_cast<uint64_t>(request.seed());
  const absl::Status status = engine_.Generate(path, request.prompt(), params, [&](int32_t t) {
    return emit(std::string(1, static_cast<char>(t < 256 ? t : '?')));
  });
  if (status.code() == absl::StatusCode::kCancelled) return absl::CancelledError("the client went away");
  return status;
}

}  // namespace slim::server
