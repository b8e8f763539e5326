// SentencePiece models through Debian's libsentencepiece — the library that wrote Llama 2's and
// Mistral's tokenizer.model encodes them, so there is nothing to re-implement — reached through
// the slim_sentencepiece module (base/sentencepiece_module.h says why a module).
#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <mutex>

#include "base/errors.h"
#include "base/sentencepiece_module.h"
#include "base/tokenizer_impl.h"

namespace slim::tokenizer_impl {
namespace {

[[noreturn]] void Fail(const std::string& message) { throw EngineError(ErrorCode::kInvalidArgument, message); }

std::string ExecutableDir() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// The module, opened once per process: $SLIM_SENTENCEPIECE_MODULE, else next to the executable,
// else in ../lib/slim/ beside it (installed binaries), else where the build put it.
const SlimSentencePieceApi* Api() {
  static const SlimSentencePieceApi* api = nullptr;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("SLIM_SENTENCEPIECE_MODULE"); env != nullptr && *env != '\0') {
      candidates.push_back(env);
    } else {
      const std::string dir = ExecutableDir();
      candidates = {dir + "/slim_sentencepiece.so", dir + "/../lib/slim/slim_sentencepiece.so"};
#ifdef SLIM_SENTENCEPIECE_BUILD_PATH
      candidates.push_back(SLIM_SENTENCEPIECE_BUILD_PATH);
#endif
    }
    for (const std::string& path : candidates) {
      if (::access(path.c_str(), R_OK) != 0) continue;
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (handle == nullptr) {
        error = path + ": " + ::dlerror();
        return;
      }
      auto entry = reinterpret_cast<const SlimSentencePieceApi* (*)()>(::dlsym(handle, "SlimSentencePiece"));
      if (entry == nullptr || entry()->version != kSlimSentencePieceApiVersion) {
        error = path + ": not a slim_sentencepiece module of this version";
        return;
      }
      api = entry();  // the handle stays open for the life of the process
      return;
    }
    error = "slim_sentencepiece.so not found (looked in";
    for (const std::string& path : candidates) error += " " + path;
    error += "; $SLIM_SENTENCEPIECE_MODULE names another place)";
  });
  if (api == nullptr) Fail("sentencepiece: " + error);
  return api;
}

// A message from the module, freed.
std::string Take(const SlimSentencePieceApi* api, char* message) {
  std::string out = message != nullptr ? message : "unknown error";
  api->release(message);
  return out;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const SlimSentencePieceApi* api, void* processor) : api_(api), processor_(processor) {}
  ~SentencePieceTokenizer() override { api_->destroy(processor_); }

  std::vector<int32_t> Encode(std::string_view text) const override {
    int32_t* ids = nullptr;
    size_t count = 0;
    char* error = nullptr;
    if (api_->encode(processor_, text.data(), text.size(), &ids, &count, &error) != 0) {
      Fail("sentencepiece: " + Take(api_, error));
    }
    std::vector<int32_t> out(ids, ids + count);
    api_->release(ids);
    return out;
  }

  std::string Decode(const std::vector<int32_t>& ids) const override {
    const int32_t n = vocab_size();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= n) {
        Fail("tokenizer: id " + std::to_string(ids[i]) + " at position " + std::to_string(i) + " is outside [0, " +
             std::to_string(n) + ")");
      }
    }
    char* text = nullptr;
    size_t size = 0;
    char* error = nullptr;
    if (api_->decode(processor_, ids.data(), ids.size(), &text, &size, &error) != 0) {
      Fail("sentencepiece: " + Take(api_, error));
    }
    std::string out(text, size);
    api_->release(text);
    return out;
  }

  int64_t vocab_size() const override { return api_->piece_size(processor_); }
  int32_t bos_id() const override { return api_->bos_id(processor_); }
  int32_t eos_id() const override { return api_->eos_id(processor_); }

 private:
  const SlimSentencePieceApi* api_;
  void* processor_;
};

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePiece(const std::string& proto, const std::string& what) {
  const SlimSentencePieceApi* api = Api();
  char* error = nullptr;
  void* processor = api->load(proto.data(), proto.size(), &error);
  if (processor == nullptr) Fail(what + ": not a SentencePiece model (" + Take(api, error) + ")");
  auto tokenizer = std::make_unique<SentencePieceTokenizer>(api, processor);
  if (tokenizer->vocab_size() <= 0) Fail(what + ": SentencePiece model has no pieces");
  return tokenizer;
}

}  // namespace slim::tokenizer_impl
