// Device discovery and per-process memory caps (implemented with LibTorch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/command_answers.h"
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

// Measures what a worker process on `device_name` ("cpu", "cuda:N") uses beyond the tensor
// memory its quota counts, in this process, which must have done nothing else yet but
// ConfigureRuntime: it starts what every worker starts before its first step (the counting CPU
// allocator; a small forward and backward that wakes LibTorch's kernels, the BLAS thread pool,
// cuBLAS and its workspace), frees those tensors, then reads
//   CPU:  the process's resident memory (VmRSS);
//   CUDA: the device memory NVML attributes to this process (its context and the libraries'
//         workspaces) after the caching allocator has returned its blocks; where NVML cannot
//         see this process (no driver library, or a container's own pid namespace), the
//         workspaces as cudaMemGetInfo sees them grow plus kCudaContextAllowance.
// The scheduler counts it once per worker process beside the process's quota (docs/service.md,
// "Worker footprints").
WorkerFootprint MeasureWorkerFootprint(const std::string& device_name);
inline constexpr int64_t kCudaContextAllowance = int64_t{512} << 20;

}  // namespace slim
