// A device as `slim-train devices` reports it (engine/devices.h discovers them; slimd reads the
// list through base/command_answers.h).
#pragma once

#include <cstdint>
#include <string>

namespace slim {

struct DeviceInfo {
  std::string name;         // "cpu", "cuda:0", ...
  std::string kind;         // "cpu" or "cuda"; calibrations are cached per kind and model
  std::string description;  // e.g. the GPU's product name
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
  std::string pci_bus_id{}; // GPUs: the PCI bus id by which NVML finds them; empty for the CPU
};

}  // namespace slim
