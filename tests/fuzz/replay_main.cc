// Replays inputs through a fuzz target's LLVMFuzzerTestOneInput without libFuzzer, so that the
// ordinary (g++) build runs the committed corpus as tests (FuzzReplay.<target>):
//   job_spec_fuzz tests/fuzz/corpus/job_spec [more files or directories...]
// Directories are read one level deep, in name order. Fails when an input crashes (the process
// dies), when a file named valid-* is not accepted by the target (fuzz_support.h), or when no
// input was found at all.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg = argv[i];
    if (fs::is_directory(arg)) {
      for (const fs::directory_entry& e : fs::directory_iterator(arg)) {
        if (e.is_regular_file()) inputs.push_back(e.path());
      }
    } else {
      inputs.push_back(arg);
    }
  }
  std::sort(inputs.begin(), inputs.end());
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs (usage: %s FILE_OR_DIR...)\n", argv[0]);
    return 2;
  }
  int failures = 0, valid = 0;
  for (const fs::path& path : inputs) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
      return 2;
    }
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
    slim::fuzz::TakeAccepted();
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    const bool accepted = slim::fuzz::TakeAccepted();
    if (path.filename().string().rfind("valid-", 0) == 0) {
      ++valid;
      if (!accepted) {
        std::fprintf(stderr, "replay: %s is named valid-* but was refused\n", path.c_str());
        ++failures;
      }
    }
  }
  std::printf("replay: %zu inputs (%d named valid-*), %d failures\n", inputs.size(), valid, failures);
  return failures == 0 ? 0 : 1;
}
