// Test driver for tests/base/tokenizer_reference_test.sh: encodes every string of a JSON array
// with a tokenizer file and decodes the ids again, so a script can compare slim's tokenizers with
// an independent implementation.
//
//   tokenize_tool TOKENIZER CORPUS.json
// prints {"vocab_size": N, "bos_id": B, "eos_id": E, "results": [{"ids": [...], "roundtrip": true,
// "decoded_hex": "..."}, ...]} where roundtrip says whether Decode(Encode(s)) gave back the bytes
// of s, and decoded_hex is what it gave. Exit status 2 with
// the error on stderr when the tokenizer or corpus cannot be read.
#include <fstream>
#include <iostream>
#include <iterator>

#include "base/errors.h"
#include "base/json.h"
#include "base/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: tokenize_tool TOKENIZER CORPUS.json\n";
    return 2;
  }
  try {
    const auto tokenizer = slim::LoadTokenizer(slim::ReadTokenizerFile(argv[1]), argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const slim::Json corpus = slim::ParseJson(text);
    slim::CheckArgument(corpus.kind == slim::Json::kArray, std::string(argv[2]) + ": not a JSON array");
    std::cout << "{\"vocab_size\":" << tokenizer->vocab_size() << ",\"bos_id\":" << tokenizer->bos_id()
              << ",\"eos_id\":" << tokenizer->eos_id() << ",\"results\":[";
    for (size_t i = 0; i < corpus.items.size(); ++i) {
      const slim::Json& s = corpus.items[i];
      slim::CheckArgument(s.kind == slim::Json::kString, std::string(argv[2]) + ": item " + std::to_string(i) + " is not a string");
      const std::vector<int32_t> ids = tokenizer->Encode(s.text);
      std::cout << (i ? "," : "") << "{\"ids\":[";
      for (size_t k = 0; k < ids.size(); ++k) std::cout << (k ? "," : "") << ids[k];
      const std::string decoded = tokenizer->Decode(ids);
      static const char kHex[] = "0123456789abcdef";
      std::string hex;
      for (unsigned char c : decoded) hex += std::string{kHex[c >> 4], kHex[c & 15]};
      std::cout << "],\"roundtrip\":" << (decoded == s.text ? "true" : "false") << ",\"decoded_hex\":\"" << hex << "\"}";
    }
    std::cout << "]}\n";
  } catch (const std::exception& e) {
    std::cerr << "tokenize_tool: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
