// Uploading a dataset once: the bytes are looked up by SHA-256, size and format among the
// datasets the caller sees, and streamed in chunks only if none matches. Shared by slimctl and
// slim-load, so both deduplicate the same way.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "slim/v1/slim.grpc.pb.h"

namespace slim::client {

struct DatasetUpload {
  std::string name;    // shown in listings
  std::string format;  // "text", "jsonl", "ids-u16", "ids-u32"
  std::string data;    // the file's bytes
};

// Makes a fresh context for each call (deadline, credentials); `streaming` is true for the
// upload itself, which may take longer than a unary call.
using ContextFactory = std::function<std::unique_ptr<grpc::ClientContext>(bool streaming)>;

// Finds or uploads `upload`; on success *out is the dataset (existing or new). `on_progress`
// (optional) is called after each uploaded chunk with the bytes sent so far and the total.
// Returns the status of the failing call: ListDatasets or UploadDataset.
grpc::Status FindOrUploadDataset(v1::Slim::StubInterface& stub, const ContextFactory& context,
                                 const DatasetUpload& upload,
                                 const std::function<void(size_t sent, size_t total)>& on_progress,
                                 v1::Dataset* out);

}  // namespace slim::client
