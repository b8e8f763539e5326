// The devices slimd packs jobs onto (docs/service.md, "Scheduling" and "Worker
// footprints"), from its --devices and --worker-footprint flags. Discovery and
// footprint measurements run slim-train subprocesses (slimd links no LibTorch).
#pragma once

#include <string>
#include <vector>

#include "server/sched/scheduler.h"

namespace slim::server {

// `list`: --devices, "cpu:SIZE" and "cuda:N[:SIZE]" entries, comma-separated;
// empty: what `slim-train devices` finds (one CPU device with half the RAM,
// every GPU at 95% of its memory). `footprint`: --worker-footprint, "auto"
// (measured with `slim-train footprint`, once for the CPU devices and once per
// GPU, and logged) or a size for every device. Throws EngineError:
// kInvalidArgument naming the flag for a bad entry, kInternal when slim-train
// cannot be run.
std::vector<DeviceCapacity> SetUpDevices(const std::string& list, const std::string& footprint,
                                         const std::string& worker_binary, const std::string& data_dir);

}  // namespace slim::server
