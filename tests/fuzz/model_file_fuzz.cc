// Fuzz target: model files and LoRA adapters (safetensors; engine/safetensors.cc,
// engine/model_file.cc) as slimd reads them on import, planning and generation, and as
// slim-train reads them. Expected failures are EngineError; anything else — a c10::Error or
// std::bad_alloc escaping, a crash, a sanitizer report, or an allocation beyond libFuzzer's
// -malloc_limit_mb (a small file that makes the loader allocate a huge model) — is a finding.
#include <cstddef>
#include <cstdint>

#include "base/errors.h"
#include "engine/model_file.h"
#include "tests/fuzz/fuzz_model_config.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace slim;
  // The base for adapters, rebuilt only after an adapter was loaded onto it (a fresh model per
  // input would dominate the run time). Never destroyed: no static destructors.
  static PerformerLM* base = new PerformerLM(fuzz::FuzzModelConfig(), /*init_seed=*/0);
  const fuzz::MemoryFile file(data, size);
  try {
    const PerformerLM model = LoadModelFile(file.path());
    fuzz::Check(!model->lora_enabled(), "a model file was loaded with adapters");
    fuzz::MarkAccepted();
  } catch (const EngineError&) {
  }
  try {
    LoadLoraAdapter(file.path(), **base);
    fuzz::Check((*base)->lora_enabled(), "an adapter was loaded but the base has none");
    fuzz::MarkAccepted();
    *base = PerformerLM(fuzz::FuzzModelConfig(), /*init_seed=*/0);
  } catch (const EngineError&) {
    fuzz::Check(!(*base)->lora_enabled(), "a refused adapter changed the base");
  }
  return 0;
}
