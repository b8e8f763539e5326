// Compares slim's tokenizers (through tests/base/tokenize_tool) with implementations written
// elsewhere, on one corpus:
//   GPT-2 (byte-level BPE, "a b" merges): gpt-tokenizer's r50k_base encoder (tiktoken's
//     algorithm) and @huggingface/tokenizers (the JS port of Hugging Face tokenizers) on a
//     tokenizer.json built from gpt-tokenizer's r50k_base.tiktoken ranks
//     (scripts/gpt2-tokenizer-json.mjs).
//   Llama 3 (byte-level BPE with a Split regex, ignore_merges, ["a","b"] merges, 256 special
//     tokens): llama3-tokenizer-js and @huggingface/tokenizers on a tokenizer.json built from
//     llama3-tokenizer-js's vocabulary and merges.
//   Qwen2's pipeline (NFC normalizer, its Split expression) over GPT-2's vocabulary:
//     @huggingface/tokenizers.
//   Llama 2 (SentencePiece BPE with byte fallback): llama-tokenizer-js against slim's
//     SentencePiece tokenizer (libsentencepiece) on a tokenizer.model built from llama-tokenizer-js's
//     vocabulary, and @huggingface/tokenizers against slim's tokenizer.json reader on the
//     Hugging Face form of the same tokenizer (Prepend/Replace normalizer, byte fallback).
// Usage: node tokenizer_reference.mjs TOKENIZE_TOOL NODE_MODULES WORKDIR. Exits 1 naming every
// string whose ids differ or whose decoding does not give the text back.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { gpt2TokenizerJson } from "../../scripts/gpt2-tokenizer-json.mjs";

const [tool, modules, work] = process.argv.slice(2);
const require = createRequire(path.join(modules, "x.js"));
const load = (p) => import(pathToFileURL(path.join(modules, p)).href);
const { Tokenizer } = await load("@huggingface/tokenizers/dist/tokenizers.mjs");
const gpt2 = await load("gpt-tokenizer/esm/encoding/r50k_base.js");
const { llama3Tokenizer } = require("llama3-tokenizer-js/bundle/commonjs-llama3-tokenizer-with-baked-data.cjs");
const { LlamaTokenizer } = await load("llama-tokenizer-js/llama-tokenizer.js");
const llama2 = new LlamaTokenizer();

// ASCII, accents, CJK, emoji (with ZWJ and skin tones), whitespace runs (newlines, tabs, many
// spaces, trailing), digits, contractions, punctuation runs, and special tokens.
const common = [
  "Hello world",
  "Hello, world! How are you today?",
  " leading space and trailing space ",
  "   three leading spaces",
  "two  spaces   three    four",
  "tabs\there\t\tand\tthere",
  "line one\nline two\n\nline four\r\nwindows line\n",
  "\n\n\n",
  "   \n \t \n",
  "Café, naïve, façade, jalapeño, Ångström, Ærøskøbing, Zürich",
  "Ελληνικά και русский текст",
  "日本語のテキストと中文文本，還有한국어",
  "emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇩🇪 🤖!",
  "numbers 1 12 123 1234 12345 3.14159 1,000,000 2026-12-06",
  "I'm you're he's we've they'll she'd it's DON'T I'M Y'ALL",
  "punctuation!!! ??? ... --- ;;; (brackets) [more] {braces} <angles>",
  "code: for (int i = 0; i < n; ++i) { x += a[i] * 2; }",
  "mixed\u00a0no-break\u2003em space\u3000ideographic",
  "ÀÉÎÕÜ àéîõü ß ẞ",
  "x",
  "a",
  " ",
  "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX.",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!!!!!!",
  "    indented code\n\tdef f(x):\n\t\treturn x**2  # comment\n",
  "https://example.com/path?query=1&x=y#frag user@example.com",
  "Ünïcödé wörds: ﬁancé — “quotes” ‘single’ … € £ ¥ © ™",
  "पाठ हिन्दी में, النص العربي, טקסט בעברית, ข้อความภาษาไทย",
  "A paragraph of prose.\n\nIt has two sentences, and a list:\n - one\n - two (2)\n - three: 3,333\n",
];
const gpt2Specials = [
  "<|endoftext|>",
  "first document<|endoftext|>second document",
  "<|endoftext|><|endoftext|> twice, then text",
  "not special: <|endoftext| and <endoftext|>",
];
const llama3Specials = [
  "<|begin_of_text|>Hello<|end_of_text|>",
  "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>",
  "<|reserved_special_token_5|> reserved <|reserved_special_token_247|>",
];

let failures = 0;
const summary = [];

function slimEncode(tokenizerPath, corpus) {
  const corpusPath = path.join(work, `corpus-${summary.length}.json`);
  fs.writeFileSync(corpusPath, JSON.stringify(corpus));
  return JSON.parse(execFileSync(tool, [tokenizerPath, corpusPath], { encoding: "utf8", maxBuffer: 1 << 26 }));
}

// Checks slim's ids and round trips against each reference; one summary line per pair. Decoding
// must give `decoded(text)` back: the text itself, or its normal form behind a normalizer.
function compare(name, tokenizerPath, corpus, references, decoded = (t) => t) {
  const slim = slimEncode(tokenizerPath, corpus);
  for (const [refName, encode] of Object.entries(references)) {
    let same = 0;
    corpus.forEach((text, i) => {
      const want = Array.from(encode(text));
      const got = slim.results[i].ids;
      if (JSON.stringify(want) === JSON.stringify(got)) {
        same++;
      } else {
        failures++;
        console.log(`FAIL ${name} vs ${refName}: ${JSON.stringify(text)}\n  slim: ${JSON.stringify(got)}\n  ${refName}: ${JSON.stringify(want)}`);
      }
    });
    summary.push(`${name}: ${same}/${corpus.length} strings encode as ${refName} does`);
  }
  const back = (r, i) => Buffer.from(r.decoded_hex, "hex").equals(Buffer.from(decoded(corpus[i]), "utf8"));
  const roundtrips = slim.results.filter(back).length;
  slim.results.forEach((r, i) => {
    if (!back(r, i)) {
      failures++;
      console.log(`FAIL ${name}: decoding does not give back ${JSON.stringify(corpus[i])}`);
    }
  });
  summary.push(`${name}: ${roundtrips}/${corpus.length} strings decode to their bytes`);
  return slim;
}

// ---- GPT-2 -----------------------------------------------------------------------------------
{
  const json = gpt2TokenizerJson(modules);
  const file = path.join(work, "gpt2-tokenizer.json");
  fs.writeFileSync(file, JSON.stringify(json));
  const hf = new Tokenizer(json, {});
  const corpus = [...common, ...gpt2Specials];
  const slim = compare("gpt2", file, corpus, {
    // gpt-tokenizer 4.0.0 finds <|endoftext|> only at the start of a text (with allowedSpecial
    // "all" too: "a<|endoftext|>b" comes out as text), so the text is split at it here, as
    // tiktoken does, and each ordinary piece encoded alone.
    "gpt-tokenizer": (t) => t.split("<|endoftext|>").flatMap((piece, i) => [...(i ? [50256] : []), ...gpt2.encode(piece)]),
    "@huggingface/tokenizers": (t) => hf.encode(t, { add_special_tokens: false }).ids,
  });
  // The same vocabulary in Qwen2's pipeline (its tokenizer.json's NFC normalizer, Split
  // expression — one digit per piece — and ByteLevel without an expression), against
  // @huggingface/tokenizers (JavaScript's String.normalize for NFC): decomposed accents and
  // Hangul jamo compose, the ligature ﬁ and full-width letters stay. Decoding gives the NFC form.
  const qwen2Pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const qwenJson = {
    ...json,
    normalizer: { type: "NFC" },
    pre_tokenizer: { type: "Sequence", pretokenizers: [
      { type: "Split", pattern: { Regex: qwen2Pattern }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
    ] },
  };
  const qwenFile = path.join(work, "qwen2-style-tokenizer.json");
  fs.writeFileSync(qwenFile, JSON.stringify(qwenJson));
  const qwenHf = new Tokenizer(qwenJson, {});
  const qwenCorpus = [...common, ...gpt2Specials, "Cafe\u0301 nai\u0308ve A\u030angstro\u0308m", "\u1100\u1161\u11a8 \ufb01 \uff21\uff22"];
  compare("qwen2-style (GPT-2 vocabulary)", qwenFile, qwenCorpus, {
    "@huggingface/tokenizers": (t) => qwenHf.encode(t, { add_special_tokens: false }).ids,
  }, (t) => t.normalize("NFC"));
  if (slim.vocab_size !== 50257 || slim.eos_id !== 50256) {
    failures++;
    console.log(`FAIL gpt2: vocab_size ${slim.vocab_size} eos ${slim.eos_id}, want 50257 and 50256`);
  }
}

// ---- Llama 3 ---------------------------------------------------------------------------------
{
  const t = llama3Tokenizer;
  const specials = t.vocabById.slice(128000);
  const vocab = {};
  t.vocabById.slice(0, 128000).forEach((token, id) => { vocab[token] = id; });
  // The package's merge priorities are 2·rank + 1.
  const merges = [];
  for (const [pair, prio] of t.merges) merges[(prio - 1) / 2] = pair.split(" ");
  // The pre-tokenizer expression of Meta's published tokenizer.json, as written there.
  const pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  const json = {
    version: "1.0",
    added_tokens: specials.map((content, i) => ({ id: 128000 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: "Sequence", pretokenizers: [
      { type: "Split", pattern: { Regex: pattern }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    ] },
    post_processor: { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [], special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [128000], tokens: ["<|begin_of_text|>"] } } },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: true, vocab, merges },
  };
  const file = path.join(work, "llama3-tokenizer.json");
  fs.writeFileSync(file, JSON.stringify(json));
  const hf = new Tokenizer(json, {});
  const corpus = [...common, ...llama3Specials];
  const slim = compare("llama3", file, corpus, {
    "llama3-tokenizer-js": (s) => t.encode(s, { bos: false, eos: false }),
    "@huggingface/tokenizers": (s) => hf.encode(s, { add_special_tokens: false }).ids,
  });
  if (slim.vocab_size !== 128256 || slim.bos_id !== 128000 || slim.eos_id !== 128001) {
    failures++;
    console.log(`FAIL llama3: vocab_size ${slim.vocab_size} bos ${slim.bos_id} eos ${slim.eos_id}, want 128256, 128000, 128001`);
  }
}

// ---- Llama 2: SentencePiece and its Hugging Face form -----------------------------------------
{
  const pieces = llama2.vocabById;
  // A SentencePiece ModelProto (sentencepiece_model.proto), written with the protobuf wire
  // format: pieces (1) {piece 1, score 2, type 3}, trainer_spec (2) {model_type 3 = BPE,
  // vocab_size 4, byte_fallback 35, unk/bos/eos/pad_id 40..43}, normalizer_spec (3) {name 1,
  // add_dummy_prefix 3, remove_extra_whitespaces 4, escape_whitespaces 5}. Scores: SentencePiece
  // BPE merges the adjacent pair whose concatenation has the highest score; the package ships
  // the merges in the order transformers derived from those scores, so a piece scores minus the
  // rank of its first merge. Pieces no merge makes (single characters) are never merge results:
  // their scores, below all others, do not matter; 0 for <unk>, <s>, </s> and the byte pieces.
  const varint = (n) => { const out = []; n = BigInt.asUintN(64, BigInt(n)); do { let b = Number(n & 0x7fn); n >>= 7n; if (n) b |= 0x80; out.push(b); } while (n); return out; };
  const field = (num, wire, payload) => [...varint((num << 3) | wire), ...payload];
  const bytesField = (num, bytes) => field(num, 2, [...varint(bytes.length), ...bytes]);
  const intField = (num, v) => field(num, 0, varint(v));
  const floatField = (num, f) => { const b = Buffer.alloc(4); b.writeFloatLE(f); return field(num, 5, [...b]); };
  const firstMerge = new Map();
  for (const [pair, prio] of llama2.merges) {
    const merged = pair.replace(" ", "");
    firstMerge.set(merged, Math.min(firstMerge.get(merged) ?? Infinity, (prio - 1) / 2));
  }
  const proto = [];
  pieces.forEach((piece, id) => {
    const type = id === 0 ? 2 : id <= 2 ? 3 : id <= 258 ? 6 : 1;  // UNKNOWN, CONTROL, BYTE, NORMAL
    const score = id <= 258 ? 0 : firstMerge.has(piece) ? -firstMerge.get(piece) : -(1e6 + id);
    proto.push(...bytesField(1, [...bytesField(1, [...Buffer.from(piece, "utf8")]), ...floatField(2, score), ...intField(3, type)]));
  });
  proto.push(...bytesField(2, [...intField(3, 2), ...intField(4, pieces.length), ...intField(35, 1),
    ...intField(40, 0), ...intField(41, 1), ...intField(42, 2), ...intField(43, -1)]));
  proto.push(...bytesField(3, [...bytesField(1, [...Buffer.from("identity")]), ...intField(3, 1), ...intField(4, 0), ...intField(5, 1)]));
  const model = path.join(work, "llama2-tokenizer.model");
  fs.writeFileSync(model, Buffer.from(proto));

  // The Hugging Face form (what transformers' converter writes for Llama 2).
  const vocab = {};
  pieces.forEach((p, id) => { vocab[p] = id; });
  const merges = [];
  for (const [pair, prio] of llama2.merges) merges[(prio - 1) / 2] = pair;
  const json = {
    version: "1.0",
    added_tokens: ["<unk>", "<s>", "</s>"].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: "Sequence", normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" }] },
    pre_tokenizer: null,
    post_processor: { type: "TemplateProcessing", single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [], special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } } },
    decoder: { type: "Sequence", decoders: [
      { type: "Replace", pattern: { String: "▁" }, content: " " }, { type: "ByteFallback" }, { type: "Fuse" },
      { type: "Strip", content: " ", start: 1, stop: 0 }] },
    model: { type: "BPE", dropout: null, unk_token: "<unk>", continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges },
  };
  const file = path.join(work, "llama2-tokenizer.json");
  fs.writeFileSync(file, JSON.stringify(json));
  const hf = new Tokenizer(json, {});
  // Special tokens are not part of SentencePiece's text (control symbols are never matched in
  // text), so the corpus is the common one.
  const sp = compare("llama2-sentencepiece", model, common, {
    "llama-tokenizer-js": (s) => llama2.encode(s, false, true),
  });
  const hfSlim = compare("llama2-tokenizer.json", file, common, {
    "@huggingface/tokenizers": (s) => hf.encode(s, { add_special_tokens: false }).ids,
    "llama-tokenizer-js": (s) => llama2.encode(s, false, true),
  });
  for (const [name, r] of [["llama2-sentencepiece", sp], ["llama2-tokenizer.json", hfSlim]]) {
    if (r.vocab_size !== 32000 || r.bos_id !== 1 || r.eos_id !== 2) {
      failures++;
      console.log(`FAIL ${name}: vocab_size ${r.vocab_size} bos ${r.bos_id} eos ${r.eos_id}, want 32000, 1, 2`);
    }
  }
}

for (const line of summary) console.log(line);
if (failures) {
  console.log(`${failures} failures`);
  process.exit(1);
}
console.log("all encodings match");
