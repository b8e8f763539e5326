// Helpers the source files of the jobs library share (job manager, admission, catalog):
// statuses from engine errors, timestamps, page sizes and tenant-visible pages, device names.
// Inline functions in an anonymous namespace: private to server/jobs/, one copy per file.
#pragma once

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/command_answers.h"
#include "base/errors.h"
#include "base/json.h"
#include "server/auth/principal.h"
#include "server/common/status_macros.h"
#include "server/jobs/store.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {
namespace {

namespace fs = std::filesystem;

constexpr int kDefaultPageSize = 50;
constexpr int kMaxPageSize = 1000;

inline absl::Status FromEngineError(const EngineError& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: return absl::InvalidArgumentError(e.what());
    case ErrorCode::kResourceExhausted: return absl::ResourceExhaustedError(e.what());
    case ErrorCode::kInternal: return absl::InternalError(e.what());
  }
  return absl::InternalError(e.what());
}

inline google::protobuf::Timestamp Now() {
  const int64_t micros = absl::ToUnixMicros(absl::Now());
  google::protobuf::Timestamp t;
  t.set_seconds(micros / 1000000);
  t.set_nanos(static_cast<int32_t>(micros % 1000000) * 1000);
  return t;
}

// "RUNNING" for JOB_STATE_RUNNING: the name people see in messages.
inline std::string StateName(v1::JobState s) { return v1::JobState_Name(s).substr(std::strlen("JOB_STATE_")); }

// SUCCEEDED, FAILED or CANCELLED: nothing more happens to the job.
inline bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// Data-parallel ranks of a job (1 for an ordinary job).
inline int Workers(const v1::JobSpec& spec) { return std::max(1, spec.data_parallel().workers()); }

// A rank's worker log in the job's directory: "worker.log" for rank 0, "worker-rank<N>.log".
inline std::string WorkerLogName(int rank) {
  return rank == 0 ? std::string("worker.log") : absl::StrCat("worker-rank", rank, ".log");
}

inline absl::StatusOr<int> PageSize(int requested) {
  if (requested < 0 || requested > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: must be in [0, ", kMaxPageSize, "], got ", requested));
  }
  return requested == 0 ? kDefaultPageSize : requested;
}

inline v1::JobEvent Event(const std::string& kind, const std::string& message = "") {
  v1::JobEvent e;
  e.set_kind(kind);
  e.set_message(message);
  *e.mutable_time() = Now();
  return e;
}


inline bool IsCpuDevice(const std::string& device) { return device.rfind("cpu", 0) == 0; }

// "cpu:1" → "cpu" (declared CPU devices share the process's CPU), "cuda:0" stays.
inline std::string WorkerDevice(const std::string& device) { return IsCpuDevice(device) ? "cpu" : device; }

// Model.config_json: the model file's config metadata.
inline std::string ConfigJson(const ModelSummary& summary) {
  Json o = JsonObject();
  for (const auto& [k, v] : summary.config) o.members[k] = JsonString(v);
  return SerializeJson(o);
}

// A name people give a job, dataset or model (docs/service.md, "Names"): at most 200 bytes of
// UTF-8 without control characters (U+0000–U+001F, U+007F–U+009F), so that listings and
// terminals show exactly what was given. `required`: not empty either.
inline absl::Status CheckName(const std::string& field, const std::string& name, bool required) {
  if (name.empty()) return required ? absl::InvalidArgumentError(field + ": is required") : absl::OkStatus();
  if (name.size() > 200) return absl::InvalidArgumentError(absl::StrCat(field, ": at most 200 bytes, got ", name.size()));
  for (size_t i = 0; i < name.size();) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    const int length = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool valid = length > 0 && i + length <= name.size();
    for (int k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(name[i + k]) >> 6) == 0x2;
    if (!valid) return absl::InvalidArgumentError(absl::StrCat(field, ": not UTF-8 at byte ", i));
    const bool c1 = c == 0xc2 && static_cast<unsigned char>(name[i + 1]) < 0xa0;  // U+0080–U+009F
    if (c < 0x20 || c == 0x7f || c1) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": control character at byte ", i,
                                                     " (names are printable text; docs/service.md, \"Names\")"));
    }
    i += static_cast<size_t>(length);
  }
  return absl::OkStatus();
}

// The store listing for `caller`: its tenant's records (and shared models), or all for admins.
inline ListScope Scope(const Principal& caller) { return caller.admin() ? ListScope::All() : ListScope::Of(caller.tenant); }

// One page of what `caller` may see. The store lists the caller's tenant only (Scope), so one
// fetch fills a page; `visible` checks again. Store pages are fetched with the size still
// missing, so every fetched item is either returned or skipped for good and the store's page
// token stays exact.
template <typename T, typename Fetch>
absl::StatusOr<Page<T>> VisiblePage(int page_size, std::string token, const Fetch& fetch,
                                    const std::function<bool(const T&)>& visible) {
  Page<T> out;
  while (true) {
    ASSIGN_OR_RETURN(Page<T> page, fetch(page_size - static_cast<int>(out.items.size()), token));
    for (T& item : page.items) {
      if (visible(item)) out.items.push_back(std::move(item));
    }
    token = page.next_page_token;
    if (token.empty() || static_cast<int>(out.items.size()) == page_size) {
      out.next_page_token = token;
      return out;
    }
  }
}

}  // namespace
}  // namespace slim::server
