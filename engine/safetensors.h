// Reading and writing safetensors files (8-byte little-endian header size, JSON header with
// string metadata, raw little-endian tensor data), with an integrity checksum: the metadata key
// "checksum" holds the CRC-32C of the file with that value replaced by zeros, so a flipped bit
// anywhere — header or data — is detected on read. Files are written atomically.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <string>

namespace slim {

using SafetensorsMetadata = std::map<std::string, std::string>;
using NamedTensorMap = std::map<std::string, at::Tensor>;

struct SafetensorsContents {
  SafetensorsMetadata metadata;  // without "checksum"
  NamedTensorMap tensors;        // CPU, contiguous
};

// Supported dtypes: F32, F64, BF16, F16, I64, U8. Writes `path` atomically (temporary file in the
// same directory, fsync, rename). Throws EngineError(kInternal) if writing fails; no partial
// file is left at `path`.
void WriteSafetensors(const std::string& path, const SafetensorsMetadata& metadata,
                      const NamedTensorMap& tensors);
// Any file written the same durable way (temporary file, fsync, rename, directory fsync):
// `path` holds its old bytes or all of `bytes`. Throws EngineError(kInternal) on failure.
void WriteFileAtomically(const std::string& path, const std::string& bytes);

// Throws EngineError(kInvalidArgument) "<what> <path>: ..." for an unreadable, truncated or
// malformed file and for a checksum mismatch ("corrupted"). Files without a checksum (written
// by other tools) are accepted. `what` names the kind of file in messages ("model file").
// The whole header is checked before any tensor is allocated (whole-number shapes and offsets,
// tensors inside the file and not overlapping), so the tensors take at most the file's size.
SafetensorsContents ReadSafetensors(const std::string& path, const std::string& what);

// Reads the file as ReadSafetensors does but hands each tensor to `visit` as soon as it is read,
// in file order, keeping none: at most one tensor of the file is in memory at a time (imports
// of large checkpoints stream through it). Returns the metadata. A stored checksum is verified
// after the last visit, so a caller must not commit what it built before this returns.
SafetensorsMetadata VisitSafetensors(const std::string& path, const std::string& what,
                                     const std::function<void(const std::string& name, at::Tensor tensor)>& visit);

}  // namespace slim
