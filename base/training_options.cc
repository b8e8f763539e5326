#include "base/training_options.h"

#include <initializer_list>
#include <utility>

#include "base/errors.h"

namespace slim {
namespace {

template <typename E>
E ParseName(const std::string& name, const std::string& field,
            std::initializer_list<std::pair<const char*, E>> choices) {
  std::string allowed;
  for (const auto& [text, value] : choices) {
    if (name == text) return value;
    allowed += (allowed.empty() ? "" : ", ") + std::string(text);
  }
  throw EngineError(ErrorCode::kInvalidArgument,
                    field + ": unknown value '" + name + "' (allowed: " + allowed + ")");
}

}  // namespace

std::string PrecisionName(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }
Precision ParsePrecision(const std::string& name, const std::string& field) {
  return ParseName<Precision>(name, field, {{"fp32", Precision::kFp32}, {"bf16", Precision::kBf16}});
}

std::string StartStateModeName(StartStateMode mode) {
  return mode == StartStateMode::kBoundaries ? "boundaries" : "subtract";
}
StartStateMode ParseStartStateMode(const std::string& name, const std::string& field) {
  return ParseName<StartStateMode>(
      name, field, {{"subtract", StartStateMode::kSubtract}, {"boundaries", StartStateMode::kBoundaries}});
}

std::string OptimizerName(OptimizerKind o) { return o == OptimizerKind::kSgd ? "sgd" : "adamw"; }
OptimizerKind ParseOptimizer(const std::string& name, const std::string& field) {
  return ParseName<OptimizerKind>(name, field, {{"adamw", OptimizerKind::kAdamW}, {"sgd", OptimizerKind::kSgd}});
}

std::string TuningModeName(TuningMode t) { return t == TuningMode::kLora ? "lora" : "full"; }
TuningMode ParseTuningMode(const std::string& name, const std::string& field) {
  return ParseName<TuningMode>(name, field, {{"full", TuningMode::kFull}, {"lora", TuningMode::kLora}});
}

}  // namespace slim
