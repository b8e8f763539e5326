// Job spec files for slimctl: the YAML/JSON job spec (docs/job-spec.md) with server-side
// names — datasets and models are ids — read into the API's JobSpec.
//
// Conveniences over the raw API message:
//   - a data entry may be a local file (a path string that is not a dataset id, or
//     {file: path, format: ...}); `upload` is called for it and returns what stands for it in
//     the API's DataRef: {"dataset": id} once uploaded, or, for a plan,
//     {"file": {"name", "size_bytes", "sha256"}};
//   - memory.quota may be a number of bytes or a size with units; chunk_size may be "auto";
//   - `overrides` ("training.steps=100", "memory.quota=2GiB") set fields before conversion,
//     values read as YAML scalars.
// Errors are EngineError(kInvalidArgument) naming the file and field.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "base/json.h"
#include "slim/v1/slim.pb.h"

namespace slim::client {

using LocalDataUploader = std::function<Json(const std::string& path, const std::string& format)>;

// `path` "-" reads the spec from stdin (relative data paths are then relative to the working
// directory).
v1::JobSpec LoadJobSpec(const std::string& path, const std::vector<std::string>& overrides,
                        const LocalDataUploader& upload);

// True for ids the server hands out for datasets ("ds-000001").
bool LooksLikeDatasetId(const std::string& text);

}  // namespace slim::client
