// What admission and generation need from the part of slimd that runs work on devices (the job
// manager's runner): the devices a fleet has, and short reservations of device memory for work
// that is not a job (a calibration, a generation) counted like a job's quota.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

// Device memory held for one piece of work; destroying it returns the memory (and lets the
// scheduler place a queued job in it).
class DeviceHold {
 public:
  virtual ~DeviceHold() = default;
  virtual const std::string& device() const = 0;  // the device's name as declared ("cpu:0")
};

class DeviceLedger {
 public:
  virtual ~DeviceLedger() = default;
  // This server's devices as declared (names, kinds, capacities).
  virtual v1::ListDevicesResponse DeclaredDevices() const = 0;
  // In a fleet, the devices every live replica published (this one's included); empty for a
  // single slimd.
  virtual std::vector<v1::ListDevicesResponse> FleetDevices() = 0;
  // Reserves `bytes` on the device of `kind` here with the most uncommitted memory (the
  // reservation's process commits the device's worker footprint too), listed in ListDevices as
  // "<purpose>-N". RESOURCE_EXHAUSTED naming what is free when no device has
  // that much; FAILED_PRECONDITION when this server has no device of the kind.
  virtual absl::StatusOr<std::unique_ptr<DeviceHold>> Reserve(const std::string& kind, int64_t bytes,
                                                              const std::string& purpose) = 0;
};

}  // namespace slim::server
