// Error type thrown by the engine. The engine builds without Abseil (the GPU machine has
// only LibTorch), so it reports failures as exceptions carrying a status-like code; the
// service converts them to absl::Status at its boundary.
#pragma once

#include <stdexcept>
#include <string>

namespace slim {

enum class ErrorCode {
  kInvalidArgument,    // a caller-supplied value is out of range or malformed
  kResourceExhausted,  // a memory cap or quota would be exceeded
  kInternal,           // a broken invariant inside the engine
};

class EngineError : public std::runtime_error {
 public:
  EngineError(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

// Throws EngineError(kInvalidArgument, message) unless `condition` holds.
inline void CheckArgument(bool condition, const std::string& message) {
  if (!condition) throw EngineError(ErrorCode::kInvalidArgument, message);
}

}  // namespace slim
