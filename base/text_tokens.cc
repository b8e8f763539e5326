#include "base/text_tokens.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "base/errors.h"
#include "base/sha256.h"

namespace slim {
namespace {

// Cache entries: this magic, a little-endian uint64 count, then count little-endian uint32 ids.
constexpr char kMagic[8] = {'s', 'l', 'i', 'm', 'i', 'd', 's', '1'};

std::string HexOf(const std::string& bytes) {
  server::Sha256 sha;
  sha.Update(bytes.data(), bytes.size());
  return sha.HexDigest();
}

bool ReadEntry(const std::string& path, int64_t vocab_size, std::vector<int32_t>* ids) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 16 || std::memcmp(bytes.data(), kMagic, 8) != 0) return false;
  uint64_t count = 0;
  for (int i = 7; i >= 0; --i) count = count << 8 | static_cast<unsigned char>(bytes[8 + i]);
  if (count == 0 || count > (bytes.size() - 16) / 4 || bytes.size() != 16 + 4 * count) return false;
  ids->resize(count);
  for (uint64_t k = 0; k < count; ++k) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + 16 + 4 * k);
    const uint32_t id = p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24;
    if (id >= static_cast<uint64_t>(vocab_size)) return false;
    (*ids)[k] = static_cast<int32_t>(id);
  }
  return true;
}

void WriteEntry(const std::string& dir, const std::string& path, const std::vector<int32_t>& ids) {
  std::error_code ignored;
  std::filesystem::create_directories(dir, ignored);  // a failure shows when the file cannot be written
  std::string bytes(kMagic, 8);
  const uint64_t count = ids.size();
  for (int i = 0; i < 8; ++i) bytes += static_cast<char>(count >> (8 * i));
  for (int32_t id : ids) {
    for (int i = 0; i < 4; ++i) bytes += static_cast<char>(static_cast<uint32_t>(id) >> (8 * i));
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) std::remove(tmp.c_str());
}

// The file's SHA-256, read in blocks (datasets can be large).
std::string FileDigest(const std::string& path) {
  std::string hex;
  if (!server::Sha256OfFile(path, &hex)) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot open");
  return hex;
}

}  // namespace

std::vector<int32_t> ReadTextTokens(const DataSource& source, const Tokenizer& tokenizer, const TokenizerFile& file,
                                    const std::string& cache_dir) {
  CheckArgument(source.format == DataFormat::kText || source.format == DataFormat::kJsonl,
                source.path + ": only text and jsonl sources are tokenized (ids-* are ids already)");
  std::string entry;
  if (!cache_dir.empty()) {
    const std::string key = HexOf(FileDigest(source.path) + "\n" + DataFormatName(source.format) + "\n" +
                                  (source.format == DataFormat::kJsonl ? source.text_field : "") + "\n" +
                                  TokenizerKindName(file.kind) + "\n" + HexOf(file.bytes));
    entry = cache_dir + "/" + key + ".ids";
    std::vector<int32_t> cached;
    if (ReadEntry(entry, source.vocab_size, &cached)) return cached;
  }
  // The bytes the source stands for, as the byte vocabulary reads them (all checks included).
  DataSource bytes_source = source;
  bytes_source.vocab_size = 256;
  const std::vector<int32_t> bytes = ReadTokens(bytes_source);
  const std::string text(bytes.begin(), bytes.end());
  std::vector<int32_t> ids = tokenizer.Encode(text);
  CheckArgument(!ids.empty(), source.path + ": the tokenizer encodes the text as no tokens");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= source.vocab_size) {
      throw EngineError(ErrorCode::kInvalidArgument,
                        source.path + ": the tokenizer gives id " + std::to_string(ids[i]) + " (token " +
                            std::to_string(i) + ", '" + tokenizer.Decode({ids[i]}) + "'), but the model's vocab_size is " +
                            std::to_string(source.vocab_size));
    }
  }
  if (!entry.empty()) WriteEntry(cache_dir, entry, ids);
  return ids;
}

}  // namespace slim
