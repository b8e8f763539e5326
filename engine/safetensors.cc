#include "engine/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "base/errors.h"
#include "base/json.h"

namespace slim {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100 << 20;  // the safetensors limit
constexpr size_t kMaxDims = 32;  // far more than any model tensor; bounds a hostile shape list
constexpr char kChecksumKey[] = "checksum";
constexpr char kZeroChecksum[] = "00000000";

uint32_t Crc32c(const char* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ static_cast<unsigned char>(data[i])) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::string Hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

std::string Quote(const std::string& s) { return "\"" + JsonEscape(s) + "\""; }

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kLong: return "I64";
    case at::kByte: return "U8";
    default: return nullptr;
  }
}

bool DtypeFromName(const std::string& name, at::ScalarType* t) {
  for (at::ScalarType s : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong, at::kByte}) {
    if (name == DtypeName(s)) {
      *t = s;
      return true;
    }
  }
  return false;
}

// The header with `checksum_value` in the checksum slot, padded to a multiple of 8 bytes.
std::string Header(const SafetensorsMetadata& metadata, const std::string& tensor_entries,
                   const std::string& checksum_value) {
  std::string h = "{\"__metadata__\":{";
  for (const auto& [k, v] : metadata) h += Quote(k) + ":" + Quote(v) + ",";
  h += Quote(kChecksumKey) + ":" + Quote(checksum_value) + "}" + tensor_entries + "}";
  while (h.size() % 8 != 0) h += ' ';
  return h;
}

std::string SizePrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// Writes the pieces, in order, to `path` through a temporary file in the same directory:
// fsync, rename, fsync of the directory, so that `path` holds the old bytes or all the new ones
// even across a crash. Throws EngineError(kInternal) and leaves no temporary file on failure.
void WritePiecesAtomically(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw EngineError(ErrorCode::kInternal, path + ": cannot create " + tmp + ": " + std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      c += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  };
  bool ok = true;
  for (const auto& [p, n] : pieces) ok = ok && write_all(p, n);
  ok = ok && ::fsync(fd) == 0;
  const int saved_errno = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(ok ? errno : saved_errno);
    std::remove(tmp.c_str());
    throw EngineError(ErrorCode::kInternal, path + ": write failed: " + reason);
  }
  // The rename itself must reach the disk too, or a crash could bring back the old file.
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace

void WriteSafetensors(const std::string& path, const SafetensorsMetadata& metadata,
                      const NamedTensorMap& tensors) {
  CheckArgument(metadata.count(kChecksumKey) == 0, "safetensors: metadata key 'checksum' is reserved");
  std::ostringstream entries;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const char* dtype = DtypeName(c.scalar_type());
    if (dtype == nullptr) throw EngineError(ErrorCode::kInternal, "safetensors: unsupported dtype for " + name);
    const uint64_t bytes = c.numel() * c.element_size();
    entries << "," << Quote(name) << ":{\"dtype\":\"" << dtype << "\",\"shape\":[";
    for (int64_t i = 0; i < c.dim(); ++i) entries << (i ? "," : "") << c.size(i);
    entries << "],\"data_offsets\":[" << offset << "," << offset + bytes << "]}";
    offset += bytes;
    data.push_back(c);
  }
  // The checksum covers the whole file with its own value zeroed.
  const std::string zeroed = Header(metadata, entries.str(), kZeroChecksum);
  uint32_t crc = Crc32c(SizePrefix(zeroed.size()).data(), 8, 0);
  crc = Crc32c(zeroed.data(), zeroed.size(), crc);
  for (const at::Tensor& t : data) crc = Crc32c(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size(), crc);
  const std::string header = Header(metadata, entries.str(), Hex8(crc));

  std::vector<std::pair<const void*, size_t>> pieces;
  const std::string prefix = SizePrefix(header.size());
  pieces.emplace_back(prefix.data(), 8);
  pieces.emplace_back(header.data(), header.size());
  for (const at::Tensor& t : data) pieces.emplace_back(t.data_ptr(), t.numel() * t.element_size());
  WritePiecesAtomically(path, pieces);
}

void WriteFileAtomically(const std::string& path, const std::string& bytes) {
  WritePiecesAtomically(path, {{bytes.data(), bytes.size()}});
}

SafetensorsMetadata VisitSafetensors(const std::string& path, const std::string& what,
                                     const std::function<void(const std::string& name, at::Tensor tensor)>& visit) {
  auto invalid = [&](const std::string& message) -> EngineError {
    return EngineError(ErrorCode::kInvalidArgument, what + " " + path + ": " + message);
  };
  // Not a FIFO, device or directory: opening a FIFO would wait for a writer forever.
  std::error_code type_error;
  if (!std::filesystem::is_regular_file(path, type_error)) {
    throw invalid(std::filesystem::exists(path, type_error) ? "not a regular file" : "cannot open");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw invalid("cannot open");
  in.seekg(0, std::ios::end);
  const std::streamoff end_offset = in.tellg();
  in.seekg(0);
  if (!in || end_offset < 0) throw invalid("cannot read (not a regular file?)");
  const uint64_t file_size = static_cast<uint64_t>(end_offset);
  if (file_size < 8) throw invalid("truncated: " + std::to_string(file_size) + " bytes, no header size");
  char prefix[8];
  if (!in.read(prefix, 8)) throw invalid("read error");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{static_cast<unsigned char>(prefix[i])} << (8 * i);
  if (n > kMaxHeaderBytes || n > file_size - 8) {
    // The field's value is not echoed: for a file that is not safetensors it is the file's
    // first 8 bytes, which an error message must not reveal.
    throw invalid("not a safetensors file: its header size field points past the end of the file (" +
                  std::to_string(file_size) + " bytes)");
  }
  std::string header(n, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(n))) throw invalid("read error");
  Json root;
  try {
    root = ParseJson(header);
  } catch (const EngineError& e) {
    throw invalid(std::string("header is not valid JSON: ") + e.what());
  }
  if (root.kind != Json::kObject) throw invalid("header is not a JSON object");
  SafetensorsMetadata metadata;
  const uint64_t data_start = 8 + n, data_size = file_size - data_start;
  std::string stored_checksum;
  // Every entry is checked against the file before anything is allocated: the tensors then
  // take at most the data region's size in memory, whatever the header claims.
  struct Extent {
    std::string name;
    at::ScalarType type;
    std::vector<int64_t> dims;
    uint64_t begin, end;
  };
  std::vector<Extent> extents;
  for (const auto& [name, entry] : root.members) {
    if (name == "__metadata__") {
      if (entry.kind != Json::kObject) throw invalid("__metadata__ is not an object");
      for (const auto& [k, v] : entry.members) {
        if (v.kind != Json::kString) throw invalid("metadata '" + k + "' is not a string");
        if (k == kChecksumKey) stored_checksum = v.text;
        else metadata[k] = v.text;
      }
      continue;
    }
    const auto dtype = entry.members.find("dtype");
    const auto shape = entry.members.find("shape");
    const auto offsets = entry.members.find("data_offsets");
    if (entry.kind != Json::kObject || dtype == entry.members.end() || shape == entry.members.end() ||
        offsets == entry.members.end()) {
      throw invalid("tensor '" + name + "' lacks dtype, shape or data_offsets");
    }
    Extent e{name, at::kByte, {}, 0, 0};
    if (dtype->second.kind != Json::kString || !DtypeFromName(dtype->second.text, &e.type)) {
      throw invalid("tensor '" + name + "' has unsupported dtype " + SerializeJson(dtype->second) +
                     " (supported: F32, F64, BF16, F16, I64, U8)");
    }
    // Sizes and offsets are whole numbers ≤ 2^53 (exact in a double); the data size of the
    // shape is computed without overflow and must fit in the file.
    auto whole = [](const Json& v) {
      return v.kind == Json::kNumber && v.number >= 0 && v.number <= 9007199254740992.0 &&
             v.number == std::floor(v.number);
    };
    if (shape->second.kind != Json::kArray) throw invalid("tensor '" + name + "' has a shape that is not a list");
    if (shape->second.items.size() > kMaxDims) {
      throw invalid("tensor '" + name + "' has " + std::to_string(shape->second.items.size()) +
                    " dimensions (at most " + std::to_string(kMaxDims) + ")");
    }
    // The bytes spanned by the non-zero dimensions must fit int64 even when another dimension is
    // 0: LibTorch multiplies the sizes in order and refuses (c10::Error) on an overflow midway.
    uint64_t extent = c10::elementSize(e.type);
    bool overflow = false, empty = false;
    for (const Json& d : shape->second.items) {
      if (!whole(d)) throw invalid("tensor '" + name + "' has a bad shape: " + SerializeJson(shape->second));
      e.dims.push_back(static_cast<int64_t>(d.number));
      if (d.number == 0) empty = true;
      else overflow = __builtin_mul_overflow(extent, static_cast<uint64_t>(d.number), &extent) || overflow;
    }
    if (overflow || extent > static_cast<uint64_t>(INT64_MAX)) {
      throw invalid("tensor '" + name + "' has a shape too large for any file: " + SerializeJson(shape->second));
    }
    const uint64_t bytes = empty ? 0 : extent;
    if (offsets->second.kind != Json::kArray || offsets->second.items.size() != 2 ||
        !whole(offsets->second.items[0]) || !whole(offsets->second.items[1])) {
      throw invalid("tensor '" + name + "' has bad data_offsets (expected [begin, end] in bytes)");
    }
    e.begin = static_cast<uint64_t>(offsets->second.items[0].number);
    e.end = static_cast<uint64_t>(offsets->second.items[1].number);
    if (e.end < e.begin || e.end - e.begin != bytes) {
      throw invalid("tensor '" + name + "' has data_offsets that do not match its shape");
    }
    if (e.end > data_size) {
      throw invalid("truncated: tensor '" + name + "' ends at byte " + std::to_string(data_start + e.end) + " of " +
                    std::to_string(file_size));
    }
    extents.push_back(std::move(e));
  }
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i].begin < extents[i - 1].end) {
      throw invalid("tensors '" + extents[i - 1].name + "' and '" + extents[i].name + "' overlap at data offset " +
                    std::to_string(extents[i].begin));
    }
  }

  // One pass over the data region in file order, straight into the tensors (no second copy of
  // the file in memory), with the checksum accumulated on the way.
  std::string zeroed = header;
  if (!stored_checksum.empty()) {
    const std::string slot = Quote(kChecksumKey) + ":" + Quote(stored_checksum);
    const size_t at = zeroed.find(slot);
    if (at == std::string::npos || stored_checksum.size() != 8) throw invalid("malformed checksum entry");
    zeroed.replace(at + slot.size() - 9, 8, kZeroChecksum);
  }
  uint32_t crc = Crc32c(prefix, 8, 0);
  crc = Crc32c(zeroed.data(), zeroed.size(), crc);
  std::vector<char> skipped;
  auto read_into = [&](char* dst, uint64_t bytes) {
    in.read(dst, static_cast<std::streamsize>(bytes));
    if (!in) throw invalid("read error");
    crc = Crc32c(dst, bytes, crc);
  };
  auto skip = [&](uint64_t bytes) {  // gaps and trailing bytes still count for the checksum
    while (bytes > 0) {
      skipped.resize(std::min<uint64_t>(bytes, 1 << 20));
      read_into(skipped.data(), skipped.size());
      bytes -= skipped.size();
    }
  };
  uint64_t position = 0;
  for (const Extent& e : extents) {
    at::Tensor t = at::empty(e.dims, at::TensorOptions().dtype(e.type));
    skip(e.begin - position);
    read_into(static_cast<char*>(t.data_ptr()), e.end - e.begin);
    position = e.end;
    visit(e.name, std::move(t));
  }
  skip(data_size - position);
  if (!stored_checksum.empty() && Hex8(crc) != stored_checksum) {
    throw invalid("corrupted: checksum " + Hex8(crc) + " does not match the stored " + stored_checksum);
  }
  return metadata;
}

SafetensorsContents ReadSafetensors(const std::string& path, const std::string& what) {
  SafetensorsContents out;
  out.metadata = VisitSafetensors(path, what, [&](const std::string& name, at::Tensor t) { out.tensors[name] = std::move(t); });
  return out;
}

}  // namespace slim
