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

// The one table of error codes shared by the worker, slimd and slimctl: the name in worker
// events (docs/worker-protocol.md), slim-train's exit status, and the google.rpc.Code (and
// absl::StatusCode) value the service reports.
struct ErrorCodeInfo {
  ErrorCode code;
  const char* name;
  int exit_status;
  int grpc_code;
};
inline constexpr ErrorCodeInfo kErrorCodes[] = {
    {ErrorCode::kInvalidArgument, "invalid_argument", 2, 3},
    {ErrorCode::kResourceExhausted, "resource_exhausted", 3, 8},
    {ErrorCode::kInternal, "internal", 1, 13},
};

inline const ErrorCodeInfo& ErrorCodeInfoOf(ErrorCode code) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (info.code == code) return info;
  }
  return kErrorCodes[2];  // unreachable: every code is in the table
}
inline std::string ErrorCodeName(ErrorCode code) { return ErrorCodeInfoOf(code).name; }
inline int ExitStatus(ErrorCode code) { return ErrorCodeInfoOf(code).exit_status; }
inline int GrpcCode(ErrorCode code) { return ErrorCodeInfoOf(code).grpc_code; }
// A name from the table; anything else (a newer or broken worker) counts as internal.
inline ErrorCode ErrorCodeFromName(const std::string& name) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    if (name == info.name) return info.code;
  }
  return ErrorCode::kInternal;
}

// Throws EngineError(kInvalidArgument, message) unless `condition` holds.
inline void CheckArgument(bool condition, const std::string& message) {
  if (!condition) throw EngineError(ErrorCode::kInvalidArgument, message);
}

}  // namespace slim
