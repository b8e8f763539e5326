#include "server/jobs/admission.h"

#include <algorithm>
#include <memory>

#include "base/byte_size.h"
#include "base/dataset.h"
#include "google/protobuf/util/json_util.h"
#include "server/jobs/job_helpers.h"

namespace slim::server {

namespace {

// Memory a job commits on all its devices together: its quota is per worker.
int64_t CommittedBytes(const v1::Job& job) { return job.quota_bytes() * Workers(job.spec()); }

}  // namespace

Admission::Admission(Store& store, EngineCommands& engine, Catalog& catalog, DeviceLedger& devices,
                     AdmissionOptions options)
    : store_(store), engine_(engine), catalog_(catalog), devices_(devices), options_(std::move(options)) {}

// ---------------------------------------------------------------------------------------------
// Specs and plans

absl::StatusOr<JobSpec> Admission::ResolveSpec(const v1::JobSpec& api, const Principal& caller,
                                                std::string* device_kind, bool plan_only) {
  // One spec path (docs/service.md): protobuf's JSON mapping of the API message, read by the
  // engine's spec reader, the one slim-train reads spec files with. Proto3 zero values are
  // "not set" and are not printed, so the reader applies its defaults and range checks to
  // exactly what the user sent.
  std::string text;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  if (const auto printed = google::protobuf::util::MessageToJsonString(api, &text, print); !printed.ok()) {
    return absl::InternalError("spec: cannot print as JSON: " + std::string(printed.message()));
  }
  try {
    Json doc = ParseJson(text);
    RETURN_IF_ERROR(ResolveSpecReferences(&doc, caller, device_kind, plan_only));
    SpecReading reading;
    reading.quota_from_policy = true;  // Plan applies the default policy to a spec without one
    return JobSpecFromJson(doc, "", reading);
  } catch (const EngineError& e) {
    return FromEngineError(e);
  }
}

absl::Status Admission::ResolveSpecReferences(Json* doc, const Principal& caller, std::string* device_kind,
                                              bool plan_only) {
  const auto member = [](Json* object, const char* key) -> Json* {
    const auto it = object->members.find(key);
    return object->kind == Json::kObject && it != object->members.end() ? &it->second : nullptr;
  };
  // A job runs as its tenant (the caller's), whoever creates it: an admin's job may use only
  // what that tenant sees, or it would be accepted here and fail when it starts.
  Principal owner;
  owner.tenant = caller.tenant;
  const auto not_the_jobs = [&](const std::string& where, const std::string& id, const std::string& tenant) {
    return absl::FailedPreconditionError(absl::StrCat(where, ": '", id, "' belongs to tenant '", tenant,
                                                      "'; a job of tenant '", caller.tenant,
                                                      "' cannot read it (jobs run as their tenant)"));
  };
  // model.base: a model id → its file.
  if (Json* model = member(doc, "model"); model != nullptr) {
    if (Json* base = member(model, "base"); base != nullptr) {
      const std::string id = base->text;
      absl::StatusOr<v1::Model> found = catalog_.GetModel(id, caller);
      if (!found.ok()) return absl::NotFoundError("model: no model '" + id + "'");
      if (!owner.Sees(found->tenant(), /*shared_if_unowned=*/true)) {
        return not_the_jobs("spec: model.base", id, found->tenant());
      }
      base->text = catalog_.ModelFilePath(found->id());
    }
  }
  // data.train[i], data.validation[i]: {dataset, format, text_field} → {path, format (the
  // dataset's when not given), text_field}.
  if (Json* data = member(doc, "data"); data != nullptr) {
    for (const char* field : {"train", "validation"}) {
      Json* list = member(data, field);
      if (list == nullptr) continue;
      for (size_t i = 0; i < list->items.size(); ++i) {
        Json& source = list->items[i];
        const std::string where = absl::StrCat("spec: data.", field, "[", i, "].dataset");
        Json* id = member(&source, "dataset");
        if (Json* file = member(&source, "file"); file != nullptr) {
          // A plan's local file described by its digest (DataRef.file): the caller's dataset
          // with those bytes if there is one, else nothing (plans do not read training data).
          const std::string file_where = absl::StrCat("spec: data.", field, "[", i, "].file");
          if (id != nullptr) return absl::InvalidArgumentError(file_where + ": give dataset or file, not both");
          if (!plan_only) {
            return absl::InvalidArgumentError(file_where +
                                              ": only PlanJob takes a file that is not uploaded; upload it as a "
                                              "dataset first (slimctl submit does)");
          }
          const Json* digest = member(file, "sha256");
          if (digest == nullptr || digest->text.size() != 64 ||
              digest->text.find_first_not_of("0123456789abcdef") != std::string::npos) {
            return absl::InvalidArgumentError(file_where + ".sha256: must be 64 lowercase hex digits");
          }
          ASSIGN_OR_RETURN(const std::optional<v1::Dataset> same, catalog_.FindDatasetByDigest(digest->text, caller));
          const std::string sha = digest->text;
          source.members.erase("file");
          if (!same.has_value()) {
            source.members["path"] = JsonString("/(not uploaded)/" + sha);
            continue;
          }
          source.members["dataset"] = JsonString(same->id());
          id = member(&source, "dataset");
        }
        if (id == nullptr) return absl::InvalidArgumentError(where + ": is required");
        absl::StatusOr<v1::Dataset> dataset = store_.GetDataset(id->text);
        if (!dataset.ok() || !caller.Sees(dataset->tenant())) {
          return absl::NotFoundError(absl::StrCat(where, ": no dataset '", id->text, "'"));
        }
        if (!owner.Sees(dataset->tenant())) return not_the_jobs(where, id->text, dataset->tenant());
        source.members.erase("dataset");
        source.members["path"] = JsonString(catalog_.DatasetPath(dataset->id()));
        if (member(&source, "format") == nullptr) source.members["format"] = JsonString(dataset->format());
        // JSONL lines were checked to be objects at upload; the text field is the job's choice,
        // so it is checked here, naming the dataset, rather than failing the job when it starts.
        // Datasets are immutable, so a (dataset, field) pair checked once stays valid.
        if (member(&source, "format")->text == "jsonl") {
          const Json* given = member(&source, "text_field");
          const std::string text_field = given != nullptr ? given->text : "text";
          const std::pair<std::string, std::string> key(dataset->id(), text_field);
          bool checked;
          {
            absl::MutexLock lock(&text_fields_mu_);
            checked = checked_text_fields_.count(key) > 0;
          }
          if (!checked) {
            CheckJsonlTextField(catalog_.DatasetPath(dataset->id()), text_field,
                                absl::StrCat("spec: data.", field, "[", i, "]: dataset ", dataset->id()));
            absl::MutexLock lock(&text_fields_mu_);
            checked_text_fields_.insert(key);
          }
        }
      }
    }
  }
  // memory.device_kind → memory.device: the device is chosen at placement; plans are made on
  // the first device of the kind.
  Json& memory = doc->members["memory"];
  if (memory.kind != Json::kObject) memory = JsonObject();
  std::string kind;
  if (const Json* given = member(&memory, "device_kind"); given != nullptr) kind = given->text;
  if (!kind.empty() && kind != "cpu" && kind != "cuda") {
    return absl::InvalidArgumentError("spec: memory.device_kind: unknown value '" + kind +
                                      "' (allowed: cpu, cuda, or empty for any)");
  }
  *device_kind = kind.empty() ? options_.default_device_kind : kind;
  memory.members.erase("device_kind");
  memory.members["device"] = JsonString(*device_kind == "cuda" ? "cuda:0" : "cpu");
  // checkpoint.every: this server's default (slimd --checkpoint-every) when not given.
  Json& checkpoint = doc->members["checkpoint"];
  if (checkpoint.kind != Json::kObject) checkpoint = JsonObject();
  if (member(&checkpoint, "every") == nullptr) {
    checkpoint.members["every"] = JsonNumber(static_cast<double>(options_.checkpoint_every));
  }
  return absl::OkStatus();
}

Admission::KindCapacity Admission::CapacityOf(const std::string& kind) {
  KindCapacity capacity;
  const auto add = [&](const v1::ListDevicesResponse& server) {
    int count = 0;
    for (const v1::Device& d : server.devices()) {
      if (d.kind() != kind) continue;
      capacity.largest = std::max(capacity.largest, d.capacity_bytes() - d.worker_footprint_bytes());
      ++count;
    }
    capacity.most_on_one_server = std::max(capacity.most_on_one_server, count);
  };
  add(devices_.DeclaredDevices());
  capacity.largest_here = capacity.largest;
  // In a fleet, every live replica's devices (published with their lease renewals).
  for (const v1::ListDevicesResponse& replica : devices_.FleetDevices()) add(replica);
  return capacity;
}

absl::StatusOr<v1::PlanJobResponse> Admission::Plan(const JobSpec& spec, const std::string& kind,
                                                    bool only_if_calibrated) {
  const KindCapacity capacity = CapacityOf(kind);
  // Planning calibrates on a device of the kind here.
  if (capacity.largest_here == 0) return absl::FailedPreconditionError("spec: memory.device_kind: this server has no " + kind + " device");
  // slim-train plans with the worker's own planner; without a quota (ResolveSpec leaves
  // spec.quota_bytes 0) it applies the default policy (docs/service.md), capped at the
  // largest device of the kind.
  ASSIGN_OR_RETURN(AdmissionPlan plan, engine_.Plan(spec, capacity.largest));
  if (plan.calibration_bytes > 0 && only_if_calibrated) {
    v1::PlanJobResponse response;
    response.set_device_kind(kind);
    response.set_calibration_needed(true);
    return response;
  }
  if (plan.calibration_bytes > 0) {
    // A shape never planned on this kind: it is calibrated on a device here inside a
    // reservation, like a small job, capped at it (docs/service.md, "Calibration").
    const int64_t bytes = std::min(plan.calibration_bytes, capacity.largest_here);
    absl::StatusOr<std::unique_ptr<DeviceHold>> hold = devices_.Reserve(kind, bytes, "calibrate");
    if (!hold.ok()) {
      return absl::Status(hold.status().code(),
                          absl::StrCat("this model shape (batch ", spec.batch_size,
                                       ") has not been calibrated on ", kind, " yet; ", hold.status().message()));
    }
    const EngineCommands::CalibrationPlace place{WorkerDevice((*hold)->device()), bytes};
    absl::StatusOr<AdmissionPlan> calibrated = engine_.Plan(spec, capacity.largest, &place);
    if (calibrated.status().code() == absl::StatusCode::kResourceExhausted) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "calibrating this model shape (batch ", spec.batch_size, ") needs more than its reservation of ",
          FormatBytes(bytes), bytes < plan.calibration_bytes ? " (the whole device)" : "", ": ",
          calibrated.status().message()));
    }
    if (!calibrated.ok()) return calibrated.status();
    plan = *calibrated;
  }
  v1::PlanJobResponse response;
  response.set_device_kind(kind);
  response.set_quota_bytes(plan.quota_bytes);
  response.set_min_quota_bytes(plan.min_quota_bytes);
  response.set_full_backprop_peak_bytes(plan.full_backprop_peak_bytes);
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

absl::StatusOr<v1::PlanJobResponse> Admission::PlanJob(const v1::PlanJobRequest& request, const Principal& caller) {
  std::string kind;
  ASSIGN_OR_RETURN(const JobSpec spec, ResolveSpec(request.spec(), caller, &kind, /*plan_only=*/true));
  return Plan(spec, kind, request.only_if_calibrated());
}

// ---------------------------------------------------------------------------------------------
// Tenant limits

absl::StatusOr<std::shared_ptr<void>> Admission::BeginCall(const Principal& caller, const std::string& method) {
  if (caller.admin() || options_.tenant_max_calls == 0) return std::shared_ptr<void>();
  absl::MutexLock lock(&calls_mu_);
  int& in_progress = calls_[caller.tenant];
  if (in_progress >= options_.tenant_max_calls) {
    return absl::ResourceExhaustedError(absl::StrCat(
        method, ": tenant ", caller.tenant, " has ", in_progress,
        " plan, create, import or generate calls in progress; the limit is ", options_.tenant_max_calls,
        " (slimd --tenant-max-calls). Try again when one has answered"));
  }
  ++in_progress;
  return std::shared_ptr<void>(nullptr, [this, tenant = caller.tenant](void*) {
    absl::MutexLock lock(&calls_mu_);
    if (--calls_[tenant] == 0) calls_.erase(tenant);
  });
}

absl::StatusOr<v1::Job> Admission::RecordWithinLimits(const Principal& caller, int64_t committed_bytes,
                                                      const v1::Job& job, const v1::JobEvent& first) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobLimits(caller, committed_bytes));
  return store_.CreateJob(job, first);
}

absl::Status Admission::CheckJobLimits(const Principal& caller, int64_t quota_bytes) {
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

}  // namespace slim::server
