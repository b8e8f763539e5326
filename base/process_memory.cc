#include "base/process_memory.h"

#include <dlfcn.h>

#include <fstream>
#include <sstream>

namespace slim {

int64_t ResidentBytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    int64_t kb = -1;
    fields >> kb;
    return kb < 0 ? -1 : kb * 1024;
  }
  return -1;  // gone, or a zombie (no VmRSS line)
}

int64_t NvmlProcessBytes(const std::string& pci_bus_id, int pid) {
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (nvml == nullptr) return -1;
  // The original process-list entry point, whose record {pid, usedGpuMemory} (nvmlProcessInfo_v1_t)
  // every driver still exports under this name.
  struct ProcessInfo {
    unsigned int pid;
    unsigned long long used_gpu_memory;
  };
  using Init = int (*)();
  using ByBusId = int (*)(const char*, void**);
  using Processes = int (*)(void*, unsigned int*, ProcessInfo*);
  const auto init = reinterpret_cast<Init>(dlsym(nvml, "nvmlInit_v2"));
  const auto by_bus_id = reinterpret_cast<ByBusId>(dlsym(nvml, "nvmlDeviceGetHandleByPciBusId_v2"));
  const auto processes = reinterpret_cast<Processes>(dlsym(nvml, "nvmlDeviceGetComputeRunningProcesses"));
  const auto shutdown = reinterpret_cast<Init>(dlsym(nvml, "nvmlShutdown"));
  int64_t bytes = -1;
  void* handle = nullptr;
  if (init != nullptr && by_bus_id != nullptr && processes != nullptr && shutdown != nullptr && init() == 0) {
    constexpr unsigned int kMax = 256;
    ProcessInfo listed[kMax];
    unsigned int count = kMax;
    if (by_bus_id(pci_bus_id.c_str(), &handle) == 0 && processes(handle, &count, listed) == 0) {
      for (unsigned int i = 0; i < count && i < kMax; ++i) {
        if (listed[i].pid == static_cast<unsigned int>(pid)) bytes = static_cast<int64_t>(listed[i].used_gpu_memory);
      }
    }
    shutdown();
  }
  dlclose(nvml);
  return bytes;
}

}  // namespace slim
