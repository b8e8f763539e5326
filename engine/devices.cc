#include "engine/devices.h"

#include <c10/core/Device.h>

#include <fstream>
#include <sstream>

#include "base/errors.h"
#include "engine/memory_tracker.h"
#include "engine/runtime.h"

#ifdef SLIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace slim {
namespace {

// Reads "<key>: <n> kB" from /proc/meminfo; 0 if absent.
int64_t MeminfoBytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
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
DeviceInfo CudaDevice(int index) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  cudaDeviceProp props;
  cudaGetDeviceProperties(&props, index);
  DeviceInfo d;
  d.name = "cuda:" + std::to_string(index);
  d.kind = "cuda";
  d.description = props.name;
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
  cpu.total_bytes = MeminfoBytes("MemTotal");
  cpu.free_bytes = MeminfoBytes("MemAvailable");
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
  c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device.index());
#endif
}

}  // namespace slim
