#include "client/dataset_upload.h"

#include <algorithm>

#include "base/sha256.h"

namespace slim::client {
namespace {

constexpr size_t kUploadChunk = 256 * 1024;  // well under the 8 MiB message limit

}  // namespace

grpc::Status FindOrUploadDataset(v1::Slim::StubInterface& stub, const ContextFactory& context,
                                 const DatasetUpload& upload,
                                 const std::function<void(size_t sent, size_t total)>& on_progress,
                                 v1::Dataset* out) {
  server::Sha256 sha;
  sha.Update(upload.data.data(), upload.data.size());
  const std::string digest = sha.HexDigest();
  const auto size = static_cast<int64_t>(upload.data.size());

  std::string token;
  do {
    v1::ListDatasetsRequest request;
    request.set_page_size(1000);
    request.set_page_token(token);
    v1::ListDatasetsResponse response;
    const grpc::Status listed = stub.ListDatasets(context(false).get(), request, &response);
    if (!listed.ok()) return listed;
    for (const v1::Dataset& d : response.datasets()) {
      if (d.sha256() == digest && d.format() == upload.format && d.size_bytes() == size) {
        *out = d;
        return grpc::Status::OK;
      }
    }
    token = response.next_page_token();
  } while (!token.empty());

  const std::unique_ptr<grpc::ClientContext> stream_context = context(true);
  v1::UploadDatasetResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<v1::UploadDatasetRequest>> writer =
      stub.UploadDataset(stream_context.get(), &response);
  v1::UploadDatasetRequest header;
  header.mutable_header()->set_name(upload.name);
  header.mutable_header()->set_format(upload.format);
  header.mutable_header()->set_size_bytes(size);
  header.mutable_header()->set_sha256(digest);
  bool open = writer->Write(header);
  for (size_t sent = 0; open && sent < upload.data.size(); sent += kUploadChunk) {
    v1::UploadDatasetRequest chunk;
    chunk.set_chunk(upload.data.substr(sent, kUploadChunk));
    open = writer->Write(chunk);
    if (on_progress) on_progress(std::min(upload.data.size(), sent + kUploadChunk), upload.data.size());
  }
  writer->WritesDone();
  const grpc::Status finished = writer->Finish();
  if (finished.ok()) *out = response.dataset();
  return finished;
}

}  // namespace slim::client
