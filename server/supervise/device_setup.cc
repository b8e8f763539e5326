#include "server/supervise/device_setup.h"

#include <cstdio>
#include <map>
#include <sstream>

#include "base/byte_size.h"
#include "base/errors.h"
#include "server/supervise/engine_commands.h"

namespace slim::server {
namespace {

// The machine's devices, as `slim-train devices` finds them: slimd links no
// LibTorch (and so holds no CUDA context), so discovery runs in a subprocess
// like all tensor work.
std::vector<DeviceInfo> DiscoverDevices(const std::string& worker_binary, const std::string& data_dir) {
  EngineCommands commands({worker_binary, "", data_dir + "/tmp"});
  absl::StatusOr<std::vector<DeviceInfo>> found = commands.Devices();
  if (!found.ok()) {
    throw EngineError(ErrorCode::kInternal,
                      "cannot discover devices with " + worker_binary + ": " + std::string(found.status().message()));
  }
  return *found;
}

std::vector<DeviceCapacity> ParseDevices(const std::string& list, const std::string& worker_binary,
                                         const std::string& data_dir) {
  std::vector<DeviceCapacity> devices;
  std::vector<DeviceInfo> found;  // discovered at the first CUDA entry
  int cpus = 0;
  std::stringstream items(list);
  for (std::string item; std::getline(items, item, ',');) {
    const size_t colon = item.find(':');
    const std::string kind = item.substr(0, colon);
    if (kind == "cpu") {
      CheckArgument(colon != std::string::npos, "--devices: '" + item + "' needs a size, e.g. cpu:4GiB");
      devices.push_back({"cpu:" + std::to_string(cpus++), "cpu", ParseBytes(item.substr(colon + 1), "--devices")});
    } else if (kind == "cuda") {
      CheckArgument(colon != std::string::npos, "--devices: '" + item + "' needs an index, e.g. cuda:0");
      const std::string rest = item.substr(colon + 1);
      const size_t second = rest.find(':');
      const std::string name = "cuda:" + rest.substr(0, second);
      int64_t capacity = 0;
      std::string bus_id;
      if (found.empty()) found = DiscoverDevices(worker_binary, data_dir);
      for (const DeviceInfo& d : found) {
        if (d.name != name) continue;
        capacity = d.total_bytes * 95 / 100;
        bus_id = d.pci_bus_id;
      }
      CheckArgument(capacity > 0, "--devices: no CUDA device " + name + " on this machine");
      if (second != std::string::npos) capacity = ParseBytes(rest.substr(second + 1), "--devices");
      devices.push_back({name, "cuda", capacity, 0, bus_id});
    } else {
      throw EngineError(ErrorCode::kInvalidArgument,
                        "--devices: unknown device '" + item + "' (use cpu:SIZE or cuda:N[:SIZE])");
    }
  }
  return devices;
}

std::vector<DeviceCapacity> DiscoveredDevices(const std::string& worker_binary, const std::string& data_dir) {
  std::vector<DeviceCapacity> devices;
  for (const DeviceInfo& d : DiscoverDevices(worker_binary, data_dir)) {
    if (d.kind == "cpu") devices.push_back({"cpu:0", "cpu", d.total_bytes / 2});
    if (d.kind == "cuda") devices.push_back({d.name, "cuda", d.total_bytes * 95 / 100, 0, d.pci_bus_id});
  }
  return devices;
}

// Each device's worker footprint (server/sched/scheduler.h): `setting` "auto"
// measures it with `slim-train footprint`, once for the CPU devices (they are
// slices of one machine's memory) and once per GPU; a size sets it for every
// device. A device that cannot hold one worker beside the smallest quota is
// reported, not refused: its jobs are refused by name at creation.
void SetWorkerFootprints(const std::string& setting, const std::string& worker_binary, const std::string& data_dir,
                         std::vector<DeviceCapacity>* devices) {
  if (setting != "auto") {
    const int64_t bytes = ParseBytes(setting, "--worker-footprint");
    for (auto& d : *devices) d.worker_footprint_bytes = bytes;
    return;
  }
  EngineCommands commands({worker_binary, "", data_dir + "/tmp"});
  std::map<std::string, int64_t> measured;  // by slim-train's device name
  for (auto& d : *devices) {
    const std::string device = d.kind == "cpu" ? "cpu" : d.name;
    if (!measured.count(device)) {
      absl::StatusOr<WorkerFootprint> found = commands.Footprint(device);
      if (!found.ok()) {
        throw EngineError(ErrorCode::kInternal, "--worker-footprint auto: cannot measure a worker on " + device +
                                                    " with " + worker_binary + ": " +
                                                    std::string(found.status().message()));
      }
      measured[device] = found->bytes;
      std::printf("slimd: worker footprint on %s: %s (%s)\n", device.c_str(), FormatBytes(found->bytes).c_str(),
                  found->method.c_str());
    }
    d.worker_footprint_bytes = measured[device];
    if (d.worker_footprint_bytes >= d.capacity_bytes) {
      std::fprintf(stderr,
                   "slimd: warning: %s (%s) cannot hold one worker (footprint %s): no "
                   "job will be placed on it; "
                   "declare more memory, or --worker-footprint 0 to count quotas only\n",
                   d.name.c_str(), FormatBytes(d.capacity_bytes).c_str(),
                   FormatBytes(d.worker_footprint_bytes).c_str());
    }
  }
}

}  // namespace

std::vector<DeviceCapacity> SetUpDevices(const std::string& list, const std::string& footprint,
                                         const std::string& worker_binary, const std::string& data_dir) {
  std::vector<DeviceCapacity> devices =
      list.empty() ? DiscoveredDevices(worker_binary, data_dir) : ParseDevices(list, worker_binary, data_dir);
  CheckArgument(!devices.empty(), "--devices: no devices");
  SetWorkerFootprints(footprint, worker_binary, data_dir, &devices);
  return devices;
}

}  // namespace slim::server
