// Datasets and models (docs/service.md): uploads verified (size, SHA-256, format) and
// registered, imports checked by `slim-train inspect`, listings by tenant, deletion of what no
// active job uses, tenants' dataset storage limits, and generation from a model in a
// reservation (docs/service.md, "Generation").
//
// Thread-safety: every method may be called from any thread. ImportModel and Generate run a
// slim-train process on the calling thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/principal.h"
#include "server/jobs/device_ledger.h"
#include "server/jobs/store.h"
#include "server/supervise/engine_commands.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

struct CatalogOptions {
  std::string data_dir;  // datasets/<id> and models/<id>.safetensors live here
  std::string temp_dir;  // uploads in progress
  int64_t max_dataset_bytes = int64_t{1} << 30;
  int64_t tenant_max_dataset_bytes = 0;  // per tenant, for user tokens; 0: no limit
  // Device memory reserved for one Generate; 0: the model file's size × 2 + 16 MiB.
  int64_t generate_quota_bytes = 0;
  std::string generate_device_kind = "cpu";  // generation runs on a device of this kind
};

class Catalog {
 public:
  // `store`, `engine` and `devices` outlive the catalog.
  Catalog(Store& store, EngineCommands& engine, DeviceLedger& devices, CatalogOptions options);

  // Datasets: the RPC layer streams the upload into `temp_path` (a TempPath()), then calls
  // this to verify size and checksum and register it. The temp file is consumed.
  absl::StatusOr<v1::Dataset> AddDataset(const v1::UploadDatasetHeader& header, const std::string& temp_path,
                                         const Principal& caller);
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListDatasetsResponse> ListDatasets(const v1::ListDatasetsRequest& request, const Principal& caller);
  // FAILED_PRECONDITION while a queued, running or cancelling job uses the dataset, and unless
  // `force` while ended jobs that used it remain (naming them).
  absl::Status DeleteDataset(const std::string& id, bool force, const Principal& caller);
  // A dataset `caller` sees with this content digest (the newest), if any.
  absl::StatusOr<std::optional<v1::Dataset>> FindDatasetByDigest(const std::string& sha256, const Principal& caller);
  std::string TempPath();  // a fresh file name under temp_dir
  int64_t max_dataset_bytes() const { return options_.max_dataset_bytes; }
  std::string DatasetPath(const std::string& id) const;

  // Models. Imports are for admins (enforced by the RPC layer) and shared; a file with the
  // bytes of a shared model already imported returns that model (`existing`). A Hugging Face
  // checkpoint directory is converted by a slim-train process first (its memory: about the
  // fp32 model, on the host, unreserved) and the converted file imported; converting the same
  // checkpoint the same way again gives the same bytes, so that import is `existing` too.
  absl::StatusOr<v1::ImportModelResponse> ImportModel(const v1::ImportModelRequest& request);
  // The record and the file. NOT_FOUND unless `caller` sees it; PERMISSION_DENIED for a shared
  // model unless an admin; FAILED_PRECONDITION while a queued, running or cancelling job
  // fine-tunes it.
  absl::Status DeleteModel(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::Model> GetModel(const std::string& id, const Principal& caller);
  absl::StatusOr<v1::ListModelsResponse> ListModels(const v1::ListModelsRequest& request, const Principal& caller);
  absl::StatusOr<std::string> ModelPath(const std::string& id, const Principal& caller);
  std::string ModelFilePath(const std::string& id) const;  // models/<id>.safetensors
  // Samples from a model; `emit` receives text pieces as they are drawn and returns false to
  // stop early (the client went away). `cancelled` (optional) is polled while the sampler runs:
  // true kills it, also before it has drawn a token (a long prompt).
  absl::Status Generate(const v1::GenerateRequest& request, const Principal& caller,
                        const std::function<bool(const std::string&)>& emit,
                        const std::function<bool()>& cancelled = nullptr);

 private:
  // Imports the model file at `path` (already checked to be a regular file) named `name`.
  absl::StatusOr<v1::ImportModelResponse> ImportModelFile(const std::string& path, const std::string& name);
  // The tenant's stored datasets plus `size_bytes` against its limit.
  absl::Status CheckDatasetLimit(const Principal& caller, int64_t size_bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store& store_;
  EngineCommands& engine_;
  DeviceLedger& devices_;
  const CatalogOptions options_;
  // Held from a limit check to the insert it allows, and across a deletion's check that no
  // job uses the dataset.
  absl::Mutex mu_;
  std::atomic<int64_t> temp_counter_{0};
};

}  // namespace slim::server
