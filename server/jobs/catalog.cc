#include "server/jobs/catalog.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "base/byte_size.h"
#include "base/dataset.h"
#include "base/errors.h"
#include "base/model_config.h"
#include "base/sha256.h"
#include "base/utf8.h"
#include "server/jobs/job_helpers.h"

namespace slim::server {

Catalog::Catalog(Store& store, EngineCommands& engine, DeviceLedger& devices, CatalogOptions options)
    : store_(store), engine_(engine), devices_(devices), options_(std::move(options)) {}

std::string Catalog::DatasetPath(const std::string& id) const {
  return (fs::path(options_.data_dir) / "datasets" / id).string();
}

namespace {

// Every record a paged store listing returns, all pages.
template <typename T, typename ListFn>
absl::StatusOr<std::vector<T>> ListAll(ListFn list) {
  std::vector<T> all;
  std::string token;
  do {
    ASSIGN_OR_RETURN(Page<T> page, list(kMaxPageSize, token));
    for (T& item : page.items) all.push_back(std::move(item));
    token = page.next_page_token;
  } while (!token.empty());
  return all;
}

// "job-000001, job-000002 and 3 more"
std::string JobIdsText(const std::vector<std::string>& ids) {
  std::string text;
  for (size_t i = 0; i < ids.size() && i < 3; ++i) text += (i == 0 ? "" : ", ") + ids[i];
  if (ids.size() > 3) absl::StrAppend(&text, " and ", ids.size() - 3, " more");
  return text;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Datasets

std::string Catalog::TempPath() {
  return (fs::path(options_.temp_dir) / absl::StrCat("upload-", ::getpid(), "-", temp_counter_++)).string();
}

absl::StatusOr<v1::Dataset> Catalog::AddDataset(const v1::UploadDatasetHeader& header, const std::string& temp_path,
                                                   const Principal& caller) {
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } cleanup{temp_path};
  RETURN_IF_ERROR(CheckName("header.name", header.name(), /*required=*/true));
  const std::string format = header.format().empty() ? "text" : header.format();
  try {
    ParseDataFormat(format, "header.format");
  } catch (const EngineError& e) {
    return FromEngineError(e);
  }
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(temp_path, ec));
  if (ec) return absl::InternalError("upload lost: " + ec.message());
  if (size != header.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("header.size_bytes: the upload has ", size, " bytes, the header says ",
                                                   header.size_bytes()));
  }
  std::string digest;
  if (!Sha256OfFile(temp_path, &digest)) return absl::InternalError("upload lost: cannot read " + temp_path);
  if (digest != header.sha256()) {
    return absl::InvalidArgumentError("header.sha256: the upload's SHA-256 is " + digest + ", the header says '" +
                                      header.sha256() + "'");
  }
  // The content is checked now, so that a job never fails on it later: JSONL as objects (its
  // text field is chosen per job), the other formats completely. Messages name the upload by its
  // name, not by the server's path.
  try {
    if (format == "jsonl") {
      CheckJsonlObjects(temp_path);
    } else {
      DataSource source;
      source.path = temp_path;
      source.format = ParseDataFormat(format);
      source.vocab_size = int64_t{1} << 31;
      ReadTokens(source);
    }
  } catch (const EngineError& e) {
    std::string message = e.what();
    for (size_t at = message.find(temp_path); at != std::string::npos; at = message.find(temp_path, at)) {
      message.replace(at, temp_path.size(), header.name());
    }
    return absl::InvalidArgumentError("data: " + message);
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckDatasetLimit(caller, size));
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("ds"));
  const fs::path target = DatasetPath(id);
  fs::rename(temp_path, target, ec);
  if (ec) return absl::InternalError("cannot store the dataset: " + ec.message());
  cleanup.path.clear();
  v1::Dataset dataset;
  dataset.set_id(id);
  dataset.set_name(header.name());
  dataset.set_tenant(caller.tenant);
  dataset.set_format(format);
  dataset.set_size_bytes(size);
  dataset.set_sha256(digest);
  *dataset.mutable_create_time() = Now();
  const absl::Status put = store_.PutDataset(dataset);
  if (!put.ok()) {
    fs::remove(target, ec);
    return put;
  }
  return dataset;
}

absl::StatusOr<v1::Dataset> Catalog::GetDataset(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Dataset> dataset = store_.GetDataset(id);
  if (dataset.ok() && !caller.Sees(dataset->tenant())) return absl::NotFoundError("dataset " + id + " not found");
  return dataset;
}

absl::StatusOr<v1::ListDatasetsResponse> Catalog::ListDatasets(const v1::ListDatasetsRequest& request,
                                                                  const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(Page<v1::Dataset> page,
                   VisiblePage<v1::Dataset>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListDatasets(size, token, Scope(caller)); },
                       [&](const v1::Dataset& d) { return caller.Sees(d.tenant()); }));
  v1::ListDatasetsResponse response;
  for (v1::Dataset& d : page.items) *response.add_datasets() = std::move(d);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<std::optional<v1::Dataset>> Catalog::FindDatasetByDigest(const std::string& sha256,
                                                                        const Principal& caller) {
  ASSIGN_OR_RETURN(const std::vector<v1::Dataset> all,
                   ListAll<v1::Dataset>([&](int size, const std::string& token) {
                     return store_.ListDatasets(size, token, Scope(caller));
                   }));
  for (const v1::Dataset& d : all) {
    if (d.sha256() == sha256 && caller.Sees(d.tenant())) return d;
  }
  return std::nullopt;
}

absl::Status Catalog::DeleteDataset(const std::string& id, bool force, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const v1::Dataset dataset, store_.GetDataset(id));
  if (!caller.Sees(dataset.tenant())) return absl::NotFoundError("dataset " + id + " not found");
  const auto uses = [&id](const v1::Job& job) {
    for (const auto* refs : {&job.spec().data().train(), &job.spec().data().validation()}) {
      for (const v1::DataRef& ref : *refs) {
        if (ref.dataset() == id) return true;
      }
    }
    return false;
  };
  ASSIGN_OR_RETURN(const std::vector<v1::Job> active,
                   store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  for (const v1::Job& job : active) {
    if (uses(job)) {
      return absl::FailedPreconditionError(absl::StrCat("dataset ", id, " is used by job ", job.id(), " (",
                                                        StateName(job.state()), ")"));
    }
  }
  if (!force) {
    ASSIGN_OR_RETURN(const std::vector<v1::Job> ended,
                     store_.JobsInStates({v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}));
    std::vector<std::string> users;
    for (const v1::Job& job : ended) {
      if (uses(job)) users.push_back(job.id());
    }
    if (!users.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset ", id, " was used by ", users.size(), users.size() == 1 ? " ended job (" : " ended jobs (",
          JobIdsText(users), "), which could not be rerun from their specs without it; delete it with force"));
    }
  }
  RETURN_IF_ERROR(store_.DeleteDataset(id));
  std::error_code ec;
  fs::remove(DatasetPath(dataset.id()), ec);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Models

absl::StatusOr<v1::ImportModelResponse> Catalog::ImportModel(const v1::ImportModelRequest& request) {
  if (request.path().empty() || request.path()[0] != '/') {
    return absl::InvalidArgumentError("path: must be an absolute path on the server, got '" + request.path() + "'");
  }
  RETURN_IF_ERROR(CheckName("name", request.name(), /*required=*/false));
  // Checked before the file is read for its digest: a FIFO or device would block or never end.
  std::error_code ec;
  const fs::file_status status = fs::status(request.path(), ec);
  if (ec || !fs::exists(status)) return absl::InvalidArgumentError("path: " + request.path() + ": no such file");
  // Default name: the file's or directory's ("/ckpts/gpt2/" is "gpt2").
  fs::path named = fs::path(request.path()).lexically_normal();
  if (named.filename().empty()) named = named.parent_path();
  const std::string name = request.name().empty() ? named.filename().string() : request.name();
  if (fs::is_directory(status)) {
    // A Hugging Face checkpoint: converted by slim-train (slimd does no tensor work), then
    // imported as the file it wrote.
    const std::string feature_map = request.feature_map().empty() ? "softmax" : request.feature_map();
    try {
      ParseFeatureMap(feature_map);
    } catch (const EngineError& e) {
      return absl::InvalidArgumentError(e.what());
    }
    const int64_t features = request.features() == 0 ? 64 : request.features();
    if (features < 1 || features > 65536) {
      return absl::InvalidArgumentError("features: " + std::to_string(request.features()) + " is out of range [1, 65536]");
    }
    const std::string converted = TempPath();
    const absl::Status imported = engine_.ImportHf(request.path(), converted, feature_map, features);
    if (!imported.ok()) {
      fs::remove(converted, ec);
      if (imported.code() != absl::StatusCode::kInvalidArgument) return imported;
      return absl::InvalidArgumentError(absl::StrCat("path: ", imported.message()));
    }
    absl::StatusOr<v1::ImportModelResponse> response = ImportModelFile(converted, name);
    fs::remove(converted, ec);
    return response;
  }
  if (!request.feature_map().empty() || request.features() != 0) {
    return absl::InvalidArgumentError("feature_map, features: only for a Hugging Face checkpoint directory; " +
                                      request.path() + " is a model file, imported as it is");
  }
  if (!fs::is_regular_file(status)) {
    return absl::InvalidArgumentError("path: " + request.path() + ": not a regular file or a directory");
  }
  return ImportModelFile(request.path(), name);
}

absl::StatusOr<v1::ImportModelResponse> Catalog::ImportModelFile(const std::string& path, const std::string& name) {
  std::error_code ec;
  // The same bytes imported before: that shared model, not a second copy.
  std::string digest;
  if (!Sha256OfFile(path, &digest)) return absl::InvalidArgumentError("path: " + path + ": cannot read");
  ASSIGN_OR_RETURN(const std::vector<v1::Model> models,
                   ListAll<v1::Model>([&](int size, const std::string& token) {
                     return store_.ListModels(size, token, ListScope::All());
                   }));
  v1::ImportModelResponse response;
  for (const v1::Model& m : models) {
    if (m.tenant().empty() && m.sha256() == digest) {
      *response.mutable_model() = m;
      response.set_existing(true);
      return response;
    }
  }
  absl::StatusOr<ModelSummary> summary = engine_.Inspect(path);
  if (!summary.ok()) {
    if (summary.status().code() != absl::StatusCode::kInvalidArgument) return summary.status();
    return absl::InvalidArgumentError(absl::StrCat("path: ", summary.status().message()));
  }
  ASSIGN_OR_RETURN(const std::string id, store_.NewId("model"));
  const fs::path target = ModelFilePath(id);
  const fs::path tmp = fs::path(TempPath());
  fs::copy_file(path, tmp, ec);
  if (!ec) fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return absl::InternalError("cannot copy the model: " + ec.message());
  }
  v1::Model model;
  model.set_id(id);
  model.set_name(name);
  model.set_size_bytes(static_cast<int64_t>(fs::file_size(target, ec)));
  model.set_parameters(summary->parameters);
  model.set_config_json(ConfigJson(*summary));
  model.set_sha256(digest);
  *model.mutable_create_time() = Now();
  RETURN_IF_ERROR(store_.PutModel(model));
  *response.mutable_model() = std::move(model);
  return response;
}

absl::Status Catalog::DeleteModel(const std::string& id, const Principal& caller) {
  ASSIGN_OR_RETURN(const v1::Model model, GetModel(id, caller));
  if (model.tenant().empty() && !caller.admin()) {
    return absl::PermissionDeniedError("model " + id + " is shared (imported by an admin): only admins delete it");
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const std::vector<v1::Job> active,
                   store_.JobsInStates({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_CANCELLING}));
  for (const v1::Job& job : active) {
    if (job.spec().model().base() == id) {
      return absl::FailedPreconditionError(absl::StrCat("model ", id, " is fine-tuned by job ", job.id(), " (",
                                                        StateName(job.state()), ")"));
    }
  }
  RETURN_IF_ERROR(store_.DeleteModel(id));
  std::error_code ec;
  fs::remove(ModelFilePath(id), ec);
  return absl::OkStatus();
}

absl::StatusOr<v1::Model> Catalog::GetModel(const std::string& id, const Principal& caller) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  absl::StatusOr<v1::Model> model = store_.GetModel(id);
  if (model.ok() && !caller.Sees(model->tenant(), /*shared_if_unowned=*/true)) {
    return absl::NotFoundError("model " + id + " not found");
  }
  return model;
}

absl::StatusOr<v1::ListModelsResponse> Catalog::ListModels(const v1::ListModelsRequest& request,
                                                              const Principal& caller) {
  ASSIGN_OR_RETURN(const int page_size, PageSize(request.page_size()));
  ASSIGN_OR_RETURN(Page<v1::Model> page,
                   VisiblePage<v1::Model>(
                       page_size, request.page_token(),
                       [&](int size, const std::string& token) { return store_.ListModels(size, token, Scope(caller)); },
                       [&](const v1::Model& m) { return caller.Sees(m.tenant(), /*shared_if_unowned=*/true); }));
  v1::ListModelsResponse response;
  for (v1::Model& m : page.items) *response.add_models() = std::move(m);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<std::string> Catalog::ModelPath(const std::string& id, const Principal& caller) {
  absl::StatusOr<v1::Model> model = GetModel(id, caller);
  if (!model.ok()) return absl::NotFoundError("model: no model '" + id + "'");
  return ModelFilePath(model->id());
}

std::string Catalog::ModelFilePath(const std::string& id) const {
  return (fs::path(options_.data_dir) / "models" / (id + ".safetensors")).string();
}

absl::Status Catalog::Generate(const v1::GenerateRequest& request, const Principal& caller,
                               const std::function<bool(const std::string&)>& emit,
                               const std::function<bool()>& cancelled) {
  if (request.max_tokens() < 0 || request.max_tokens() > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: must be in [1, 4096] (0 means 64), got ", request.max_tokens()));
  }
  if (!(request.temperature() >= 0) || request.temperature() > 100) {
    return absl::InvalidArgumentError("temperature: must be in [0, 100]");
  }
  if (request.top_k() < 0) return absl::InvalidArgumentError("top_k: must be >= 0");
  ASSIGN_OR_RETURN(const std::string path, ModelPath(request.model(), caller));
  if (request.prompt().empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  // The sampling process runs on a device of the server's first kind, inside a reservation
  // that the scheduler counts like a job (docs/service.md, "Generation").
  std::error_code ec;
  const int64_t model_bytes = static_cast<int64_t>(fs::file_size(path, ec));
  // The default: the file's tensors and the model built from them are both in memory while it
  // loads (2 × the file, plus the NaN check's slices, about 7 MB; the file's tensors are freed
  // before sampling starts, which then has their room besides), and 16 MiB for that check, the
  // recurrent state or key/value cache, the logits and the allocator. Smallest caps that work,
  // measured: 67.3 MB for a 30.6 MB GPT-2-vocabulary model, 7.7 MB for the 3.6 MB byte demo model
  // (docs/service.md, "Generation").
  const int64_t quota = options_.generate_quota_bytes > 0 ? options_.generate_quota_bytes
                                                          : 2 * model_bytes + (int64_t{16} << 20);
  ASSIGN_OR_RETURN(const std::unique_ptr<DeviceHold> hold, devices_.Reserve(options_.generate_device_kind, quota, "generate"));
  GenerateParams params;
  params.device = WorkerDevice(hold->device());
  params.memory_cap = quota;
  params.max_tokens = request.max_tokens() == 0 ? 64 : request.max_tokens();
  params.temperature = request.temperature();
  params.top_k = request.top_k();
  params.seed = static_cast<uint64_t>(request.seed());
  params.cancelled = cancelled;
  // The worker turns tokens into bytes (through the model's tokenizer, or one byte each); the
  // text sent is valid UTF-8 (GenerateResponse.text is a protobuf string): a character is sent
  // once its bytes are all drawn, and a byte sequence that is not UTF-8 — routine for a model
  // that is not trained yet — becomes U+FFFD.
  Utf8Assembler text;
  const absl::Status status = engine_.Generate(path, request.prompt(), params, [&](const std::string& bytes) {
    std::string piece;
    for (unsigned char c : bytes) piece += text.Push(c);
    return piece.empty() || emit(piece);
  });
  if (status.code() == absl::StatusCode::kCancelled) return absl::CancelledError("the client went away");
  if (const std::string rest = text.Finish(); status.ok() && !rest.empty() && !emit(rest)) {
    return absl::CancelledError("the client went away");
  }
  return status;
}

absl::Status Catalog::CheckDatasetLimit(const Principal& caller, int64_t size_bytes) {
  if (caller.admin() || options_.tenant_max_dataset_bytes == 0) return absl::OkStatus();
  int64_t stored = 0;
  std::string token;
  do {
    ASSIGN_OR_RETURN(Page<v1::Dataset> page, store_.ListDatasets(1000, token, ListScope::Of(caller.tenant)));
    for (const v1::Dataset& d : page.items) {
      if (d.tenant() == caller.tenant) stored += d.size_bytes();
    }
    token = page.next_page_token;
  } while (!token.empty());
  if (stored + size_bytes > options_.tenant_max_dataset_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant ", caller.tenant, " stores ", FormatBytes(stored), " of datasets; this upload's ", FormatBytes(size_bytes),
        " would pass the limit of ", FormatBytes(options_.tenant_max_dataset_bytes),
        " (slimd --tenant-max-dataset-storage)"));
  }
  return absl::OkStatus();
}

}  // namespace slim::server
