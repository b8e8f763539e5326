// Argument checks, page tokens, ids and record (de)serialization shared by the Store
// implementations, so that every backend accepts, rejects and formats exactly the same way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"
#include "slim/v1/slim.pb.h"

namespace slim::server::store_helpers {

inline constexpr int kMaxPageSize = 1000;

// INVALID_ARGUMENT "`field`: empty" for an empty id or prefix.
absl::Status CheckId(const std::string& id, absl::string_view field);
// INVALID_ARGUMENT naming page_size and the range unless 1 <= page_size <= kMaxPageSize.
absl::Status CheckPageSize(int page_size);
// A page token is the decimal insertion number (`seq`) of the previous page's last item; this
// returns the exclusive upper bound of `seq` for the page (INT64_MAX for an empty token).
// Strict: decimal digits only, positive, fits int64; else INVALID_ARGUMENT
// "page_token: malformed".
absl::StatusOr<int64_t> ParsePageToken(const std::string& token);
// "" for no states, else " AND state IN (1,2)" (sorted, deduplicated). The values are integers
// formatted here, so the clause is safe to splice into SQL; both dialects accept it.
std::string StateFilter(const std::vector<v1::JobState>& states);
// FAILED_PRECONDITION "job `id` is RUNNING; ..." unless `state` is SUCCEEDED, FAILED or
// CANCELLED (DeleteJob).
absl::Status CheckEnded(const std::string& id, v1::JobState state);
// "<prefix>-<number>", the number zero-padded to at least 6 digits.
std::string FormatId(absl::string_view prefix, int64_t number);

std::string Serialize(const google::protobuf::MessageLite& message);
// INTERNAL "`backend`: stored `noun` record does not parse" if the bytes are not a `T`.
template <typename T>
absl::StatusOr<T> Parse(absl::string_view data, absl::string_view backend, absl::string_view noun) {
  T message;
  if (!message.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
    return absl::InternalError(absl::StrCat(backend, ": stored ", noun, " record does not parse"));
  }
  return message;
}

}  // namespace slim::server::store_helpers
