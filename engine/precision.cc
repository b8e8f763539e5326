#include "engine/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>


// LibTorch 2.4 replaced the per-backend autocast setters with device-type ones.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define SLIM_AUTOCAST_BY_DEVICE_TYPE 1
#endif

namespace slim {

namespace {

bool AutocastEnabled(c10::DeviceType type) {
#ifdef SLIM_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::is_enabled()
                                       : at::autocast::is_cpu_enabled();
#endif
}

void SetAutocast(c10::DeviceType type, bool enabled) {
#ifdef SLIM_AUTOCAST_BY_DEVICE_TYPE
  if (enabled) at::autocast::set_autocast_dtype(type, at::kBFloat16);
  at::autocast::set_autocast_enabled(type, enabled);
#else
  if (type == c10::DeviceType::CUDA) {
    if (enabled) at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(enabled);
  } else {
    if (enabled) at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

}  // namespace

AutocastScope::AutocastScope(c10::DeviceType device_type, Precision precision)
    : device_type_(device_type) {
  if (precision != Precision::kBf16) return;
  active_ = true;
  previous_enabled_ = AutocastEnabled(device_type_);
  SetAutocast(device_type_, true);
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  SetAutocast(device_type_, previous_enabled_);
  if (!previous_enabled_) at::autocast::clear_cache();
}

}  // namespace slim
