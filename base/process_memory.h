// Memory the system attributes to a process, as opposed to what its tensors use: what slimd
// shows beside each worker's quota and footprint (docs/service.md, "Worker footprints"), and how
// `slim-train footprint` measures a worker on a GPU. Plain C++: NVML is opened at run time.
#pragma once

#include <cstdint>
#include <string>

namespace slim {

// The resident set (VmRSS of /proc/PID/status) of process `pid`; -1 where it cannot be read
// (no such process, or not Linux).
int64_t ResidentBytes(int pid);

// The device memory NVML lists for process `pid` on the GPU at PCI bus id `pci_bus_id`
// ("00000000:65:00.0", as cudaDeviceGetPCIBusId writes it): its CUDA context, library
// workspaces and allocator segments. -1 where NVML (libnvidia-ml.so.1, which comes with the
// driver) is absent, does not know the bus id, or does not list the process.
int64_t NvmlProcessBytes(const std::string& pci_bus_id, int pid);

}  // namespace slim
