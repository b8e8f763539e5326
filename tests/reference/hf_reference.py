#!/usr/bin/python3
"""Independent reference for Hugging Face causal-LM checkpoints (GPT-2 and the Llama family).

What it is
    A test-only oracle for slim's Hugging Face importer. It can

      make DIR ...            write a tiny random checkpoint in the layout transformers'
                              save_pretrained produces (config.json + safetensors, one file or
                              an index and shards, F32/F16/BF16), and
      logits DIR --tokens ... compute the causal LM's logits for a token sequence, in fp64,
                              straight from the published model definitions.

    Supported model_type values: gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM), mistral
    (MistralForCausalLM) and qwen2 (Qwen2ForCausalLM). Anything else, and any option of those
    models that changes the arithmetic but is not implemented here (rope_scaling, sliding-window
    attention, mlp_bias, GPT-2's layer-index attention scaling, ...), is refused with an error
    that names the config key, rather than silently computed wrongly.

Why it is independent
    It shares no code with the C++ engine and was written from the model definitions in
    transformers (modeling_gpt2.py, modeling_llama.py, modeling_mistral.py, modeling_qwen2.py)
    and the safetensors format description, not from slim's sources. It uses the Python standard
    library only (Debian 12's /usr/bin/python3; no numpy, no torch): tensors are flat lists of
    Python floats (fp64) and every operation is a plain loop, so each step can be read against
    the published formula. The models it is meant for are tiny (width <= 64, <= 3 layers,
    vocab <= 512, <= 32 tokens), so speed does not matter.

Conventions worth knowing when comparing against it
    * GPT-2's Conv1D layers store weights as (in, out) and compute x @ W + b; nn.Linear in the
      Llama family stores (out, in) and computes W x + b. The two are kept as separate functions
      (conv1d, linear) so that the orientation is explicit.
    * Rotary embeddings use the Hugging Face "rotate_half" pairing (x[i], x[i + d/2]), not the
      interleaved (x[2i], x[2i+1]) pairing of the original Meta code.
    * Grouped-query attention: query head j reads key/value head j // (H / Hkv).
    * A tied model's logits use the token embedding; a tied checkpoint that still carries
      lm_head.weight has it ignored (as transformers does after tie_weights()).
    * GPT-2 causal-mask buffers (h.{i}.attn.bias, h.{i}.attn.masked_bias) and old Llama
      rotary_emb.inv_freq buffers are ignored; any other tensor the model does not use is an
      error, as is a missing or misshapen one.
"""

import argparse
import json
import math
import os
import random
import re
import struct
import sys
from collections import namedtuple


class CheckpointError(Exception):
    """A checkpoint this reference cannot read or does not implement."""


# ---------------------------------------------------------------------------------------------
# Safetensors: 8-byte little-endian header length, a JSON header
#   {name: {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}
# then the raw little-endian tensor bytes (offsets are relative to the end of the header).
# ---------------------------------------------------------------------------------------------

# A tensor: its shape and its values as a flat row-major list of Python floats. dtype is the
# safetensors dtype to store it in, or None for the checkpoint's dtype.
Tensor = namedtuple("Tensor", ["shape", "values", "dtype"], defaults=[None])

DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
# --dtype value -> (safetensors dtype, config.json torch_dtype)
DTYPES = {"f32": ("F32", "float32"), "f16": ("F16", "float16"), "bf16": ("BF16", "bfloat16")}


def element_count(shape):
    count = 1
    for dim in shape:
        count *= dim
    return count


def round_to_f32(x):
    """The nearest float32 to x (round to nearest even), as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits_to_bf16(bits):
    """bfloat16 is the top half of a float32; round the dropped half to nearest, ties to even."""
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


def encode(values, dtype):
    """Little-endian bytes of values in a safetensors dtype. Values are first rounded to float32
    (as a float32 torch model holds them), then to the target dtype."""
    n = len(values)
    if dtype == "F32":
        return struct.pack("<%df" % n, *values)
    if dtype == "F16":
        # struct's 'e' is IEEE half precision, rounding to nearest even.
        return struct.pack("<%de" % n, *[round_to_f32(v) for v in values])
    if dtype == "BF16":
        bits = struct.unpack("<%dI" % n, struct.pack("<%df" % n, *values))
        return struct.pack("<%dH" % n, *[f32_bits_to_bf16(b) for b in bits])
    raise CheckpointError("unsupported dtype %r" % dtype)


def decode(raw, dtype):
    """Python floats from little-endian bytes of a safetensors dtype."""
    n = len(raw) // DTYPE_BYTES[dtype]
    if dtype == "F32":
        return list(struct.unpack("<%df" % n, raw))
    if dtype == "F16":
        return list(struct.unpack("<%de" % n, raw))
    if dtype == "BF16":
        halves = struct.unpack("<%dH" % n, raw)
        # A bfloat16 is the float32 whose top 16 bits it is and whose low 16 bits are zero.
        return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[h << 16 for h in halves])))
    raise CheckpointError("unsupported dtype %r" % dtype)


def write_safetensors(path, tensors, default_dtype):
    """Writes {name: Tensor} as one safetensors file; data in name order, header padded with
    spaces to a multiple of 8 bytes as the safetensors library does."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if element_count(tensor.shape) != len(tensor.values):
            raise ValueError("%s: shape %s but %d values" % (name, tensor.shape, len(tensor.values)))
        dtype = tensor.dtype or default_dtype
        blob = encode(tensor.values, dtype)
        header[name] = {"dtype": dtype, "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path):
    """{name: Tensor} from one safetensors file (dtype = the stored dtype, values decoded)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise CheckpointError("%s: too short for a safetensors file" % path)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    data = blob[8 + header_len:]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry["dtype"]
        if dtype not in DTYPE_BYTES:
            raise CheckpointError("%s: tensor %s has dtype %s; only F32, F16 and BF16 are read"
                                  % (path, name, dtype))
        begin, end = entry["data_offsets"]
        shape = entry["shape"]
        if end - begin != element_count(shape) * DTYPE_BYTES[dtype] or end > len(data):
            raise CheckpointError("%s: tensor %s: data_offsets %s do not fit shape %s %s"
                                  % (path, name, entry["data_offsets"], shape, dtype))
        tensors[name] = Tensor(shape, decode(data[begin:end], dtype), dtype)
    return tensors


INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def write_checkpoint(directory, config, tensors, dtype="F32", shards=1):
    """config.json plus the weights: model.safetensors, or for shards > 1 the files
    model-0000i-of-0000N.safetensors (contiguous runs of the tensors in the given order) and
    model.safetensors.index.json."""
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        # Stale files (say, model.safetensors beside a new index) would make the result ambiguous.
        raise CheckpointError("%s is not empty" % directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    names = list(tensors)
    if shards <= 1:
        write_safetensors(os.path.join(directory, SINGLE_FILE), tensors, dtype)
        return
    if shards > len(names):
        raise CheckpointError("%d shards for %d tensors" % (shards, len(names)))
    weight_map = {}
    total_size = 0
    for i in range(shards):
        file_name = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        part = names[i * len(names) // shards:(i + 1) * len(names) // shards]
        write_safetensors(os.path.join(directory, file_name), {n: tensors[n] for n in part}, dtype)
        for name in part:
            weight_map[name] = file_name
            total_size += len(tensors[name].values) * DTYPE_BYTES[tensors[name].dtype or dtype]
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f,
                  indent=2, sort_keys=True)
        f.write("\n")


def read_checkpoint(directory):
    """(config, {name: Tensor}) from a directory with config.json and either model.safetensors
    or model.safetensors.index.json and its shards; like transformers' from_pretrained, the
    single file wins when both are there."""
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(single_path) or not os.path.exists(index_path):
        return config, read_safetensors(single_path)
    with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    tensors = {}
    for file_name in sorted(set(weight_map.values())):
        for name, tensor in read_safetensors(os.path.join(directory, file_name)).items():
            if weight_map.get(name) != file_name:
                raise CheckpointError("%s holds %s but the index maps it to %s"
                                      % (file_name, name, weight_map.get(name)))
            tensors[name] = tensor
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError("index names tensors no shard holds: %s" % ", ".join(missing))
    return config, tensors


# ---------------------------------------------------------------------------------------------
# Vector arithmetic on lists of floats.
# ---------------------------------------------------------------------------------------------

def rows(tensor):
    """A 2-D tensor as a list of its rows."""
    n_rows, n_cols = tensor.shape
    return [tensor.values[r * n_cols:(r + 1) * n_cols] for r in range(n_rows)]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def add(a, b):
    return [x + y for x, y in zip(a, b)]


def linear(x, weight_rows, bias=None):
    """nn.Linear: weight is (out, in); y[o] = sum_i W[o][i] x[i] + b[o]."""
    y = [dot(row, x) for row in weight_rows]
    return add(y, bias) if bias is not None else y


def conv1d(x, weight_rows, bias):
    """GPT-2's Conv1D: weight is (in, out); y = x @ W + b, i.e. y[o] = sum_i x[i] W[i][o] + b[o]."""
    y = list(bias)
    for x_i, row in zip(x, weight_rows):
        for o, w in enumerate(row):
            y[o] += x_i * w
    return y


def layer_norm(x, weight, bias, eps):
    """nn.LayerNorm over the last dimension: (x - mean) / sqrt(biased variance + eps) * w + b."""
    mean = sum(x) / len(x)
    variance = sum((v - mean) ** 2 for v in x) / len(x)
    scale = 1.0 / math.sqrt(variance + eps)
    return [(v - mean) * scale * w + b for v, w, b in zip(x, weight, bias)]


def rms_norm(x, weight, eps):
    """LlamaRMSNorm: x / sqrt(mean(x^2) + eps) * w (no mean subtraction, no bias)."""
    scale = 1.0 / math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v * scale * w for v, w in zip(x, weight)]


def gelu_erf(x):
    """Exact GELU (config "gelu"): 0.5 x (1 + erf(x / sqrt 2))."""
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    """Tanh GELU ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


GPT2_ACTIVATIONS = {"gelu": gelu_erf, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh,
                    "gelu_fast": gelu_tanh}


def silu(x):
    """SiLU: x * sigmoid(x)."""
    return x / (1.0 + math.exp(-x))


def softmax(scores):
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def rope(x, position, theta):
    """Rotary position embedding of one head's vector x (length d, even) at a position, in the
    Hugging Face rotate_half convention: inv_freq[i] = 1 / theta^(2i/d) for i < d/2, and the
    pair (x[i], x[i + d/2]) is rotated by the angle position * inv_freq[i]:
        out[i]       = x[i] cos - x[i + d/2] sin
        out[i + d/2] = x[i + d/2] cos + x[i] sin"""
    d = len(x)
    half = d // 2
    out = [0.0] * d
    for i in range(half):
        angle = position * (1.0 / theta ** (2.0 * i / d))
        c, s = math.cos(angle), math.sin(angle)
        out[i] = x[i] * c - x[i + half] * s
        out[i + half] = x[i + half] * c + x[i] * s
    return out


def split_heads(x, n_heads, head_dim):
    return [x[h * head_dim:(h + 1) * head_dim] for h in range(n_heads)]


def causal_attention(q, k, v, n_heads, n_kv_heads, head_dim):
    """Causal multi-head (grouped-query) softmax attention over a sequence.

    q: per position, a list of n_heads query vectors; k, v: per position, n_kv_heads vectors.
    Query head j reads key/value head j // (n_heads / n_kv_heads); position t attends to
    positions 0..t with weights softmax(q.k / sqrt(head_dim)). Returns, per position, the heads'
    outputs concatenated (head 0 first)."""
    group = n_heads // n_kv_heads
    scale = 1.0 / math.sqrt(head_dim)
    merged = []
    for t in range(len(q)):
        out = []
        for j in range(n_heads):
            kv = j // group
            weights = softmax([dot(q[t][j], k[s][kv]) * scale for s in range(t + 1)])
            head = [0.0] * head_dim
            for s, w in enumerate(weights):
                for i, value in enumerate(v[s][kv]):
                    head[i] += w * value
            out.extend(head)
        merged.append(out)
    return merged


# ---------------------------------------------------------------------------------------------
# Reading the weights a model needs, with their shapes checked and leftovers reported.
# ---------------------------------------------------------------------------------------------

class Weights:
    """The checkpoint's tensors, handed out by name with a shape check. Records which were used
    so that unused ones (other than known buffers) can be reported as errors."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.used = set()

    def has(self, name):
        return name in self.tensors

    def get(self, name, shape):
        if name not in self.tensors:
            raise CheckpointError("missing tensor %s (shape %s)" % (name, list(shape)))
        tensor = self.tensors[name]
        if list(tensor.shape) != list(shape):
            raise CheckpointError("tensor %s has shape %s, expected %s"
                                  % (name, tensor.shape, list(shape)))
        self.used.add(name)
        return tensor

    def vector(self, name, size):
        return self.get(name, [size]).values

    def matrix(self, name, n_rows, n_cols):
        return rows(self.get(name, [n_rows, n_cols]))

    def ignore(self, pattern):
        """Marks tensors whose names match a regular expression as knowingly unused."""
        for name in self.tensors:
            if re.fullmatch(pattern, name):
                self.used.add(name)

    def check_all_used(self):
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise CheckpointError("checkpoint has tensors this model does not use: %s"
                                  % ", ".join(unused))


def config_value(config, key, default=None, required=False):
    if key not in config or config[key] is None:
        if required:
            raise CheckpointError("config.json lacks %s" % key)
        return default
    return config[key]


def refuse_unless(condition, key, value, why):
    if not condition:
        raise CheckpointError("config.json: %s = %s is not implemented by this reference (%s)"
                              % (key, json.dumps(value), why))


def check_tokens(tokens, vocab):
    if not tokens:
        raise CheckpointError("no tokens")
    for t in tokens:
        if not 0 <= t < vocab:
            raise CheckpointError("token %d is outside the vocabulary (vocab_size %d)" % (t, vocab))


# ---------------------------------------------------------------------------------------------
# GPT-2 (transformers' GPT2LMHeadModel).
# ---------------------------------------------------------------------------------------------

def gpt2_logits(config, tensors, tokens):
    vocab = config_value(config, "vocab_size", required=True)
    d = config_value(config, "n_embd", required=True)
    n_layers = config_value(config, "n_layer", required=True)
    n_heads = config_value(config, "n_head", required=True)
    n_positions = config_value(config, "n_positions", required=True)
    d_ff = config_value(config, "n_inner", 4 * d)
    eps = config_value(config, "layer_norm_epsilon", 1e-5)
    tie = config_value(config, "tie_word_embeddings", True)
    activation_name = config_value(config, "activation_function", "gelu_new")
    refuse_unless(activation_name in GPT2_ACTIVATIONS, "activation_function", activation_name,
                  "only %s" % ", ".join(sorted(GPT2_ACTIVATIONS)))
    refuse_unless(config_value(config, "scale_attn_weights", True), "scale_attn_weights", False,
                  "attention scores are always scaled by 1/sqrt(head_dim) here")
    refuse_unless(not config_value(config, "scale_attn_by_inverse_layer_idx", False),
                  "scale_attn_by_inverse_layer_idx", True, "no per-layer attention scaling")
    refuse_unless(not config_value(config, "add_cross_attention", False),
                  "add_cross_attention", True, "decoder-only")
    if d % n_heads:
        raise CheckpointError("n_embd %d is not a multiple of n_head %d" % (d, n_heads))
    head_dim = d // n_heads
    activation = GPT2_ACTIVATIONS[activation_name]
    check_tokens(tokens, vocab)
    if len(tokens) > n_positions:
        raise CheckpointError("%d tokens but n_positions is %d" % (len(tokens), n_positions))

    w = Weights(tensors)
    # GPT2LMHeadModel saves its GPT2Model as "transformer."; GPT2Model and the original OpenAI
    # conversions have no prefix.
    p = "transformer." if w.has("transformer.wte.weight") else ""
    w.ignore(re.escape(p) + r"h\.\d+\.attn\.(bias|masked_bias)")  # causal-mask buffers

    wte = w.matrix(p + "wte.weight", vocab, d)
    wpe = w.matrix(p + "wpe.weight", n_positions, d)
    h = [add(wte[t], wpe[pos]) for pos, t in enumerate(tokens)]
    for layer in range(n_layers):
        lp = "%sh.%d." % (p, layer)
        ln1_w, ln1_b = w.vector(lp + "ln_1.weight", d), w.vector(lp + "ln_1.bias", d)
        attn_w, attn_b = w.matrix(lp + "attn.c_attn.weight", d, 3 * d), w.vector(lp + "attn.c_attn.bias", 3 * d)
        proj_w, proj_b = w.matrix(lp + "attn.c_proj.weight", d, d), w.vector(lp + "attn.c_proj.bias", d)
        ln2_w, ln2_b = w.vector(lp + "ln_2.weight", d), w.vector(lp + "ln_2.bias", d)
        fc_w, fc_b = w.matrix(lp + "mlp.c_fc.weight", d, d_ff), w.vector(lp + "mlp.c_fc.bias", d_ff)
        out_w, out_b = w.matrix(lp + "mlp.c_proj.weight", d_ff, d), w.vector(lp + "mlp.c_proj.bias", d)

        # Attention: qkv = LN1(h) @ W_attn + b, split into q | k | v, each split into heads.
        q, k, v = [], [], []
        for x in h:
            qkv = conv1d(layer_norm(x, ln1_w, ln1_b, eps), attn_w, attn_b)
            q.append(split_heads(qkv[:d], n_heads, head_dim))
            k.append(split_heads(qkv[d:2 * d], n_heads, head_dim))
            v.append(split_heads(qkv[2 * d:], n_heads, head_dim))
        merged = causal_attention(q, k, v, n_heads, n_heads, head_dim)
        h = [add(x, conv1d(m, proj_w, proj_b)) for x, m in zip(h, merged)]

        # MLP: h += act(LN2(h) @ W_fc + b) @ W_proj + b.
        for t, x in enumerate(h):
            hidden = [activation(u) for u in conv1d(layer_norm(x, ln2_w, ln2_b, eps), fc_w, fc_b)]
            h[t] = add(x, conv1d(hidden, out_w, out_b))

    lnf_w, lnf_b = w.vector(p + "ln_f.weight", d), w.vector(p + "ln_f.bias", d)
    h = [layer_norm(x, lnf_w, lnf_b, eps) for x in h]
    if tie:
        head = wte
        w.ignore(r"lm_head\.weight")
    else:
        head = w.matrix("lm_head.weight", vocab, d)
    w.check_all_used()
    return [linear(x, head) for x in h]


# ---------------------------------------------------------------------------------------------
# Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
# ---------------------------------------------------------------------------------------------

def llama_logits(config, tensors, tokens):
    model_type = config["model_type"]
    vocab = config_value(config, "vocab_size", required=True)
    d = config_value(config, "hidden_size", required=True)
    n_layers = config_value(config, "num_hidden_layers", required=True)
    n_heads = config_value(config, "num_attention_heads", required=True)
    n_kv_heads = config_value(config, "num_key_value_heads", n_heads)
    d_ff = config_value(config, "intermediate_size", required=True)
    eps = config_value(config, "rms_norm_eps", 1e-6)
    theta = config_value(config, "rope_theta", 10000.0)
    tie = config_value(config, "tie_word_embeddings", False)
    if config_value(config, "head_dim") is None and d % n_heads:
        raise CheckpointError("hidden_size %d is not a multiple of num_attention_heads %d"
                              % (d, n_heads))
    head_dim = config_value(config, "head_dim", d // n_heads)
    if n_heads % n_kv_heads or head_dim % 2:
        raise CheckpointError("num_attention_heads %d must be a multiple of num_key_value_heads "
                              "%d and head_dim %d even" % (n_heads, n_kv_heads, head_dim))

    act = config_value(config, "hidden_act", "silu")
    refuse_unless(act == "silu", "hidden_act", act, "only silu")
    rope_scaling = config_value(config, "rope_scaling")
    refuse_unless(rope_scaling is None, "rope_scaling", rope_scaling, "plain rotary only")
    refuse_unless(not config_value(config, "mlp_bias", False), "mlp_bias", True, "no MLP biases")
    if model_type == "mistral":
        window = config_value(config, "sliding_window")
        refuse_unless(window is None, "sliding_window", window, "full causal attention only")
    if model_type == "qwen2":
        refuse_unless(not config_value(config, "use_sliding_window", False),
                      "use_sliding_window", True, "full causal attention only")
        layer_types = config_value(config, "layer_types", [])
        refuse_unless(all(t == "full_attention" for t in layer_types), "layer_types",
                      layer_types, "full_attention layers only")
    # Which projections carry biases: Llama's attention_bias puts them on q, k, v and o; Qwen2
    # always has them on q, k and v, never on o; Mistral has none.
    if model_type == "llama":
        qkv_bias = o_bias = bool(config_value(config, "attention_bias", False))
    elif model_type == "qwen2":
        qkv_bias, o_bias = True, False
    else:
        qkv_bias = o_bias = False
    check_tokens(tokens, vocab)

    w = Weights(tensors)
    w.ignore(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # old buffers
    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim

    def projection(name, n_out, n_in, biased):
        weight = w.matrix(name + ".weight", n_out, n_in)
        return weight, (w.vector(name + ".bias", n_out) if biased else None)

    embed = w.matrix("model.embed_tokens.weight", vocab, d)
    h = [list(embed[t]) for t in tokens]
    for layer in range(n_layers):
        lp = "model.layers.%d." % layer
        norm_in = w.vector(lp + "input_layernorm.weight", d)
        q_w, q_b = projection(lp + "self_attn.q_proj", q_dim, d, qkv_bias)
        k_w, k_b = projection(lp + "self_attn.k_proj", kv_dim, d, qkv_bias)
        v_w, v_b = projection(lp + "self_attn.v_proj", kv_dim, d, qkv_bias)
        o_w, o_b = projection(lp + "self_attn.o_proj", d, q_dim, o_bias)
        norm_post = w.vector(lp + "post_attention_layernorm.weight", d)
        gate_w = w.matrix(lp + "mlp.gate_proj.weight", d_ff, d)
        up_w = w.matrix(lp + "mlp.up_proj.weight", d_ff, d)
        down_w = w.matrix(lp + "mlp.down_proj.weight", d, d_ff)

        # Attention: project, rotate q and k by their position, attend, project back.
        q, k, v = [], [], []
        for pos, x in enumerate(h):
            a = rms_norm(x, norm_in, eps)
            q.append([rope(head, pos, theta) for head in split_heads(linear(a, q_w, q_b), n_heads, head_dim)])
            k.append([rope(head, pos, theta) for head in split_heads(linear(a, k_w, k_b), n_kv_heads, head_dim)])
            v.append(split_heads(linear(a, v_w, v_b), n_kv_heads, head_dim))
        merged = causal_attention(q, k, v, n_heads, n_kv_heads, head_dim)
        h = [add(x, linear(m, o_w, o_b)) for x, m in zip(h, merged)]

        # Gated MLP: h += down(silu(gate(m)) * up(m)), m = RMSNorm(h).
        for t, x in enumerate(h):
            m = rms_norm(x, norm_post, eps)
            hidden = [silu(g) * u for g, u in zip(linear(m, gate_w), linear(m, up_w))]
            h[t] = add(x, linear(hidden, down_w))

    norm_final = w.vector("model.norm.weight", d)
    h = [rms_norm(x, norm_final, eps) for x in h]
    if tie:
        head = embed
        w.ignore(r"lm_head\.weight")
    else:
        head = w.matrix("lm_head.weight", vocab, d)
    w.check_all_used()
    return [linear(x, head) for x in h]


MODELS = {"gpt2": gpt2_logits, "llama": llama_logits, "mistral": llama_logits,
          "qwen2": llama_logits}


def compute_logits(config, tensors, tokens):
    """Per position, the vocab_size logits of the causal LM for tokens (fp64)."""
    model_type = config.get("model_type")
    if model_type not in MODELS:
        raise CheckpointError("config.json: model_type = %s is not implemented by this reference "
                              "(only %s)" % (json.dumps(model_type), ", ".join(sorted(MODELS))))
    return MODELS[model_type](config, tensors, tokens)


def checkpoint_logits(directory, tokens):
    config, tensors = read_checkpoint(directory)
    return compute_logits(config, tensors, tokens)


# ---------------------------------------------------------------------------------------------
# Tiny random checkpoints.
# ---------------------------------------------------------------------------------------------

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def model_config(args):
    """config.json with the keys transformers' config class for the model type saves."""
    torch_dtype = DTYPES[args.dtype][1]
    vocab, d, n_layers, n_heads = args.vocab, args.d_model, args.layers, args.heads
    if args.model_type == "gpt2":
        return {
            "activation_function": args.activation, "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.1, "bos_token_id": vocab - 1, "embd_pdrop": 0.1,
            "eos_token_id": vocab - 1, "initializer_range": 0.02,
            "layer_norm_epsilon": args.eps, "model_type": "gpt2", "n_embd": d,
            "n_head": n_heads, "n_inner": args.d_ff, "n_layer": n_layers,
            "n_positions": args.max_positions, "reorder_and_upcast_attn": False,
            "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False,
            "scale_attn_weights": True, "summary_activation": None,
            "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
            "summary_type": "cls_index", "summary_use_proj": True,
            "tie_word_embeddings": args.tie, "torch_dtype": torch_dtype, "use_cache": True,
            "vocab_size": vocab,
        }
    config = {
        "architectures": [ARCHITECTURES[args.model_type]], "attention_dropout": 0.0,
        "bos_token_id": min(1, vocab - 1), "eos_token_id": min(2, vocab - 1),
        "hidden_act": "silu", "hidden_size": d, "initializer_range": 0.02,
        "intermediate_size": args.d_ff, "max_position_embeddings": args.max_positions,
        "model_type": args.model_type, "num_attention_heads": n_heads,
        "num_hidden_layers": n_layers, "num_key_value_heads": args.kv_heads,
        "rms_norm_eps": args.eps, "rope_theta": args.rope_theta,
        "tie_word_embeddings": args.tie, "torch_dtype": torch_dtype, "use_cache": True,
        "vocab_size": vocab,
    }
    if args.model_type == "llama":
        config.update({"attention_bias": args.attention_bias, "head_dim": args.head_dim,
                       "mlp_bias": False, "pretraining_tp": 1, "rope_scaling": None})
    elif args.model_type == "mistral":
        config.update({"head_dim": args.head_dim, "sliding_window": None})
    else:  # qwen2: like Qwen2.5's configs, a window size that use_sliding_window switches off
        config.update({"max_window_layers": n_layers, "rope_scaling": None,
                       "sliding_window": args.max_positions, "use_sliding_window": False})
        if args.head_dim != d // n_heads:
            config["head_dim"] = args.head_dim
    return config


def tensor_layout(args):
    """[(name, shape, kind)] in state_dict order; kind says how to draw the values."""
    v, d, f, p = args.vocab, args.d_model, args.d_ff_value, args.max_positions
    layout = []
    if args.model_type == "gpt2":
        pre = "" if args.no_prefix else "transformer."
        layout += [(pre + "wte.weight", [v, d], "matrix"), (pre + "wpe.weight", [p, d], "matrix")]
        for i in range(args.layers):
            lp = "%sh.%d." % (pre, i)
            layout += [(lp + "ln_1.weight", [d], "norm"), (lp + "ln_1.bias", [d], "bias")]
            if args.with_mask_buffers:
                layout += [(lp + "attn.bias", [1, 1, p, p], "causal_mask"),
                           (lp + "attn.masked_bias", [], "masked_bias")]
            layout += [(lp + "attn.c_attn.weight", [d, 3 * d], "matrix"),  # Conv1D: (in, out)
                       (lp + "attn.c_attn.bias", [3 * d], "bias"),
                       (lp + "attn.c_proj.weight", [d, d], "matrix"),
                       (lp + "attn.c_proj.bias", [d], "bias"),
                       (lp + "ln_2.weight", [d], "norm"), (lp + "ln_2.bias", [d], "bias"),
                       (lp + "mlp.c_fc.weight", [d, f], "matrix"),
                       (lp + "mlp.c_fc.bias", [f], "bias"),
                       (lp + "mlp.c_proj.weight", [f, d], "matrix"),
                       (lp + "mlp.c_proj.bias", [d], "bias")]
        layout += [(pre + "ln_f.weight", [d], "norm"), (pre + "ln_f.bias", [d], "bias")]
    else:
        q_dim, kv_dim = args.heads * args.head_dim, args.kv_heads * args.head_dim
        qkv_bias = args.attention_bias or args.model_type == "qwen2"
        o_bias = args.attention_bias and args.model_type == "llama"
        layout.append(("model.embed_tokens.weight", [v, d], "matrix"))
        for i in range(args.layers):
            lp = "model.layers.%d." % i
            for name, n_out, n_in, biased in (("q_proj", q_dim, d, qkv_bias),
                                              ("k_proj", kv_dim, d, qkv_bias),
                                              ("v_proj", kv_dim, d, qkv_bias),
                                              ("o_proj", d, q_dim, o_bias)):
                layout.append((lp + "self_attn." + name + ".weight", [n_out, n_in], "matrix"))
                if biased:
                    layout.append((lp + "self_attn." + name + ".bias", [n_out], "bias"))
            layout += [(lp + "mlp.gate_proj.weight", [f, d], "matrix"),  # nn.Linear: (out, in)
                       (lp + "mlp.up_proj.weight", [f, d], "matrix"),
                       (lp + "mlp.down_proj.weight", [d, f], "matrix"),
                       (lp + "input_layernorm.weight", [d], "norm"),
                       (lp + "post_attention_layernorm.weight", [d], "norm")]
        layout.append(("model.norm.weight", [d], "norm"))
    if not args.tie:
        layout.append(("lm_head.weight", [v, d], "matrix"))
    return layout


def random_tensors(args):
    """{name: Tensor} drawn from random.Random(seed) in layout order: matrices, embeddings and
    biases N(0, std), norm weights 1 + N(0, 0.1). Mask buffers are fixed, not drawn, so a
    checkpoint with them has the same weights as one without."""
    rng = random.Random(args.seed)
    tensors = {}
    for name, shape, kind in tensor_layout(args):
        n = element_count(shape)
        if kind in ("matrix", "bias"):
            values = [rng.gauss(0.0, args.std) for _ in range(n)]
        elif kind == "norm":
            values = [1.0 + rng.gauss(0.0, 0.1) for _ in range(n)]
        elif kind == "causal_mask":
            size = shape[-1]
            tensors[name] = Tensor(shape, [1.0 if c <= r else 0.0 for r in range(size)
                                           for c in range(size)], "F32")
            continue
        else:  # masked_bias, the old GPT-2 scalar buffer
            tensors[name] = Tensor(shape, [-1e4], "F32")
            continue
        tensors[name] = Tensor(shape, [round_to_f32(x) for x in values])
    return tensors


def make(args):
    gpt2 = args.model_type == "gpt2"
    if not gpt2 and (args.no_prefix or args.with_mask_buffers):
        raise CheckpointError("--no-prefix and --with-mask-buffers are for gpt2")
    if args.attention_bias and args.model_type != "llama":
        raise CheckpointError("--attention-bias is llama's option (qwen2 always has q/k/v "
                              "biases, mistral and gpt2 have fixed ones)")
    if args.tie is None:
        args.tie = gpt2  # the transformers defaults
    if args.eps is None:
        args.eps = 1e-5 if gpt2 else 1e-6
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.d_model % args.heads or args.heads % args.kv_heads:
        raise CheckpointError("--d-model must be a multiple of --heads, --heads of --kv-heads")
    if args.head_dim is None:
        args.head_dim = args.d_model // args.heads
    if gpt2 and (args.kv_heads != args.heads or args.head_dim != args.d_model // args.heads):
        raise CheckpointError("gpt2 has no --kv-heads or --head-dim")
    # GPT-2 leaves n_inner null for 4 * n_embd; the Llama family always names its width.
    args.d_ff_value = args.d_ff or 4 * args.d_model
    if not gpt2:
        args.d_ff = args.d_ff_value
    write_checkpoint(args.dir, model_config(args), random_tensors(args),
                     DTYPES[args.dtype][0], args.shards)


def logits_command(args):
    try:
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        raise CheckpointError("--tokens wants comma-separated integers, not %r" % args.tokens)
    result = {"tokens": tokens, "logits": checkpoint_logits(args.dir, tokens)}
    text = json.dumps(result) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    m = commands.add_parser("make", help="write a tiny random Hugging Face checkpoint")
    m.add_argument("dir")
    m.add_argument("--model-type", required=True, choices=sorted(ARCHITECTURES))
    m.add_argument("--vocab", type=int, default=64)
    m.add_argument("--d-model", type=int, default=16)
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--heads", type=int, default=4)
    m.add_argument("--kv-heads", type=int, help="default: --heads (not for gpt2)")
    m.add_argument("--head-dim", type=int, help="default: d-model / heads (not for gpt2)")
    m.add_argument("--d-ff", type=int, help="MLP width; default 4 * d-model (gpt2: n_inner null)")
    tie = m.add_mutually_exclusive_group()
    tie.add_argument("--tie", dest="tie", action="store_true", default=None,
                     help="tie lm_head to the embedding (the gpt2 default)")
    tie.add_argument("--no-tie", dest="tie", action="store_false",
                     help="write lm_head.weight (the llama/mistral/qwen2 default)")
    m.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    m.add_argument("--shards", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--std", type=float, default=0.02,
                   help="standard deviation of matrices, embeddings and biases")
    m.add_argument("--max-positions", type=int, default=64)
    m.add_argument("--rope-theta", type=float, default=10000.0)
    m.add_argument("--attention-bias", action="store_true", help="llama: q/k/v/o biases")
    m.add_argument("--eps", type=float, help="norm epsilon; default 1e-5 (gpt2) or 1e-6")
    m.add_argument("--activation", default="gelu_new", choices=sorted(GPT2_ACTIVATIONS),
                   help="gpt2's activation_function")
    m.add_argument("--no-prefix", action="store_true",
                   help="gpt2: GPT2Model names (wte.weight, h.0...) without 'transformer.'")
    m.add_argument("--with-mask-buffers", action="store_true",
                   help="gpt2: also write the old causal-mask buffers h.{i}.attn.bias/masked_bias")
    m.set_defaults(run=make)

    lg = commands.add_parser("logits", help="the causal LM's fp64 logits for a token sequence")
    lg.add_argument("dir")
    lg.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 3,1,4,1,5")
    lg.add_argument("--out", help="write the JSON here instead of stdout")
    lg.set_defaults(run=logits_command)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CheckpointError as e:
        print("hf_reference: error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
