// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status (Debian's Abseil 20220623 has none).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SLIM_STATUS_CONCAT_INNER(a, b) a##b
#define SLIM_STATUS_CONCAT(a, b) SLIM_STATUS_CONCAT_INNER(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                   \
  do {                                          \
    const ::absl::Status slim_status_ = (expr); \
    if (!slim_status_.ok()) return slim_status_; \
  } while (0)

// `lhs = value of expr`, or returns its status from the enclosing function.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(SLIM_STATUS_CONCAT(slim_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                          \
  if (!statusor.ok()) return statusor.status();    \
  lhs = std::move(statusor).value()
