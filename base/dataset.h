// Training data: reading token ids from files, packing them into sequences, and splitting the
// sequences into train and validation sets. Plain C++ (no LibTorch): every check happens here,
// before any training starts, with errors that name the file and the line or byte offset.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace slim {

enum class DataFormat {
  kText,    // bytes of a (UTF-8) text file are the ids; needs vocab_size ≥ 256
  kJsonl,   // one JSON object per line; its `text_field` string, as bytes; documents joined by '\n'
  kIdsU16,  // pre-tokenised little-endian uint16 ids
  kIdsU32,  // pre-tokenised little-endian uint32 ids
};

std::string DataFormatName(DataFormat f);
// "text", "jsonl", "ids-u16", "ids-u32"; throws EngineError(kInvalidArgument) naming `field`.
DataFormat ParseDataFormat(const std::string& name, const std::string& field = "format");

struct DataSource {
  std::string path;
  DataFormat format = DataFormat::kText;
  std::string text_field = "text";  // jsonl
  int64_t vocab_size = 256;
};

// Reads and validates every token of `source`. Throws EngineError(kInvalidArgument) with
// "<path>: ..." (and ":<line>:" for JSONL, "at byte offset N" for id files): unreadable or empty
// file, invalid JSON, a line that is not an object or lacks a string text field, a file size
// that is not a whole number of ids, an id ≥ vocab_size, a text format with vocab_size < 256.
std::vector<int32_t> ReadTokens(const DataSource& source);

// A JSONL file as uploaded, before a job chooses its text field: every non-blank line must be a
// JSON object, and there must be one. Throws like ReadTokens.
void CheckJsonlObjects(const std::string& path);

// A JSONL file as a job with `text_field` reads it: every line an object with that string
// field. Errors name `label` instead of the path ("<label>:<line>: no "body" field"), so a
// server can report its own files by what its clients call them. Throws like ReadTokens.
void CheckJsonlTextField(const std::string& path, const std::string& text_field, const std::string& label);

// Sequence i of length L is tokens[i·L .. i·L + L] (L inputs, and the same positions shifted by
// one as targets): (n − 1) / L sequences. Throws if there is not even one.
int64_t CountSequences(int64_t num_tokens, int64_t seq_len, const std::string& what);

// A permutation of 0..n−1 determined by `seed` alone (the same on every platform).
std::vector<int64_t> ShuffledOrder(int64_t n, uint64_t seed);

struct DataSplit {
  std::vector<int64_t> train, validation;  // sequence indices
};

// Shuffles sequence indices with `seed` (the same on every platform) and puts the last
// round(validation_fraction · n) of them in `validation` (at least one when the fraction is
// > 0 and n ≥ 2; never all of them, so a single sequence is always a training sequence).
DataSplit SplitSequences(int64_t num_sequences, double validation_fraction, uint64_t seed);

}  // namespace slim
