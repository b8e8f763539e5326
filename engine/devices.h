// Device discovery and per-process memory caps (implemented with LibTorch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/device_info.h"

namespace slim {

// The CPU (system memory from /proc/meminfo) and every CUDA GPU this process can use.
std::vector<DeviceInfo> DiscoverDevices();

// The calibration key for a device name: "cpu", or "cuda:<product name>".
std::string DeviceKind(const std::string& device_name);

// Caps this process's tensor memory on `device_name` at `bytes` (0 removes the cap): on CPU
// through the counting allocator (installed if needed), on CUDA through the caching allocator's
// per-process memory fraction. Allocations beyond the cap throw c10::OutOfMemoryError, which
// the engine reports as EngineError(kResourceExhausted). Throws EngineError(kInvalidArgument)
// for an unknown device or a cap above the device's capacity.
void CapDeviceMemory(const std::string& device_name, int64_t bytes);

}  // namespace slim
