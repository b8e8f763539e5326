// The answers of slim-train's one-shot commands that slimd runs as subprocesses instead of
// linking LibTorch (docs/worker-protocol.md, "One-shot commands"): `plan --spec FILE --json`,
// `inspect --model FILE --json`, `devices --json` and `footprint --device D --json`. One encoder and one parser per answer,
// shared by both sides. Plain C++: no LibTorch, no gRPC.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/device_info.h"
#include "base/training_options.h"

namespace slim {

// Admission's view of a job: the plan its worker will train with, the smallest quota that fits,
// and the quota itself (the spec's, or the default policy's when the spec gives none).
struct AdmissionPlan {
  int64_t quota_bytes = 0;
  int64_t min_quota_bytes = 0;
  bool feasible = false;  // the chunk size below fits quota_bytes
  int64_t chunk_size = 0;  // 0 when not feasible and not fixed by the spec
  StartStateMode mode = StartStateMode::kSubtract;
  int64_t predicted_peak_bytes = 0;
  double est_step_seconds = 0;
  // Ordinary backprop's predicted peak (C = L) for the same job: what SLiM saves; 0 when no plan
  // was made.
  int64_t full_backprop_peak_bytes = 0;
  // `plan --if-calibrated` for a shape without a calibration on the device kind: no plan was
  // made (the fields above are unset); calibrating needs at most this many bytes of the device
  // (CalibrationPeakBound, engine/memory_model.h). 0 otherwise.
  int64_t calibration_bytes = 0;

  bool operator==(const AdmissionPlan& o) const {
    return quota_bytes == o.quota_bytes && min_quota_bytes == o.min_quota_bytes && feasible == o.feasible &&
           chunk_size == o.chunk_size && mode == o.mode && predicted_peak_bytes == o.predicted_peak_bytes &&
           est_step_seconds == o.est_step_seconds && full_backprop_peak_bytes == o.full_backprop_peak_bytes &&
           calibration_bytes == o.calibration_bytes;
  }
};

// A model file as `inspect` found it: loaded whole (every tensor's name, shape and dtype checked
// against the config), so a file that reads here trains.
struct ModelSummary {
  std::map<std::string, std::string> config;  // the file's config metadata (docs/model-format.md)
  int64_t parameters = 0;
};

// What a worker process on a device uses beyond its tensors, which quotas do not count
// (`footprint --device D`): on CPU its resident memory once LibTorch, the allocator and the BLAS
// have started; on CUDA its CUDA context and library workspaces.
struct WorkerFootprint {
  std::string device;  // as slim-train names it: "cpu", "cuda:N"
  int64_t bytes = 0;
  std::string method;  // how it was measured, e.g. "resident memory (VmRSS)"
};

// One line of JSON each (no newline). The parsers throw EngineError(kInternal) naming what is
// missing or malformed: a malformed answer is a broken or mismatched slim-train, not bad input.
std::string AdmissionPlanToJson(const AdmissionPlan& plan);
AdmissionPlan AdmissionPlanFromJson(const std::string& line);
std::string ModelSummaryToJson(const ModelSummary& summary);
ModelSummary ModelSummaryFromJson(const std::string& line);
std::string DevicesToJson(const std::vector<DeviceInfo>& devices);
std::vector<DeviceInfo> DevicesFromJson(const std::string& line);
std::string WorkerFootprintToJson(const WorkerFootprint& footprint);
WorkerFootprint WorkerFootprintFromJson(const std::string& line);

}  // namespace slim
