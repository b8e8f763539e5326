// Admission: specs resolved against the store, plans (by slim-train, engine_commands.h) and
// tenant limits.
#include "server/jobs/job_manager_internal.h"

namespace slim::server {

namespace {

// Memory a job commits on all its devices together: its quota is per worker.
int64_t CommittedBytes(const v1::Job& job) { return job.quota_bytes() * Workers(job.spec()); }

}  // namespace

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

absl::StatusOr<v1::PlanJobResponse> JobManager::Plan(const JobSpec& spec, const std::string& kind) {
  const KindCapacity capacity = CapacityOf(kind);
  // Planning calibrates on a device of the kind here.
  if (!capacity.here) return absl::FailedPreconditionError("spec: memory.device_kind: this server has no " + kind + " device");
  // slim-train plans with the worker's own planner; without a quota (ResolveSpec leaves
  // spec.quota_bytes 0) it applies the default policy (docs/service.md), capped at the
  // largest device of the kind.
  ASSIGN_OR_RETURN(const AdmissionPlan plan, engine_.Plan(spec, capacity.largest));
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
  return Plan(spec, kind);
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

}  // namespace slim::server
