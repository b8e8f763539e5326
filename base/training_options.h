// Plain enums that describe how a training step runs, with their names. No LibTorch: the
// planner and the service use them too.
#pragma once

#include <string>

namespace slim {

// fp32, or bf16 autocast with fp32 attention states.
enum class Precision { kFp32, kBf16 };

// How the backward sweep gets each slice's start state.
enum class StartStateMode {
  kSubtract,    // start = end − slice contribution; memory O(1) in L, rounding drift O(L/C)
  kBoundaries,  // start states stored by the forward sweep; memory O(L/C · state), no drift
};

enum class OptimizerKind { kAdamW, kSgd };

// Which weights train: all of them, or LoRA adapters on a frozen base.
enum class TuningMode { kFull, kLora };

// Names used in flags, specs and JSON. Parse* throw EngineError(kInvalidArgument) naming
// `field` and the allowed values.
std::string PrecisionName(Precision p);
Precision ParsePrecision(const std::string& name, const std::string& field = "precision");
std::string StartStateModeName(StartStateMode mode);
StartStateMode ParseStartStateMode(const std::string& name, const std::string& field = "mode");
std::string OptimizerName(OptimizerKind o);
OptimizerKind ParseOptimizer(const std::string& name, const std::string& field = "optimizer");
std::string TuningModeName(TuningMode t);
TuningMode ParseTuningMode(const std::string& name, const std::string& field = "tuning");

}  // namespace slim
