// Calibration of the memory and time model (memory_model.h) from short probe steps measured on
// the device itself: CUDA caching-allocator peak, or on CPU the counting allocator's peak.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/memory_model.h"

namespace slim {

// One measured probe step, for reports and diagnostics.
struct CalibrationProbe {
  int64_t seq_len = 0, chunk_size = 0;
  int64_t peak_bytes = 0;  // measured, relative to the memory in use before the model existed
  double seconds = 0;      // fastest timed step
};

struct CalibrationOptions {
  // Where fitted coefficients are cached, one file per key; empty disables the cache.
  std::string cache_dir;
  int timed_steps = 2;  // per probe, after one untimed step of the same shape
};

// The default cache directory: $SLIM_CACHE_DIR, else $XDG_CACHE_HOME/slim, else ~/.cache/slim;
// calibrations live in <that>/calibration.
std::string DefaultCalibrationCacheDir();

// Identifies what a calibration depends on: model config, device kind, precision, tuning mode
// (and LoRA rank), optimizer and batch size up to kCalibrationMaxProbeBatch (larger batches
// share that one). The sequence length is not part of it.
std::string CalibrationKey(const StepShape& shape, const std::string& device_kind);

// Runs probe steps of shape.model at CalibrationProbeBatch(shape.batch) on `device` (e.g. "cpu", "cuda:0") and fits
// a (activation bytes per token), b (workspace, raised so that no probe exceeds the fit) and
// the step-time coefficients. One-time first-step allocations (optimizer state, lazy inits) are
// made by a warm-up step before any probe is measured. Takes seconds to a minute.
// `probes`, if given, receives the measured probe steps.
MemoryCoefficients MeasureCalibration(const StepShape& shape, const std::string& device,
                                      const CalibrationOptions& options = {},
                                      std::vector<CalibrationProbe>* probes = nullptr);

// MeasureCalibration through the cache: instant after the first call for a key.
MemoryCoefficients Calibrate(const StepShape& shape, const std::string& device,
                             const CalibrationOptions& options);

// The cached calibration for `shape` on `device`, or nothing (no cache directory, or no entry
// yet): what Calibrate would return without measuring.
std::optional<MemoryCoefficients> CachedCalibration(const StepShape& shape, const std::string& device,
                                                    const CalibrationOptions& options);

}  // namespace slim
