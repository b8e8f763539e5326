// Text datasets read through a tokenizer: the bytes a `text` or `jsonl` source stands for
// (base/dataset.h: the file's bytes, or the JSONL documents joined by '\n') encoded with a
// model's tokenizer. Tokenizing a large corpus takes long, so results are cached on disk per
// (dataset digest, tokenizer digest): a job that trains on the same data with the same
// tokenizer again — another job, a resumed one, every rank of a data-parallel group — reads
// the ids instead. Plain C++ (no LibTorch).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/dataset.h"
#include "base/tokenizer.h"

namespace slim {

// The ids of `source` (format text or jsonl) under `tokenizer`, whose file is `file`. Every id
// is checked against source.vocab_size (the model's): a tokenizer whose ids the model has no
// embedding for is refused, naming the first such id and the text it encodes. Throws
// EngineError(kInvalidArgument) as ReadTokens does for unreadable or malformed sources, and
// when the text has fewer ids than nothing (an empty encoding).
//
// With a non-empty `cache_dir` (created if missing) the ids are stored in
// cache_dir/<key>.ids, key = SHA-256 of (SHA-256 of the source file, format, text field,
// SHA-256 of the tokenizer file), written atomically (temporary file, rename); a later call
// with the same key reads them back. An unreadable or damaged entry (wrong header, size or an
// id out of range) is recomputed and rewritten, never trusted. Failing to write the cache is not
// an error (the ids are returned; the next call tokenizes again).
std::vector<int32_t> ReadTextTokens(const DataSource& source, const Tokenizer& tokenizer, const TokenizerFile& file,
                                    const std::string& cache_dir);

}  // namespace slim
