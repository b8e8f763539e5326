#include "tests/fuzz/fuzz_support.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace slim::fuzz {
namespace {
bool accepted = false;  // set by MarkAccepted; targets run one input at a time
}  // namespace

MemoryFile::MemoryFile(const uint8_t* data, size_t size) {
  fd_ = ::memfd_create("slim-fuzz-input", MFD_CLOEXEC);
  Check(fd_ >= 0, "memfd_create failed");
  size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(fd_, data + written, size - written);
    Check(n > 0, "writing the memory file failed");
    written += static_cast<size_t>(n);
  }
  path_ = "/proc/self/fd/" + std::to_string(fd_);
}

MemoryFile::~MemoryFile() { ::close(fd_); }

void Check(bool condition, const char* what) {
  if (condition) return;
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
  std::abort();
}

void MarkAccepted() { accepted = true; }

bool TakeAccepted() {
  const bool was = accepted;
  accepted = false;
  return was;
}

}  // namespace slim::fuzz
