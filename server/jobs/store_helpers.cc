#include "server/jobs/store_helpers.h"

#include <algorithm>
#include <limits>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"

namespace slim::server::store_helpers {

absl::Status CheckId(const std::string& id, absl::string_view field) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  return absl::OkStatus();
}

absl::Status CheckEnded(const std::string& id, v1::JobState state) {
  if (state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", v1::JobState_Name(state).substr(10),
                                                    "; only ended jobs can be deleted (cancel it first)"));
}

absl::Status CheckPageSize(int page_size) {
  if (page_size < 1 || page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: must be in [1, ", kMaxPageSize, "], got ", page_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return std::numeric_limits<int64_t>::max();
  int64_t seq = 0;
  const bool digits = token.size() <= 19 && std::all_of(token.begin(), token.end(), [](char c) {
                        return absl::ascii_isdigit(static_cast<unsigned char>(c));
                      });
  if (!digits || !absl::SimpleAtoi(token, &seq) || seq <= 0) {
    return absl::InvalidArgumentError("page_token: malformed");
  }
  return seq;
}

std::string StateFilter(const std::vector<v1::JobState>& states) {
  if (states.empty()) return "";
  const std::set<int> unique(states.begin(), states.end());
  return absl::StrCat(" AND state IN (", absl::StrJoin(unique, ","), ")");
}

std::string FormatId(absl::string_view prefix, int64_t number) {
  std::string digits = absl::StrCat(number);
  if (digits.size() < 6) digits.insert(0, 6 - digits.size(), '0');
  return absl::StrCat(prefix, "-", digits);
}

std::string Serialize(const google::protobuf::MessageLite& message) {
  std::string data;
  message.SerializeToString(&data);
  return data;
}

}  // namespace slim::server::store_helpers
