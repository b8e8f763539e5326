// Helpers shared by the fuzz targets (tests/fuzz/README.md). Plain C++: the same targets link
// with libFuzzer (scripts/fuzz.sh, clang) and with replay_main.cc (the ordinary build).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace slim::fuzz {

// The fuzz input as a file that the engine's readers open by path: an anonymous memory file
// (memfd) named /proc/self/fd/N, so no disk is touched and nothing is left behind. Closed by
// the destructor. Aborts if the file cannot be made (an environment problem, not a finding).
class MemoryFile {
 public:
  MemoryFile(const uint8_t* data, size_t size);
  ~MemoryFile();
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Reports a broken invariant as a crash (abort), which libFuzzer and the replay driver both
// record as a finding, with `what` on stderr.
void Check(bool condition, const char* what);

// A target calls this when the reader under test accepted the input. The replay driver checks
// that corpus files named valid-* are accepted, so the committed seeds keep reaching the code
// behind the first error (a seed that no longer parses would silently fuzz only the error path).
void MarkAccepted();
// Whether MarkAccepted() was called since the last TakeAccepted(); resets the mark.
bool TakeAccepted();

}  // namespace slim::fuzz
