#include "engine/devices.h"

#include <c10/core/Device.h>
#include <torch/types.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "base/errors.h"
#include "base/process_memory.h"
#include "engine/memory_tracker.h"
#include "engine/runtime.h"

#ifdef SLIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <unistd.h>
#endif

namespace slim {
namespace {

// Reads "<key>: <n> kB" from a /proc file (/proc/meminfo, /proc/self/status) in bytes; 0 if absent.
int64_t ProcFieldBytes(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kb = 0;
    fields >> kb;
    return kb * 1024;
  }
  return 0;
}

#ifdef SLIM_WITH_CUDA
// Throws EngineError(kInternal) naming the call and CUDA's message when `status` is an error.
void CheckCuda(cudaError_t status, const std::string& what) {
  if (status == cudaSuccess) return;
  throw EngineError(ErrorCode::kInternal, what + " failed: " + cudaGetErrorString(status));
}

DeviceInfo CudaDevice(int index) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  size_t free_bytes = 0, total_bytes = 0;
  const std::string device = "cuda:" + std::to_string(index);
  CheckCuda(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo on " + device);
  cudaDeviceProp props;
  CheckCuda(cudaGetDeviceProperties(&props, index), "cudaGetDeviceProperties on " + device);
  DeviceInfo d;
  d.name = "cuda:" + std::to_string(index);
  d.kind = "cuda";
  d.description = props.name;
  char bus_id[32] = {};
  CheckCuda(cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), index), "cudaDeviceGetPCIBusId on " + device);
  d.pci_bus_id = bus_id;
  d.total_bytes = static_cast<int64_t>(total_bytes);
  d.free_bytes = static_cast<int64_t>(free_bytes);
  return d;
}
#endif

}  // namespace

std::vector<DeviceInfo> DiscoverDevices() {
  std::vector<DeviceInfo> devices;
  DeviceInfo cpu;
  cpu.name = "cpu";
  cpu.kind = "cpu";
  cpu.description = "system memory";
  cpu.total_bytes = ProcFieldBytes("/proc/meminfo", "MemTotal");
  cpu.free_bytes = ProcFieldBytes("/proc/meminfo", "MemAvailable");
  devices.push_back(cpu);
#ifdef SLIM_WITH_CUDA
  if (CudaAvailable()) {
    const int n = static_cast<int>(c10::cuda::device_count());
    for (int i = 0; i < n; ++i) devices.push_back(CudaDevice(i));
  }
#endif
  return devices;
}

std::string DeviceKind(const std::string& device_name) {
  const c10::Device device = ParseDevice(device_name);
  if (device.is_cpu()) return "cpu";
#ifdef SLIM_WITH_CUDA
  return "cuda:" + CudaDevice(device.index()).description;
#else
  return "cuda";
#endif
}

WorkerFootprint MeasureWorkerFootprint(const std::string& device_name) {
  const c10::Device device = ParseDevice(device_name);
  WorkerFootprint footprint;
  footprint.device = device_name;
  if (device.is_cpu()) InstallCpuMemoryTracker();
#ifdef SLIM_WITH_CUDA
  size_t context_free = 0, total = 0;
  if (device.is_cuda()) {
    c10::cuda::CUDAGuard guard(device.index());
    CheckCuda(cudaFree(nullptr), "creating the CUDA context on " + device_name);
    CheckCuda(cudaMemGetInfo(&context_free, &total), "cudaMemGetInfo on " + device_name);
  }
#endif
  {
    // One small step's worth of work: matmul (the BLAS or cuBLAS), elementwise kernels, autograd.
    const torch::Tensor a = torch::randn({128, 128}, torch::TensorOptions().device(device).requires_grad(true));
    a.matmul(a).tanh().sum().backward();
  }
  if (device.is_cpu()) {
    footprint.bytes = ProcFieldBytes("/proc/self/status", "VmRSS");
    footprint.method = "resident memory (VmRSS) after a warm-up step";
    return footprint;
  }
#ifdef SLIM_WITH_CUDA
  c10::cuda::CUDAGuard guard(device.index());
  CheckCuda(cudaDeviceSynchronize(), "synchronizing " + device_name);
  c10::cuda::CUDACachingAllocator::emptyCache();
  char bus_id[32] = {};
  CheckCuda(cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device.index()), "cudaDeviceGetPCIBusId on " + device_name);
  const int64_t seen = NvmlProcessBytes(bus_id, ::getpid());
  if (seen > 0) {
    footprint.bytes = seen;
    footprint.method = "device memory NVML attributes to the process after a warm-up step";
  } else {
    size_t free_after = 0;
    CheckCuda(cudaMemGetInfo(&free_after, &total), "cudaMemGetInfo on " + device_name);
    const int64_t workspaces = std::max<int64_t>(0, static_cast<int64_t>(context_free) - static_cast<int64_t>(free_after));
    footprint.bytes = workspaces + kCudaContextAllowance;
    footprint.method = "library workspaces after a warm-up step + 512 MiB for the context (NVML does not see the process)";
  }
#endif
  return footprint;
}

void CapDeviceMemory(const std::string& device_name, int64_t bytes) {
  CheckArgument(bytes >= 0, "memory cap: " + std::to_string(bytes) + " must be >= 0");
  const c10::Device device = ParseDevice(device_name);
  if (device.is_cpu()) {
    InstallCpuMemoryTracker();
    SetCpuMemoryCap(bytes);
    return;
  }
#ifdef SLIM_WITH_CUDA
  const DeviceInfo info = CudaDevice(device.index());
  CheckArgument(bytes <= info.total_bytes, "memory cap: " + std::to_string(bytes) +
                                               " bytes exceeds " + device_name + "'s capacity of " +
                                               std::to_string(info.total_bytes));
  const double fraction = bytes == 0 ? 1.0 : static_cast<double>(bytes) / info.total_bytes;
  // Cached segments above a lowered cap stay reserved until freed: release them, so that the
  // process's footprint on the device follows the new quota (and other tenants can use it).
  CheckCuda(cudaDeviceSynchronize(), "synchronizing " + device_name);
  c10::cuda::CUDACachingAllocator::emptyCache();
  c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device.index());
#endif
}

}  // namespace slim
