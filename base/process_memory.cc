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

namespace {

// NVML's entry points, loaded and initialised once per process (slimd asks on every ListDevices
// and metrics scrape; opening and initialising the library each time is a driver round trip).
// The process list is the original entry point, whose record {pid, usedGpuMemory}
// (nvmlProcessInfo_v1_t) every driver still exports under this name.
struct Nvml {
  struct ProcessInfo {
    unsigned int pid;
    unsigned long long used_gpu_memory;
  };
  using ByBusId = int (*)(const char*, void**);
  using Processes = int (*)(void*, unsigned int*, ProcessInfo*);
  ByBusId by_bus_id = nullptr;
  Processes processes = nullptr;

  // Null members when the library, a symbol or its initialisation is missing.
  Nvml() {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return;
    const auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
    const auto by_bus = reinterpret_cast<ByBusId>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
    const auto list = reinterpret_cast<Processes>(dlsym(lib, "nvmlDeviceGetComputeRunningProcesses"));
    if (init == nullptr || by_bus == nullptr || list == nullptr || init() != 0) {
      dlclose(lib);
      return;
    }
    by_bus_id = by_bus;  // kept open and initialised for the life of the process
    processes = list;
  }
};

}  // namespace

int64_t NvmlProcessBytes(const std::string& pci_bus_id, int pid) {
  static const Nvml nvml;  // thread-safe one-time initialisation
  if (nvml.processes == nullptr) return -1;
  constexpr unsigned int kMax = 256;
  Nvml::ProcessInfo listed[kMax];
  unsigned int count = kMax;
  void* handle = nullptr;
  if (nvml.by_bus_id(pci_bus_id.c_str(), &handle) != 0 || nvml.processes(handle, &count, listed) != 0) return -1;
  for (unsigned int i = 0; i < count && i < kMax; ++i) {
    if (listed[i].pid == static_cast<unsigned int>(pid)) return static_cast<int64_t>(listed[i].used_gpu_memory);
  }
  return -1;
}

}  // namespace slim
