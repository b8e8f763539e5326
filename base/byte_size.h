// Sizes with units, as people write them in flags and job specs. Plain C++.
#pragma once

#include <cstdint>
#include <string>

namespace slim {

// "4096", "512MiB", "2GiB", "1.5GB", "100KB" → bytes (binary for KiB/MiB/GiB/TiB, decimal for
// KB/MB/GB/TB). Throws EngineError(kInvalidArgument) naming `field` otherwise.
int64_t ParseBytes(const std::string& text, const std::string& field);
// 1536 → "1.5 KiB".
std::string FormatBytes(int64_t bytes);

}  // namespace slim
