#!/usr/bin/python3
"""Self-test of hf_reference.py: properties that a wrong reference would break (dtype and shard
round trips, causality, grouped-query attention, rotary embeddings, GPT-2's Conv1D orientation,
tied heads, the checkpoint layout) and two small models whose logits are worked out here by
explicit arithmetic. Prints one line per check; exits 0 only if every check passes.

Standard library only; run it with /usr/bin/python3."""

import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
import hf_reference as ref  # noqa: E402
from hf_reference import Tensor  # noqa: E402

SCRIPT = os.path.join(HERE, "hf_reference.py")
TMP = None  # the temporary directory, set in main()
_dirs = 0


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def fresh_dir(label):
    global _dirs
    _dirs += 1
    return os.path.join(TMP, "%02d-%s" % (_dirs, label))


def make(label, *argv):
    """Runs `hf_reference.py make DIR argv...` in-process; returns DIR."""
    directory = fresh_dir(label)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        status = ref.main(["make", directory] + list(argv))
    check(status == 0, "make %s failed: %s" % (" ".join(argv), err.getvalue().strip()))
    return directory


def logits_of(directory, tokens):
    return ref.checkpoint_logits(directory, tokens)


def rewrite(directory, label, edit_config=None, edit_tensors=None):
    """A copy of a checkpoint with config and tensors edited (F32, one file)."""
    config, tensors = ref.read_checkpoint(directory)
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    tensors = {name: Tensor(t.shape, t.values) for name, t in tensors.items()}
    out = fresh_dir(label)
    ref.write_checkpoint(out, config, tensors, "F32")
    return out


def max_abs_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def relative_error(approx, exact):
    num = math.sqrt(sum((x - y) ** 2 for ra, rb in zip(approx, exact) for x, y in zip(ra, rb)))
    den = math.sqrt(sum(y * y for rb in exact for y in rb))
    return num / den


def close(a, b, tol):
    return abs(a - b) <= tol * max(1.0, abs(b))


def header_of(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def round_to_precision(x, significant_bits, min_exponent):
    """x rounded to the nearest number with that many significant bits (ties to even), with
    gradual underflow below 2^min_exponent. Written from the IEEE definition, independently of
    the struct-based encoder under test; Python's round() rounds halves to even."""
    if x == 0.0:
        return 0.0
    exponent = max(math.frexp(x)[1] - 1, min_exponent)  # x = 1.f * 2^exponent
    quantum = 2.0 ** (exponent - (significant_bits - 1))
    return round(x / quantum) * quantum


def to_f16(x):
    return round_to_precision(x, 11, -14)


def to_bf16(x):
    return round_to_precision(x, 8, -126)


# ---------------------------------------------------------------------------------------------
# The checks. Each returns a short description of what it verified.
# ---------------------------------------------------------------------------------------------

def check_shards():
    base = ["--seed", "7", "--vocab", "48", "--d-model", "16", "--layers", "2", "--heads", "4"]
    for model, extra in (("llama", ["--kv-heads", "2", "--attention-bias"]), ("gpt2", [])):
        one = make(model + "-f32", "--model-type", model, *(base + extra))
        three = make(model + "-f32-3shards", "--model-type", model, "--shards", "3", *(base + extra))
        files = sorted(os.listdir(three))
        check(files == ["config.json", "model-00001-of-00003.safetensors",
                        "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                        "model.safetensors.index.json"], "sharded files: %s" % files)
        with open(os.path.join(three, "model.safetensors.index.json")) as f:
            index = json.load(f)
        names_in_shards, data_bytes = set(), 0
        for name in files[1:4]:
            header = header_of(os.path.join(three, name))
            for tensor, entry in header.items():
                if tensor != "__metadata__":
                    check(index["weight_map"].get(tensor) == name, "%s not mapped to %s" % (tensor, name))
                    names_in_shards.add(tensor)
                    data_bytes += entry["data_offsets"][1] - entry["data_offsets"][0]
        check(names_in_shards == set(index["weight_map"]), "index and shards name different tensors")
        check(names_in_shards == set(header_of(os.path.join(one, "model.safetensors"))) - {"__metadata__"},
              "the shards hold other tensors than the single file")
        check(index["metadata"]["total_size"] == data_bytes,
              "total_size %d, shards hold %d bytes" % (index["metadata"]["total_size"], data_bytes))
        tokens = [3, 1, 4, 1, 5, 9, 2, 6]
        a, b = logits_of(one, tokens), logits_of(three, tokens)
        check(a == b, "%s: sharded logits differ by %g" % (model, max_abs_diff(a, b)))
    return "f32 in one file and in 3 shards (llama with GQA and biases, gpt2): identical logits; " \
           "index maps every tensor to the shard holding it, total_size = data bytes"


def check_dtypes():
    results = []
    for model in ("llama", "gpt2"):
        common = ["--model-type", model, "--seed", "11", "--vocab", "40", "--d-model", "16",
                  "--layers", "2", "--heads", "2"]
        f32_dir = make(model + "-f32", *common)
        _, f32 = ref.read_checkpoint(f32_dir)
        f32_logits = logits_of(f32_dir, [5, 3, 7, 2])
        for dtype, rounding, torch_dtype in (("f16", to_f16, "float16"), ("bf16", to_bf16, "bfloat16")):
            directory = make(model + "-" + dtype, "--dtype", dtype, *common)
            config, low = ref.read_checkpoint(directory)
            check(config["torch_dtype"] == torch_dtype, "torch_dtype %s" % config["torch_dtype"])
            changed = 0
            for name, tensor in f32.items():
                check(f32[name].dtype == "F32" and low[name].dtype == dtype.upper(),
                      "%s stored as %s / %s" % (name, f32[name].dtype, low[name].dtype))
                for x, y in zip(tensor.values, low[name].values):
                    check(y == rounding(x), "%s %s: %r decodes to %r, expected %r"
                          % (dtype, name, x, y, rounding(x)))
                    changed += x != y
            total = sum(len(t.values) for t in f32.values())
            check(changed > total // 2, "%s: only %d of %d values differ from f32" % (dtype, changed, total))
            error = relative_error(logits_of(directory, [5, 3, 7, 2]), f32_logits)
            check(0.0 < error < 1e-2, "%s %s logits: relative error %g" % (model, dtype, error))
            results.append("%s %s %.1e" % (model, dtype, error))
    # Ties round to even (the random values above almost never hit a tie).
    for x, expected in ((1.0 + 2 ** -8, 1.0), (1.0 + 3 * 2 ** -8, 1.0 + 2 ** -6), (-(1.0 + 2 ** -8), -1.0)):
        (bits,) = struct.unpack("<H", ref.encode([x], "BF16"))
        check(ref.decode(ref.encode([x], "BF16"), "BF16") == [expected],
              "bf16(%r) = %r (bits %04x), expected %r" % (x, ref.decode(ref.encode([x], "BF16"), "BF16"), bits, expected))
    for x, expected in ((1.0 + 2 ** -11, 1.0), (1.0 + 3 * 2 ** -11, 1.0 + 2 ** -9)):
        check(ref.decode(ref.encode([x], "F16"), "F16") == [expected], "f16(%r)" % x)
    return "every tensor of f16/bf16 llama and gpt2 checkpoints decodes to its f32 value rounded " \
           "(independent IEEE rounding, ties to even); logits relative error, non-zero and " \
           "< 1e-2: " + ", ".join(results)


def check_causality():
    for model, extra in (("gpt2", []), ("llama", ["--kv-heads", "2"]), ("qwen2", []),
                         ("mistral", ["--kv-heads", "1"])):
        directory = make(model, "--model-type", model, "--seed", "3", "--vocab", "32",
                         "--d-model", "16", "--heads", "4", *extra)
        a = logits_of(directory, [3, 1, 4, 1, 5])
        b = logits_of(directory, [3, 1, 4, 9, 2, 6])
        for t in range(3):
            check(a[t] == b[t], "%s: position %d changed with later tokens" % (model, t))
        check(a[3] != b[3], "%s: position 3 did not change with its own token" % model)
    return "gpt2, llama, qwen2, mistral: logits at positions 0-2 of 3,1,4,1,5 and 3,1,4,9,2,6 " \
           "identical, at position 3 different"


def check_gqa():
    tokens = [2, 7, 1, 8, 2, 8]
    for kv_heads in (1, 2):
        grouped = make("llama-kv%d" % kv_heads, "--model-type", "llama", "--seed", "5",
                       "--vocab", "32", "--d-model", "16", "--heads", "4", "--kv-heads",
                       str(kv_heads), "--attention-bias")
        head_dim, group = 4, 4 // kv_heads

        def duplicate(order):
            """k/v rows (and biases) rewritten for 4 key/value heads: head j gets the grouped
            checkpoint's head order(j)."""
            def edit(tensors):
                for name in list(tensors):
                    if ".k_proj." in name or ".v_proj." in name:
                        t = tensors[name]
                        width = t.shape[1] if len(t.shape) == 2 else 1
                        block = head_dim * width  # values per head
                        values = []
                        for j in range(4):
                            values += t.values[order(j) * block:(order(j) + 1) * block]
                        tensors[name] = Tensor([4 * head_dim] + t.shape[1:], values)
            return edit

        def four_kv_heads(config):
            config["num_key_value_heads"] = 4

        expanded = rewrite(grouped, "llama-kv%d-as-kv4" % kv_heads, four_kv_heads,
                           duplicate(lambda j: j // group))
        a, b = logits_of(grouped, tokens), logits_of(expanded, tokens)
        check(max_abs_diff(a, b) <= 1e-15, "kv_heads=%d vs duplicated: %g" % (kv_heads, max_abs_diff(a, b)))
        if kv_heads == 2:
            # The other plausible mapping, j % Hkv, must give something else.
            wrong = rewrite(grouped, "llama-kv2-interleaved", four_kv_heads,
                            duplicate(lambda j: j % kv_heads))
            check(max_abs_diff(a, logits_of(wrong, tokens)) > 1e-6,
                  "duplicating heads as [0,1,0,1] gives the same logits as [0,0,1,1]")
    return "llama H=4 with kv_heads 1 and 2 (and q/k/v/o biases) = the same weights with k/v " \
           "heads duplicated to 4 as [0,0,0,0] / [0,0,1,1]; duplicating as [0,1,0,1] differs"


def check_rotary():
    x = [1.0, 2.0, 3.0, 4.0]
    check(ref.rope(x, 0, 10000.0) == x, "rope at position 0 is not the identity")
    # d = 4, theta = 10000: inv_freq = [1, 1/100]; position 1 rotates (x0, x2) by 1 radian and
    # (x1, x3) by 0.01 radian. cos 1 = 0.5403023058681398, sin 1 = 0.8414709848078965,
    # cos .01 = 0.9999500004166653, sin .01 = 0.009999833334166664:
    #   out0 = 1 cos1 - 3 sin1 = -1.9841106485555496   out2 = 3 cos1 + 1 sin1 = 2.4623779024123156
    #   out1 = 2 cos.01 - 4 sin.01 = 1.959900667496664  out3 = 4 cos.01 + 2 sin.01 = 4.019799668334995
    expected = [-1.9841106485555496, 1.959900667496664, 2.4623779024123156, 4.019799668334995]
    got = ref.rope(x, 1, 10000.0)
    check(all(close(g, e, 1e-14) for g, e in zip(got, expected)), "rope(1,2,3,4; pos 1) = %s" % got)
    # Scores depend only on the distance between positions.
    q, k = [0.3, -1.2, 0.7, 2.0], [1.1, 0.4, -0.9, 0.25]
    s1 = ref.dot(ref.rope(q, 7, 10000.0), ref.rope(k, 4, 10000.0))
    s2 = ref.dot(ref.rope(q, 3, 10000.0), ref.rope(k, 0, 10000.0))
    check(close(s1, s2, 1e-13), "rope scores at (7,4) %r and (3,0) %r" % (s1, s2))
    # In a model: one token's logits do not depend on rotary; two tokens' do.
    directory = make("llama-rope", "--model-type", "llama", "--seed", "9", "--vocab", "32",
                     "--d-model", "16", "--heads", "2")
    # (Two different tokens: with equal values at both positions the attention weights, rotated
    # or not, would average identical vectors.)
    with_rope_1, with_rope_2 = logits_of(directory, [6]), logits_of(directory, [6, 2])
    saved = ref.rope
    ref.rope = lambda v, position, theta: list(v)
    try:
        without_1, without_2 = logits_of(directory, [6]), logits_of(directory, [6, 2])
    finally:
        ref.rope = saved
    check(with_rope_1 == without_1, "one token's logits change without rotary")
    check(max_abs_diff(with_rope_2[1:], without_2[1:]) > 1e-6, "position 1 ignores rotary")
    return "rope at position 0 = identity; rope(1,2,3,4) at position 1, theta 1e4 = hand values " \
           "(rotate_half pairs (0,2), (1,3)); scores depend on position difference only; a " \
           "one-token llama is unchanged with rotary switched off, position 1 of two tokens is not"


def check_attention():
    """causal_attention on numbers small enough to follow: two positions, two query heads
    sharing one key/value head, head_dim 2 (so the scale is 1/sqrt 2, not 1/sqrt 4)."""
    q = [[[1.0, 0.5], [-0.5, 2.0]], [[0.25, -1.0], [1.5, 0.75]]]  # [position][head]
    k = [[[0.5, 1.5]], [[-1.0, 0.25]]]
    v = [[[2.0, -1.0]], [[0.5, 3.0]]]
    got = ref.causal_attention(q, k, v, 2, 1, 2)
    expected = [[2.0, -1.0, 2.0, -1.0]]  # position 0 sees only itself
    row = []
    for head in range(2):
        s0 = (q[1][head][0] * 0.5 + q[1][head][1] * 1.5) / math.sqrt(2)
        s1 = (q[1][head][0] * -1.0 + q[1][head][1] * 0.25) / math.sqrt(2)
        p1 = math.exp(s1) / (math.exp(s0) + math.exp(s1))
        row += [(1 - p1) * 2.0 + p1 * 0.5, (1 - p1) * -1.0 + p1 * 3.0]
    expected.append(row)
    check(all(close(g, e, 1e-14) for gr, er in zip(got, expected) for g, e in zip(gr, er)),
          "attention: got %s, expected %s" % (got, expected))
    return "2 positions, 2 query heads on 1 key/value head, head_dim 2: causal softmax(q.k/sqrt 2) " \
           "weighted values match hand arithmetic: %s" % [[round(x, 6) for x in r] for r in expected]


def check_tied():
    tokens = [1, 4, 2]
    for model, embed in (("gpt2", "transformer.wte.weight"), ("llama", "model.embed_tokens.weight")):
        tied = make(model + "-tied", "--model-type", model, "--tie", "--seed", "13",
                    "--vocab", "24", "--d-model", "8", "--heads", "2")
        _, tensors = ref.read_checkpoint(tied)
        check("lm_head.weight" not in tensors, "%s tied checkpoint has lm_head.weight" % model)

        def untie(config):
            config["tie_word_embeddings"] = False

        def copy_head(changed_row=None):
            def edit(tensors):
                values = list(tensors[embed].values)
                if changed_row is not None:
                    for i in range(8):
                        values[changed_row * 8 + i] *= -2.0
                tensors["lm_head.weight"] = Tensor(tensors[embed].shape, values)
            return edit

        a = logits_of(tied, tokens)
        b = logits_of(rewrite(tied, model + "-untied", untie, copy_head()), tokens)
        check(a == b, "%s: untied lm_head = embedding differs from tied by %g" % (model, max_abs_diff(a, b)))
        c = logits_of(rewrite(tied, model + "-untied-row5", untie, copy_head(5)), tokens)
        for t in range(len(tokens)):
            check(c[t][5] != a[t][5] and c[t][:5] == a[t][:5] and c[t][6:] == a[t][6:],
                  "%s: changing lm_head row 5 did not change exactly logit 5" % model)
    return "gpt2 and llama: tied = untied with lm_head a copy of the embedding; changing lm_head " \
           "row 5 changes logit 5 only"


def check_gpt2_variants():
    common = ["--model-type", "gpt2", "--seed", "17", "--vocab", "32", "--d-model", "8",
              "--heads", "2", "--max-positions", "12"]
    plain = make("gpt2", *common)
    old = make("gpt2-noprefix-masks", "--no-prefix", "--with-mask-buffers", *common)
    header = header_of(os.path.join(old, "model.safetensors"))
    check("wte.weight" in header and "h.1.mlp.c_fc.weight" in header and
          not any(n.startswith("transformer.") for n in header), "unprefixed names")
    mask = header["h.0.attn.bias"]
    check(mask["dtype"] == "F32" and mask["shape"] == [1, 1, 12, 12], "mask buffer %s" % mask)
    _, tensors = ref.read_checkpoint(old)
    values = tensors["h.1.attn.bias"].values
    check(values[12 * 3 + 3] == 1.0 and values[12 * 3 + 4] == 0.0 and sum(values) == 78,
          "mask buffer is not lower triangular")
    tokens = [4, 4, 0, 31]
    check(logits_of(plain, tokens) == logits_of(old, tokens), "unprefixed/masked logits differ")
    # Activations: "gelu" is exact erf GELU, the others the tanh approximation.
    check(close(ref.gelu_erf(1.0), 0.8413447460685429, 1e-15), "gelu(1)")
    check(close(ref.gelu_tanh(1.0), 0.8411919906082768, 1e-15), "gelu_new(1)")
    exact = make("gpt2-gelu", "--activation", "gelu", *common)
    check(max_abs_diff(logits_of(plain, tokens), logits_of(exact, tokens)) > 0,
          "activation_function gelu and gelu_new give the same logits")
    return "GPT2Model names without 'transformer.' plus (1,1,P,P) lower-triangular mask buffers " \
           "give the same logits as the default; gelu(1), gelu_new(1) hand values; " \
           "activation_function gelu changes the logits"


# Tensor names and shapes as transformers saves them, spelled out for a small config:
# V=10, D=8, H=2 (head dim 4), Hkv=1, F=12, P=6, one layer.
EXPECTED_LAYOUTS = {
    "gpt2": {  # Conv1D weights are (in, out)
        "transformer.wte.weight": [10, 8], "transformer.wpe.weight": [6, 8],
        "transformer.h.0.ln_1.weight": [8], "transformer.h.0.ln_1.bias": [8],
        "transformer.h.0.attn.c_attn.weight": [8, 24], "transformer.h.0.attn.c_attn.bias": [24],
        "transformer.h.0.attn.c_proj.weight": [8, 8], "transformer.h.0.attn.c_proj.bias": [8],
        "transformer.h.0.ln_2.weight": [8], "transformer.h.0.ln_2.bias": [8],
        "transformer.h.0.mlp.c_fc.weight": [8, 12], "transformer.h.0.mlp.c_fc.bias": [12],
        "transformer.h.0.mlp.c_proj.weight": [12, 8], "transformer.h.0.mlp.c_proj.bias": [8],
        "transformer.ln_f.weight": [8], "transformer.ln_f.bias": [8],
    },
    "llama": {  # nn.Linear weights are (out, in); with --attention-bias
        "model.embed_tokens.weight": [10, 8],
        "model.layers.0.input_layernorm.weight": [8],
        "model.layers.0.self_attn.q_proj.weight": [8, 8], "model.layers.0.self_attn.q_proj.bias": [8],
        "model.layers.0.self_attn.k_proj.weight": [4, 8], "model.layers.0.self_attn.k_proj.bias": [4],
        "model.layers.0.self_attn.v_proj.weight": [4, 8], "model.layers.0.self_attn.v_proj.bias": [4],
        "model.layers.0.self_attn.o_proj.weight": [8, 8], "model.layers.0.self_attn.o_proj.bias": [8],
        "model.layers.0.post_attention_layernorm.weight": [8],
        "model.layers.0.mlp.gate_proj.weight": [12, 8], "model.layers.0.mlp.up_proj.weight": [12, 8],
        "model.layers.0.mlp.down_proj.weight": [8, 12],
        "model.norm.weight": [8], "lm_head.weight": [10, 8],
    },
}
EXPECTED_LAYOUTS["mistral"] = {n: s for n, s in EXPECTED_LAYOUTS["llama"].items() if not n.endswith(".bias")}
EXPECTED_LAYOUTS["qwen2"] = {n: s for n, s in EXPECTED_LAYOUTS["llama"].items() if not n.endswith("o_proj.bias")}


def check_layout():
    expected_keys = {
        "gpt2": {"n_embd": 8, "n_layer": 1, "n_head": 2, "n_inner": 12, "n_positions": 6,
                 "activation_function": "gelu_new", "tie_word_embeddings": True,
                 "architectures": ["GPT2LMHeadModel"], "layer_norm_epsilon": 1e-5},
        "llama": {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "num_key_value_heads": 1, "intermediate_size": 12, "hidden_act": "silu",
                  "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 6,
                  "tie_word_embeddings": False, "attention_bias": True, "rope_scaling": None,
                  "architectures": ["LlamaForCausalLM"]},
        "mistral": {"sliding_window": None, "num_key_value_heads": 1,
                    "architectures": ["MistralForCausalLM"]},
        "qwen2": {"use_sliding_window": False, "num_key_value_heads": 1,
                  "architectures": ["Qwen2ForCausalLM"]},
    }
    for model, layout in EXPECTED_LAYOUTS.items():
        argv = ["--model-type", model, "--vocab", "10", "--d-model", "8", "--heads", "2",
                "--d-ff", "12", "--max-positions", "6", "--layers", "1"]
        if model != "gpt2":
            argv += ["--kv-heads", "1"]
        if model == "llama":
            argv += ["--attention-bias"]
        directory = make(model + "-layout", *argv)
        header = header_of(os.path.join(directory, "model.safetensors"))
        check(header.pop("__metadata__") == {"format": "pt"}, "metadata")
        got = {name: entry["shape"] for name, entry in header.items()}
        check(got == layout, "%s layout: extra %s, missing %s, shapes %s" % (
            model, sorted(set(got) - set(layout)), sorted(set(layout) - set(got)),
            {n: got[n] for n in got if n in layout and got[n] != layout[n]}))
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
        check(config["model_type"] == model and config["vocab_size"] == 10, "model_type/vocab")
        for key, value in expected_keys[model].items():
            check(config.get(key, "absent") == value, "%s config %s = %r" % (model, key, config.get(key, "absent")))
        # Random weights: norms 1 + N(0, 0.1), biases N(0, 0.02), neither constant.
        _, tensors = ref.read_checkpoint(directory)
        norm = tensors["model.norm.weight" if model != "gpt2" else "transformer.ln_f.weight"].values
        check(all(0.5 < v < 1.5 for v in norm) and len(set(norm)) == len(norm), "norm weights %s" % norm)
        bias_name = {"gpt2": "transformer.ln_f.bias", "llama": "model.layers.0.self_attn.o_proj.bias",
                     "qwen2": "model.layers.0.self_attn.q_proj.bias"}.get(model)
        if bias_name:
            bias = tensors[bias_name].values
            check(all(abs(v) < 0.2 for v in bias) and len(set(bias)) == len(bias), "biases %s" % bias)
    return "names and shapes for one-layer gpt2 (Conv1D (in,out)), llama with attention_bias " \
           "(q/k/v/o biases), mistral (none), qwen2 (q/k/v, no o) match transformers' lists; " \
           "config keys; norm weights and biases random, not ones/zeros"


def check_refusals():
    base = make("llama-refusals", "--model-type", "llama", "--vocab", "16", "--d-model", "8",
                "--heads", "2", "--layers", "1")
    cases = [
        ("rope_scaling", lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0})),
        ("sliding_window", lambda c: c.update(model_type="mistral", sliding_window=4096)),
        ("use_sliding_window", lambda c: c.update(model_type="qwen2", use_sliding_window=True)),
        ("model_type", lambda c: c.update(model_type="gemma")),
        ("hidden_act", lambda c: c.update(hidden_act="gelu")),
    ]
    for key, edit in cases:
        config, tensors = ref.read_checkpoint(base)
        edit(config)
        try:
            ref.compute_logits(config, tensors, [1, 2])
        except ref.CheckpointError as e:
            check(key in str(e), "refusal of %s does not name it: %s" % (key, e))
        else:
            raise Failure("%s was not refused" % key)
    # Qwen2 with sliding_window set but use_sliding_window false is full attention: accepted.
    config, tensors = ref.read_checkpoint(base)
    config.update(model_type="qwen2", sliding_window=64, use_sliding_window=False)
    tensors = {n: t for n, t in tensors.items()}
    for name in list(tensors):  # qwen2 has q/k/v biases; zero ones keep llama's logits
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            tensors[name[:-len("weight")] + "bias"] = Tensor([t for t in tensors[name].shape[:1]],
                                                             [0.0] * tensors[name].shape[0])
    check(ref.compute_logits(config, tensors, [1, 2]) == logits_of(base, [1, 2]),
          "qwen2 with zero q/k/v biases differs from llama")
    # Tensors missing, misshapen or unused are errors.
    _, tensors = ref.read_checkpoint(base)
    for label, edit in (
            ("missing", lambda t: t.pop("model.layers.0.mlp.up_proj.weight")),
            ("shape", lambda t: t.update({"model.norm.weight": Tensor([7], [1.0] * 7)})),
            ("unused", lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": Tensor([8], [0.0] * 8)}))):
        config, tensors = ref.read_checkpoint(base)
        edit(tensors)
        try:
            ref.compute_logits(config, tensors, [1])
        except ref.CheckpointError:
            pass
        else:
            raise Failure("a %s tensor was not reported" % label)
    return "rope_scaling, mistral sliding_window, qwen2 use_sliding_window, model_type gemma, " \
           "hidden_act gelu refused naming the key; qwen2 with an unused window accepted (= llama " \
           "when its q/k/v biases are zero); missing, misshapen and unused tensors are errors"


def check_cli():
    directory = fresh_dir("cli-qwen2")
    run = lambda *argv: subprocess.run([sys.executable, SCRIPT] + list(argv),
                                       capture_output=True, text=True)
    made = run("make", directory, "--model-type", "qwen2", "--vocab", "20", "--d-model", "8",
               "--heads", "2", "--kv-heads", "1", "--shards", "2", "--dtype", "bf16")
    check(made.returncode == 0, "make: %s" % made.stderr)
    out = os.path.join(TMP, "logits.json")
    written = run("logits", directory, "--tokens", "3,1,4", "--out", out)
    printed = run("logits", directory, "--tokens", "3,1,4")
    check(written.returncode == 0 and printed.returncode == 0, "logits: %s" % written.stderr)
    with open(out) as f:
        from_file = json.load(f)
    check(from_file == json.loads(printed.stdout), "--out and stdout differ")
    check(from_file["tokens"] == [3, 1, 4] and len(from_file["logits"]) == 3 and
          all(len(row) == 20 for row in from_file["logits"]), "JSON shape")
    check(from_file["logits"] == logits_of(directory, [3, 1, 4]), "CLI and in-process logits differ")
    bad = run("logits", directory, "--tokens", "3,20")
    check(bad.returncode == 2 and "vocab" in bad.stderr, "token 20 of 20: %s" % bad.stderr)
    again = run("make", directory, "--model-type", "qwen2")
    check(again.returncode == 2 and "not empty" in again.stderr, "make into a used directory")
    return "make (qwen2, bf16, 2 shards) and logits via the command line: --out and stdout give " \
           "the same JSON {tokens, logits[3][20]} = the in-process logits; an out-of-vocabulary " \
           "token and a non-empty target directory exit 2 with a message"


# ---------------------------------------------------------------------------------------------
# Known answers worked out by explicit arithmetic.
# ---------------------------------------------------------------------------------------------

def check_gpt2_by_hand():
    """One-layer GPT-2, D = 2, H = 1, V = 3, n_inner = 2, two tokens. The matrices are not
    symmetric, so reading a Conv1D weight as (out, in) changes the answer."""
    eps = 1e-5
    wte = [[1.0, 0.5], [-0.5, 1.0], [0.25, -1.0]]
    wpe = [[0.5, -0.25], [-1.0, 0.75]]
    ln1_w, ln1_b = [1.5, 0.5], [0.25, -0.5]
    attn_w = [[0.5, -1.0, 0.25, 1.0, -0.5, 0.75],  # (in = 2, out = 6): q0 q1 k0 k1 v0 v1
              [1.0, 0.25, -0.75, 0.5, 1.5, -0.25]]
    attn_b = [0.125, -0.25, 0.5, 0.0, 0.25, -0.125]
    proj_w, proj_b = [[0.5, 1.0], [-0.25, 0.75]], [0.125, -0.0625]
    ln2_w, ln2_b = [0.75, 1.25], [-0.125, 0.25]
    fc_w, fc_b = [[1.0, -0.5], [0.25, 0.5]], [0.0625, -0.125]
    out_w, out_b = [[-0.75, 0.5], [1.0, 0.25]], [0.25, 0.125]
    lnf_w, lnf_b = [1.25, 0.5], [0.5, -0.25]
    tokens = [2, 0]

    def ln(x, w, b):  # two-element LayerNorm
        m = (x[0] + x[1]) / 2
        r = 1 / math.sqrt(((x[0] - m) ** 2 + (x[1] - m) ** 2) / 2 + eps)
        return [(x[0] - m) * r * w[0] + b[0], (x[1] - m) * r * w[1] + b[1]]

    def x_times(x, w, b):  # row vector x (2) times w (2 x n) plus b
        return [x[0] * w[0][o] + x[1] * w[1][o] + b[o] for o in range(len(b))]

    def gelu_new(u):
        return 0.5 * u * (1 + math.tanh(0.7978845608028654 * (u + 0.044715 * u * u * u)))

    h = [[wte[t][0] + wpe[p][0], wte[t][1] + wpe[p][1]] for p, t in enumerate(tokens)]
    qkv = [x_times(ln(x, ln1_w, ln1_b), attn_w, attn_b) for x in h]
    q = [r[0:2] for r in qkv]
    k = [r[2:4] for r in qkv]
    v = [r[4:6] for r in qkv]
    # Position 0 sees only itself; position 1 weighs positions 0 and 1 by softmax(q.k / sqrt 2).
    s0 = (q[1][0] * k[0][0] + q[1][1] * k[0][1]) / math.sqrt(2)
    s1 = (q[1][0] * k[1][0] + q[1][1] * k[1][1]) / math.sqrt(2)
    p1 = 1 / (1 + math.exp(s0 - s1))
    attended = [v[0], [(1 - p1) * v[0][i] + p1 * v[1][i] for i in range(2)]]
    h = [[x[i] + y for i, y in enumerate(x_times(a, proj_w, proj_b))] for x, a in zip(h, attended)]
    for t in range(2):
        hidden = [gelu_new(u) for u in x_times(ln(h[t], ln2_w, ln2_b), fc_w, fc_b)]
        h[t] = [h[t][i] + y for i, y in enumerate(x_times(hidden, out_w, out_b))]
    final = [ln(x, lnf_w, lnf_b) for x in h]
    expected = [[f[0] * e[0] + f[1] * e[1] for e in wte] for f in final]

    tensors = {
        "transformer.wte.weight": Tensor([3, 2], sum(wte, [])),
        "transformer.wpe.weight": Tensor([2, 2], sum(wpe, [])),
        "transformer.h.0.ln_1.weight": Tensor([2], ln1_w), "transformer.h.0.ln_1.bias": Tensor([2], ln1_b),
        "transformer.h.0.attn.c_attn.weight": Tensor([2, 6], sum(attn_w, [])),
        "transformer.h.0.attn.c_attn.bias": Tensor([6], attn_b),
        "transformer.h.0.attn.c_proj.weight": Tensor([2, 2], sum(proj_w, [])),
        "transformer.h.0.attn.c_proj.bias": Tensor([2], proj_b),
        "transformer.h.0.ln_2.weight": Tensor([2], ln2_w), "transformer.h.0.ln_2.bias": Tensor([2], ln2_b),
        "transformer.h.0.mlp.c_fc.weight": Tensor([2, 2], sum(fc_w, [])),
        "transformer.h.0.mlp.c_fc.bias": Tensor([2], fc_b),
        "transformer.h.0.mlp.c_proj.weight": Tensor([2, 2], sum(out_w, [])),
        "transformer.h.0.mlp.c_proj.bias": Tensor([2], out_b),
        "transformer.ln_f.weight": Tensor([2], lnf_w), "transformer.ln_f.bias": Tensor([2], lnf_b),
    }
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 3,
              "n_embd": 2, "n_layer": 1, "n_head": 1, "n_inner": 2, "n_positions": 2,
              "layer_norm_epsilon": eps, "activation_function": "gelu_new"}
    directory = fresh_dir("gpt2-by-hand")
    ref.write_checkpoint(directory, config, tensors)
    got = logits_of(directory, tokens)
    check(all(close(g, e, 1e-12) for gr, er in zip(got, expected) for g, e in zip(gr, er)),
          "gpt2 by hand: got %s, expected %s" % (got, expected))
    # The same with every square Conv1D weight transposed must differ (the check can fail).
    for name in ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
        flipped = dict(tensors)
        w = tensors["transformer.h.0." + name].values
        flipped["transformer.h.0." + name] = Tensor([2, 2], [w[0], w[2], w[1], w[3]])
        check(max_abs_diff(ref.compute_logits(config, flipped, tokens), expected) > 1e-6,
              "transposing %s does not change the logits" % name)
    return "1-layer gpt2 (D=2, H=1, V=3, n_inner=2, tokens 2,0, tied) matches hand arithmetic " \
           "to 1e-12: %s; transposing any square Conv1D weight changes it" % (
               [[round(x, 6) for x in row] for row in expected])


def llama_by_hand(head_dim):
    """One-layer Llama, D = 2, H = 1, V = 2, intermediate 2, head_dim 2 or 4, untied, tokens
    1, 0. Returns (config, tensors, tokens, expected logits)."""
    eps, theta = 1e-6, 10000.0
    embed = [[0.5, -1.0], [1.5, 0.25]]
    lm_head = [[-0.75, 0.5], [0.25, 1.25]]
    norm_in, norm_post, norm_final = [1.25, 0.75], [0.5, 1.5], [1.0, -0.5]
    wq = [[1.0, -0.5], [0.25, 0.75], [-1.0, 0.5], [0.5, 1.25]][:head_dim]  # (out, in)
    wk = [[0.5, 1.0], [-0.75, 0.25], [1.25, -0.5], [0.25, 0.5]][:head_dim]
    wv = [[-0.5, 0.25], [1.0, 0.5], [0.75, -1.0], [-0.25, 0.75]][:head_dim]
    wo = [[0.75, -0.25, 0.5, 1.0][:head_dim], [0.5, 1.0, -0.75, 0.25][:head_dim]]
    w_gate, w_up, w_down = [[1.0, 0.5], [-0.5, 0.25]], [[0.25, -1.0], [0.75, 0.5]], [[0.5, -0.25], [1.0, 0.75]]
    tokens = [1, 0]

    def rms(x, w):
        r = 1 / math.sqrt((x[0] * x[0] + x[1] * x[1]) / 2 + eps)
        return [x[0] * r * w[0], x[1] * r * w[1]]

    def times(w, x):  # W x for W stored (out, in)
        return [sum(row[i] * x[i] for i in range(len(x))) for row in w]

    def rotate(x, pos):  # rotate_half pairs (x[i], x[i + d/2]) by pos / theta^(2i/d)
        half = len(x) // 2
        out = list(x)
        for i in range(half):
            a = pos / theta ** (2 * i / len(x))
            out[i] = x[i] * math.cos(a) - x[i + half] * math.sin(a)
            out[i + half] = x[i + half] * math.cos(a) + x[i] * math.sin(a)
        return out

    h = [list(embed[t]) for t in tokens]
    a = [rms(x, norm_in) for x in h]
    q = [rotate(times(wq, a[p]), p) for p in range(2)]
    k = [rotate(times(wk, a[p]), p) for p in range(2)]
    v = [times(wv, a[p]) for p in range(2)]
    scale = 1 / math.sqrt(head_dim)
    s0 = sum(q[1][i] * k[0][i] for i in range(head_dim)) * scale
    s1 = sum(q[1][i] * k[1][i] for i in range(head_dim)) * scale
    p1 = math.exp(s1) / (math.exp(s0) + math.exp(s1))
    attended = [v[0], [(1 - p1) * v[0][i] + p1 * v[1][i] for i in range(head_dim)]]
    h = [[x[i] + y for i, y in enumerate(times(wo, o))] for x, o in zip(h, attended)]
    for t in range(2):
        m = rms(h[t], norm_post)
        g, u = times(w_gate, m), times(w_up, m)
        hidden = [g[j] / (1 + math.exp(-g[j])) * u[j] for j in range(2)]
        h[t] = [h[t][i] + y for i, y in enumerate(times(w_down, hidden))]
    expected = [times(lm_head, rms(x, norm_final)) for x in h]

    lp = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": Tensor([2, 2], sum(embed, [])),
        lp + "input_layernorm.weight": Tensor([2], norm_in),
        lp + "self_attn.q_proj.weight": Tensor([head_dim, 2], sum(wq, [])),
        lp + "self_attn.k_proj.weight": Tensor([head_dim, 2], sum(wk, [])),
        lp + "self_attn.v_proj.weight": Tensor([head_dim, 2], sum(wv, [])),
        lp + "self_attn.o_proj.weight": Tensor([2, head_dim], sum(wo, [])),
        lp + "post_attention_layernorm.weight": Tensor([2], norm_post),
        lp + "mlp.gate_proj.weight": Tensor([2, 2], sum(w_gate, [])),
        lp + "mlp.up_proj.weight": Tensor([2, 2], sum(w_up, [])),
        lp + "mlp.down_proj.weight": Tensor([2, 2], sum(w_down, [])),
        "model.norm.weight": Tensor([2], norm_final),
        "lm_head.weight": Tensor([2, 2], sum(lm_head, [])),
    }
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 2,
              "hidden_size": 2, "num_hidden_layers": 1, "num_attention_heads": 1,
              "num_key_value_heads": 1, "intermediate_size": 2, "hidden_act": "silu",
              "rms_norm_eps": eps, "rope_theta": theta, "rope_scaling": None,
              "tie_word_embeddings": False, "max_position_embeddings": 8}
    if head_dim != 2:
        config["head_dim"] = head_dim
    return config, tensors, tokens, expected


def check_llama_by_hand():
    lines = []
    for head_dim in (2, 4):
        config, tensors, tokens, expected = llama_by_hand(head_dim)
        directory = fresh_dir("llama-by-hand-hd%d" % head_dim)
        ref.write_checkpoint(directory, config, tensors)
        got = logits_of(directory, tokens)
        check(all(close(g, e, 1e-12) for gr, er in zip(got, expected) for g, e in zip(gr, er)),
              "llama by hand (head_dim %d): got %s, expected %s" % (head_dim, got, expected))
        # Transposing the square down_proj must change the answer.
        flipped = dict(tensors)
        w = tensors["model.layers.0.mlp.down_proj.weight"].values
        flipped["model.layers.0.mlp.down_proj.weight"] = Tensor([2, 2], [w[0], w[2], w[1], w[3]])
        check(max_abs_diff(ref.compute_logits(config, flipped, tokens), expected) > 1e-6,
              "transposing down_proj does not change the logits")
        lines.append("head_dim %d: %s" % (head_dim, [[round(x, 6) for x in row] for row in expected]))
    # With head_dim 4 the rotary pairs are (0,2) at 1 rad and (1,3) at 0.01 rad; interleaved
    # pairs would give another answer.
    saved = ref.rope
    ref.rope = lambda x, pos, theta: sum(
        ([x[2 * i] * math.cos(pos / theta ** (2 * i / len(x))) - x[2 * i + 1] * math.sin(pos / theta ** (2 * i / len(x))),
          x[2 * i + 1] * math.cos(pos / theta ** (2 * i / len(x))) + x[2 * i] * math.sin(pos / theta ** (2 * i / len(x)))]
         for i in range(len(x) // 2)), [])
    try:
        config, tensors, tokens, expected = llama_by_hand(4)
        interleaved = ref.compute_logits(config, tensors, tokens)
    finally:
        ref.rope = saved
    check(max_abs_diff(interleaved, expected) > 1e-6, "interleaved rotary gives the same logits")
    return "1-layer llama (D=2, H=1, V=2, intermediate 2, untied, tokens 1,0; rotary, RMSNorm, " \
           "SwiGLU) matches hand arithmetic to 1e-12 with head_dim 2 and head_dim 4 (two rotary " \
           "frequencies, scale 1/2); transposed down_proj or interleaved rotary would not: " + \
           "; ".join(lines)


CHECKS = [
    ("layout", check_layout),
    ("shards", check_shards),
    ("dtypes", check_dtypes),
    ("causality", check_causality),
    ("attention", check_attention),
    ("gqa", check_gqa),
    ("rotary", check_rotary),
    ("tied", check_tied),
    ("gpt2-variants", check_gpt2_variants),
    ("gpt2-by-hand", check_gpt2_by_hand),
    ("llama-by-hand", check_llama_by_hand),
    ("refusals", check_refusals),
    ("cli", check_cli),
]


def main():
    global TMP
    failures = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_reference_test.") as TMP:
        for name, function in CHECKS:
            t0 = time.monotonic()
            try:
                what = function()
                print("ok   %-14s %s (%.1f s)" % (name, what, time.monotonic() - t0))
            except Exception as e:  # a crash is a failure too, reported with its type
                failures += 1
                kind = "" if isinstance(e, Failure) else type(e).__name__ + ": "
                print("FAIL %-14s %s%s" % (name, kind, e))
    print("%d of %d checks passed in %.1f s" % (len(CHECKS) - failures, len(CHECKS),
                                                time.monotonic() - started))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
