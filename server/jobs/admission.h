// Admission (docs/service.md, "Admission and quotas"): API specs resolved into the engine's
// spec (one spec path: protobuf's JSON mapping read by the engine's spec reader), plans made by
// slim-train's planner (a new shape calibrated inside a device reservation), the capacity of a
// device kind here and across a fleet, and tenants' job limits.
//
// Thread-safety: every method may be called from any thread. Plan may run slim-train processes
// (seconds when it calibrates) on the calling thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/job_spec.h"
#include "base/json.h"
#include "server/auth/principal.h"
#include "server/jobs/catalog.h"
#include "server/jobs/device_ledger.h"
#include "server/jobs/store.h"
#include "server/supervise/engine_commands.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

struct AdmissionOptions {
  // Checkpoint cadence when a spec leaves it at 0.
  int checkpoint_every = 50;
  // A spec without memory.device_kind is planned on this kind (the server's first device's).
  std::string default_device_kind = "cpu";
  // Per-tenant limits for user tokens (admins are exempt); 0 = no limit.
  int tenant_max_jobs = 0;             // queued, running and cancelling jobs
  int64_t tenant_max_quota_bytes = 0;  // sum of the memory quotas of those jobs
  int tenant_max_calls = 0;            // expensive calls in progress or waiting (BeginCall)
};

class Admission {
 public:
  // `store`, `engine`, `catalog` and `devices` outlive the admission.
  Admission(Store& store, EngineCommands& engine, Catalog& catalog, DeviceLedger& devices, AdmissionOptions options);

  // Builds the engine's JobSpec from the API's (ids resolved to files), validating every field;
  // the datasets and model must be visible to `caller`. A spec without a quota is read with
  // quota_bytes 0: Plan applies the default policy. `device_kind` receives the kind it runs on.
  // `plan_only`: data entries may be local files described by digest (DataRef.file), which
  // only plans accept.
  absl::StatusOr<JobSpec> ResolveSpec(const v1::JobSpec& spec, const Principal& caller, std::string* device_kind,
                                      bool plan_only = false);

  // The devices of one kind that admission may count on: this server's, and in a fleet every
  // live replica's.
  struct KindCapacity {
    // The largest quota one device of the kind can hold: its capacity less its worker footprint.
    int64_t largest = 0;
    int64_t largest_here = 0;    // ... of the devices of this server (0: none here; planning calibrates here)
    int most_on_one_server = 0;  // the most devices of the kind one server (replica) has
  };
  KindCapacity CapacityOf(const std::string& kind);

  // The planner's answer for `spec` on a device of `kind` (the quota policy applied). A shape
  // never calibrated on the kind is calibrated first, unless `only_if_calibrated`: then the
  // answer only says calibration_needed.
  absl::StatusOr<v1::PlanJobResponse> Plan(const JobSpec& spec, const std::string& kind,
                                           bool only_if_calibrated = false);
  absl::StatusOr<v1::PlanJobResponse> PlanJob(const v1::PlanJobRequest& request, const Principal& caller);

  // Records a new job and its first event, if the caller's tenant stays within its limits
  // with `committed_bytes` more quota; the check and the insert are atomic, so two requests of
  // one tenant cannot both pass a limit that only one fits.
  absl::StatusOr<v1::Job> RecordWithinLimits(const Principal& caller, int64_t committed_bytes, const v1::Job& job,
                                             const v1::JobEvent& first);

  // An expensive call of `caller` (CreateJob, PlanJob, ImportModel, Generate: each may run
  // slim-train for seconds on the RPC executor), from its arrival to its answer. A user tenant
  // may have at most tenant_max_calls at once, so that one tenant cannot hold every executor
  // thread; beyond, RESOURCE_EXHAUSTED naming the limit. The call ends when the returned handle
  // is destroyed.
  absl::StatusOr<std::shared_ptr<void>> BeginCall(const Principal& caller, const std::string& method);

 private:
  // The changes ResolveSpec makes to protobuf's JSON form of an API spec, all of them: ids
  // resolved to files, the device kind turned into the device plans are made on, and this
  // server's defaults filled in.
  absl::Status ResolveSpecReferences(Json* doc, const Principal& caller, std::string* device_kind, bool plan_only);
  absl::Status CheckJobLimits(const Principal& caller, int64_t quota_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store& store_;
  EngineCommands& engine_;
  Catalog& catalog_;
  DeviceLedger& devices_;
  const AdmissionOptions options_;
  absl::Mutex mu_;  // from a limit check to the insert it allows
  absl::Mutex calls_mu_;
  std::map<std::string, int> calls_ ABSL_GUARDED_BY(calls_mu_);  // per tenant, in progress
  absl::Mutex text_fields_mu_;
  // (dataset id, JSONL text field) pairs found in every line of the dataset.
  std::set<std::pair<std::string, std::string>> checked_text_fields_ ABSL_GUARDED_BY(text_fields_mu_);
};

}  // namespace slim::server
