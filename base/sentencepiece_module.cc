// The slim_sentencepiece module (base/sentencepiece_module.h says why it is one): the
// SentencePiece processor behind a plain C interface.
#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "base/sentencepiece_module.h"

namespace {

char* Copy(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, s.data(), s.size());
    out[s.size()] = '\0';
  }
  return out;
}

sentencepiece::SentencePieceProcessor* Processor(void* p) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(p);
}

void* Load(const char* model, size_t size, char** error) {
  auto* sp = new (std::nothrow) sentencepiece::SentencePieceProcessor();
  if (sp == nullptr) {
    *error = Copy("out of memory");
    return nullptr;
  }
  const auto status = sp->LoadFromSerializedProto(absl::string_view(model, size));
  if (!status.ok()) {
    *error = Copy(status.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void Destroy(void* p) { delete Processor(p); }

int Encode(void* p, const char* text, size_t size, int32_t** ids, size_t* count, char** error) {
  std::vector<int> out;
  const auto status = Processor(p)->Encode(absl::string_view(text, size), &out);
  if (!status.ok()) {
    *error = Copy(status.ToString());
    return 1;
  }
  *count = out.size();
  *ids = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * (out.empty() ? 1 : out.size())));
  if (*ids == nullptr) {
    *error = Copy("out of memory");
    return 1;
  }
  for (size_t i = 0; i < out.size(); ++i) (*ids)[i] = out[i];
  return 0;
}

int Decode(void* p, const int32_t* ids, size_t count, char** text, size_t* size, char** error) {
  std::string out;
  const auto status = Processor(p)->Decode(std::vector<int>(ids, ids + count), &out);
  if (!status.ok()) {
    *error = Copy(status.ToString());
    return 1;
  }
  *size = out.size();
  *text = Copy(out);
  if (*text == nullptr) {
    *error = Copy("out of memory");
    return 1;
  }
  return 0;
}

int32_t PieceSize(void* p) { return Processor(p)->GetPieceSize(); }
int32_t BosId(void* p) { return Processor(p)->bos_id(); }
int32_t EosId(void* p) { return Processor(p)->eos_id(); }
void Release(void* buffer) { std::free(buffer); }

const SlimSentencePieceApi kApi = {kSlimSentencePieceApiVersion, Load, Destroy, Encode, Decode,
                                   PieceSize, BosId, EosId, Release};

}  // namespace

extern "C" __attribute__((visibility("default"))) const SlimSentencePieceApi* SlimSentencePiece() { return &kApi; }
