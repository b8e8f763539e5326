// Device discovery and per-process memory caps. Plain C++ header: the server uses it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace slim {

struct DeviceInfo {
  std::string name;         // "cpu", "cuda:0", ...
  std::string kind;         // "cpu" or "cuda"; calibrations are cached per kind and model
  std::string description;  // e.g. the GPU's product name
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
};

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
