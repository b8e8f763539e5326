// The boundary between slim_tokenizer and the slim_sentencepiece module (a shared object that
// links Debian's libsentencepiece). Internal to base/.
//
// Why a module: Debian's libsentencepiece carries its own copy of protobuf-lite 3.14 and exports
// all of it (google::protobuf::*). In a process that also has the system libprotobuf 3.21 —
// every program linking LibTorch — one copy's symbols replace the other's: libsentencepiece first
// and LibTorch's start-up (ONNX's descriptors) crashes inside protobuf; libprotobuf first and
// libsentencepiece aborts on a protobuf version check. So the module is opened with dlopen
// (RTLD_LOCAL | RTLD_DEEPBIND): libsentencepiece binds to its own protobuf, and nothing of it
// enters the global symbol scope. Only plain C types cross the boundary, so no exception,
// allocation or type identity has to match across it.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// Results are written into buffers the module allocates with malloc; the caller frees them
// with `release`. Functions return 0 on success, else write a NUL-terminated message to *error.
struct SlimSentencePieceApi {
  int version;  // kSlimSentencePieceApiVersion
  void* (*load)(const char* model, size_t size, char** error);
  void (*destroy)(void* processor);
  int (*encode)(void* processor, const char* text, size_t size, int32_t** ids, size_t* count, char** error);
  int (*decode)(void* processor, const int32_t* ids, size_t count, char** text, size_t* size, char** error);
  int32_t (*piece_size)(void* processor);
  int32_t (*bos_id)(void* processor);
  int32_t (*eos_id)(void* processor);
  void (*release)(void* buffer);
};

// The one symbol the module exports.
const SlimSentencePieceApi* SlimSentencePiece();
}

constexpr int kSlimSentencePieceApiVersion = 1;
