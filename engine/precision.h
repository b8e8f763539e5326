// Autocast for a training step's precision (training_options.h): bf16 autocast with fp32
// attention states, or nothing for fp32.
#pragma once

#include <c10/core/DeviceType.h>

#include "base/training_options.h"

namespace slim {

// RAII: while alive, ops on `device_type` autocast to bf16 (if precision is kBf16); restores
// the previous autocast setting and clears the autocast cast cache on destruction.
// Not thread-safe across threads (autocast state is thread-local).
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType device_type, Precision precision);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType device_type_;
  bool active_ = false;
  bool previous_enabled_ = false;
};

}  // namespace slim
