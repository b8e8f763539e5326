// Writes the model-file seeds of the fuzz corpus (tests/fuzz/corpus/model_file) into a folder:
//   cmake --build build --target make_model_seeds
//   build/tests/fuzz/make_model_seeds tests/fuzz/corpus/model_file
// Models and adapters of FuzzModelConfig, each also without its checksum: mutations of a
// checksummed file stop at "corrupted", so the unchecked copies are what lets the fuzzer reach
// the config and tensor checks behind it.
#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "engine/model_file.h"
#include "tests/fuzz/fuzz_model_config.h"

namespace {

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The same file with the metadata key "checksum" renamed to "checksux" (same length, so the
// header size and data offsets stay right): a file without a checksum, which loaders accept.
void WriteUnchecked(const std::string& from, const std::string& to) {
  std::string bytes = Read(from);
  const size_t at = bytes.find("\"checksum\":");
  if (at == std::string::npos) throw std::runtime_error(from + ": no checksum entry");
  bytes[at + 8] = 'x';
  std::ofstream(to, std::ios::binary) << bytes;
}

void Model(const std::string& dir, const std::string& name, const slim::ModelConfig& config,
           at::ScalarType dtype) {
  slim::PerformerLM model(config, /*init_seed=*/1);
  model->to(dtype);
  const std::string path = dir + "/valid-" + name + ".safetensors";
  slim::SaveModelFile(*model, path);
  WriteUnchecked(path, dir + "/valid-" + name + "-unchecked.safetensors");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const slim::ModelConfig config = slim::fuzz::FuzzModelConfig();
  Model(dir, "model", config, at::kFloat);
  Model(dir, "model-bf16", config, at::kBFloat16);
  slim::ModelConfig tied = config;
  tied.tie_embeddings = true;
  tied.feature_map = slim::FeatureMap::kRelu;
  Model(dir, "model-tied-relu", tied, at::kFloat);

  slim::PerformerLM adapted(config, /*init_seed=*/0);
  adapted->EnableLora(/*rank=*/1, /*alpha=*/2.0, {"wq", "w2"});
  const std::string adapter = dir + "/valid-adapter.safetensors";
  slim::SaveLoraAdapter(*adapted, adapter);
  WriteUnchecked(adapter, dir + "/valid-adapter-unchecked.safetensors");
  return 0;
}
