"""
A LLaMA written by hand, nanoGPT-style, that loads real Hugging Face weight folders.

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...) and RoPE is the
rotate-half layout, so a checkpoint's state dict loads 1:1 with no renaming or permuting. GQA
(`num_key_value_heads`) is supported throughout. The seven projections of every block are plain
`nn.Linear`s so that xpert.py can hook them and wrap them with adapters; nothing here knows about
pruning.

    python model.py --prompt "The capital of France is" --max-new-tokens 20 --temperature 0
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelError(Exception):
    """A problem with a model folder, reported to the user as one line (no traceback)."""


# -----------------------------------------------------------------------------
# Config: filled from a Hugging Face config.json

LLAMA_COMPATIBLE = ("llama", "mistral")  # same tensors and maths; mistral's sliding window is not used


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None  # None = MHA (as many KV heads as query heads)
    head_dim: Optional[int] = None  # None = hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # None, {"rope_type": "llama3", ...} or {"rope_type": "linear", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[object] = 2  # an int, or a list of ints (Llama 3)
    model_type: str = "llama"

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        assert self.num_attention_heads % self.num_key_value_heads == 0, "query heads must group evenly over KV heads"

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "LlamaConfig":
        mt = d.get("model_type")
        if mt not in LLAMA_COMPATIBLE:
            raise ModelError(f"{where}: model_type {mt!r} is not LLaMA-compatible (supported: {', '.join(LLAMA_COMPATIBLE)})")
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ModelError(f"{where}: attention_bias/mlp_bias are not supported (LLaMA has no biases)")
        if d.get("hidden_act", "silu") != "silu":
            raise ModelError(f"{where}: hidden_act {d['hidden_act']!r} is not supported (LLaMA uses silu)")
        d = dict(d)
        # transformers >= 5 writes rope_theta and the scaling dict together as "rope_parameters"
        rp = d.pop("rope_parameters", None)
        if rp:
            d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
            if rp.get("rope_type", rp.get("type", "default")) != "default":
                d.setdefault("rope_scaling", rp)
        names = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        rs = cfg.rope_scaling
        if rs is not None and rs.get("rope_type", rs.get("type")) not in ("llama3", "linear", "default"):
            raise ModelError(f"{where}: rope_scaling type {rs.get('rope_type', rs.get('type'))!r} is not supported (llama3, linear)")
        return cfg

    def to_dict(self) -> dict:
        """The Hugging Face config.json (legacy rope keys: every transformers version reads them)."""
        d = {k: getattr(self, k) for k in (f.name for f in fields(self))}
        d.update(architectures=["LlamaForCausalLM"], hidden_act="silu", attention_bias=False, mlp_bias=False,
                 torch_dtype="float32")
        return d


# -----------------------------------------------------------------------------
# The model

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32 and cast back before the gain, exactly as Hugging Face does (bf16 parity)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies of rotary embedding, with llama3 / linear scaling when configured."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device="cpu").float() / hd))  # (hd/2,)
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "linear":
        inv = inv / rs["factor"]  # positions divided by factor == frequencies divided by factor
    elif kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly in between
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old_ctx / lo, inv / factor, inv)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / hi) & (wavelen <= old_ctx / lo)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        q = q * cos + rotate_half(q) * sin  # rotate-half RoPE: the Hugging Face layout
        k = k * cos + rotate_half(k) * sin
        past = 0
        if cache is not None:  # cache = [k, v] of earlier positions, extended in place
            if cache[0] is not None:
                past = cache[0].shape[2]
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (B, Hkv, past+T, hd)
            cache[0], cache[1] = k, v
        if self.n_kv != self.n_head:  # GQA: every KV head serves n_head // n_kv consecutive query heads
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)  # (B, H, S, hd)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:  # new tokens see all cached positions and the causal part of themselves
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)  # (B, T, H*hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Holds what Hugging Face keeps under `model.`: embeddings, blocks, final norm."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# the seven adapted projections of a block, by their Hugging Face names (PAPER.md §2)
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class LLaMA(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.inv_freq = rope_inv_freq(cfg)  # a plain tensor, not a buffer: it is derived, never saved
        self.source_dir = None  # the folder we were loaded from (for its tokenizer files)

    def rope(self, start, T, device, dtype):
        """cos, sin of positions start..start+T-1, each (T, head_dim); computed in float32 like HF."""
        pos = torch.arange(start, start + T, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def embed(self, idx, start=0):
        """Token embeddings and the rotary tables: the inputs of block 0 (xpert.py drives blocks itself)."""
        x = self.model.embed_tokens(idx)  # (B, T, d)
        cos, sin = self.rope(start, idx.shape[1], idx.device, x.dtype)
        return x, cos, sin

    def head(self, x):
        return self.lm_head(self.model.norm(x))  # (B, T, vocab)

    def forward(self, idx, targets=None, caches=None, start=0):
        """idx (B, T) token ids -> logits (B, T, vocab); with targets (B, T), also the mean cross-entropy
        (targets of -100 are ignored)."""
        x, cos, sin = self.embed(idx, start)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, None if caches is None else caches[i])
        logits = self.head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, eos_token_id=None, use_cache=True):
        """Continue idx (B, T). temperature 0 = greedy. Stops early when every row has produced eos."""
        caches = [[None, None] for _ in self.model.layers] if use_cache else None
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        inp, start = idx, 0
        for _ in range(max_new_tokens):
            logits = self(inp, caches=caches, start=start)[:, -1, :].float()  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
            idx = torch.cat([idx, nxt], dim=1)
            if use_cache:
                start += inp.shape[1]
                inp = nxt
            else:
                inp = idx
            done |= torch.tensor([t in eos for t in nxt[:, 0].tolist()], device=idx.device)
            if done.all():
                break
        return idx

    # -------------------------------------------------------------------------
    # Hugging Face folders in and out

    @classmethod
    def from_pretrained(cls, path=None, device="cpu", dtype=torch.float32) -> "LLaMA":
        """Load a Hugging Face Llama folder; with no path, the default model (SmolLM2-135M-Instruct)."""
        path = default_model_dir() if path is None else str(path)
        cfg = read_config(path)
        sd = load_state_dict(path)
        with torch.device("meta"):  # no memory for random init: the checkpoint fills every tensor
            model = cls(cfg)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            expected.pop("lm_head.weight")
            sd.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(k for k in set(sd) - set(expected) if not k.endswith("rotary_emb.inv_freq"))
        shapes = [f"{k} {tuple(sd[k].shape)} (expected {expected[k]})" for k in sorted(expected)
                  if k in sd and tuple(sd[k].shape) != expected[k]]
        problems = ([f"missing: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) \
            + ([f"unexpected: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"] if unexpected else []) \
            + ([f"mis-shaped: {'; '.join(shapes[:5])}"] if shapes else [])
        if problems:
            raise ModelError(f"{path}: checkpoint does not match config.json: " + " | ".join(problems))
        sd = {k: sd[k].to(device=device, dtype=dtype) for k in expected}
        model.load_state_dict(sd, strict=not cfg.tie_word_embeddings, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight  # assign= broke the tie: restore it
        model.source_dir = path
        return model.eval()

    def save_pretrained(self, path, tokenizer_dir=None):
        """Write a Hugging Face folder (config.json, model.safetensors, tokenizer files) atomically:
        everything goes to a temporary folder that is renamed into place only when complete."""
        path = os.path.abspath(path)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=parent)
        try:
            sd = self.state_dict()
            if self.config.tie_word_embeddings:
                sd.pop("lm_head.weight")
            dtype = next(iter(sd.values())).dtype
            cfg = self.config.to_dict()
            cfg["torch_dtype"] = str(dtype).replace("torch.", "")
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(cfg, f, indent=2)
            write_safetensors(os.path.join(tmp, "model.safetensors"), sd)
            src = tokenizer_dir or self.source_dir
            for name in TOKENIZER_FILES:
                if src and os.path.exists(os.path.join(src, name)):
                    shutil.copy(os.path.join(src, name), os.path.join(tmp, name))
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def read_config(path) -> LlamaConfig:
    if not os.path.isdir(path):
        raise ModelError(f"model folder not found: {path}")
    cf = os.path.join(path, "config.json")
    if not os.path.exists(cf):
        raise ModelError(f"{path}: no config.json (is this a Hugging Face model folder?)")
    try:
        with open(cf) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ModelError(f"{cf}: not valid JSON ({e})")
    return LlamaConfig.from_dict(d, where=cf)


# -----------------------------------------------------------------------------
# safetensors, read and written by hand: 8-byte little-endian header length, JSON header, raw bytes

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(file) -> dict:
    with open(file, "rb") as f:
        raw = f.read()  # one read; tensors below are views into this buffer, then copied by .to()/clone
    try:
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
    except Exception:
        raise ModelError(f"{file}: not a safetensors file (bad header)")
    out, base = {}, 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in ST_DTYPES:
            raise ModelError(f"{file}: tensor {name} has dtype {info['dtype']} (supported: F32, F16, BF16)")
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(raw[base + a:base + b]), dtype=ST_DTYPES[info["dtype"]]) if b > a \
            else torch.empty(0, dtype=ST_DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out


def write_safetensors(file, tensors: dict):
    names = {v: k for k, v in ST_DTYPES.items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned, as the format recommends
    with open(file, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for t in tensors.values():
            f.write(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def load_state_dict(path) -> dict:
    """All tensors of a folder: model.safetensors, sharded safetensors, or (sharded) pytorch_model.bin."""
    for index, single, reader in (("model.safetensors.index.json", "model.safetensors", read_safetensors),
                                  ("pytorch_model.bin.index.json", "pytorch_model.bin", read_bin)):
        if os.path.exists(os.path.join(path, index)):
            with open(os.path.join(path, index)) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            sd = {}
            for name in files:
                if not os.path.exists(os.path.join(path, name)):
                    raise ModelError(f"{path}: shard {name} named in {index} is missing")
                sd.update(reader(os.path.join(path, name)))
            return sd
        if os.path.exists(os.path.join(path, single)):
            return reader(os.path.join(path, single))
    raise ModelError(f"{path}: no weights file (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def read_bin(file) -> dict:
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ModelError(f"{file}: cannot read ({type(e).__name__}: {e})")


# -----------------------------------------------------------------------------
# Tokenizer: a sentencepiece tokenizer.model (Llama 1/2, Mistral, stories260K) or a tokenizer.json
# (Llama 3, SmolLM2) read with the `tokenizers` library. BOS/EOS come from the folder's config.

class Tokenizer:
    def __init__(self, path):
        path = str(path)
        cfg, tcfg = {}, {}
        for name, d in (("config.json", cfg), ("tokenizer_config.json", tcfg)):
            if os.path.exists(os.path.join(path, name)):
                with open(os.path.join(path, name)) as f:
                    d.update(json.load(f))
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            from tokenizers import Tokenizer as HFTokenizer
            self.kind, self.tok = "json", HFTokenizer.from_file(os.path.join(path, "tokenizer.json"))
            self.vocab_size = self.tok.get_vocab_size()
        elif os.path.exists(os.path.join(path, "tokenizer.model")):
            import sentencepiece as spm
            self.kind, self.tok = "sp", spm.SentencePieceProcessor(model_file=os.path.join(path, "tokenizer.model"))
            self.vocab_size = self.tok.get_piece_size()
        else:
            raise ModelError(f"{path}: no tokenizer.json or tokenizer.model")
        self.bos_id = cfg.get("bos_token_id")
        eos = cfg.get("eos_token_id")
        self.eos_id = eos[0] if isinstance(eos, list) else eos
        self.eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        # sentencepiece Llamas prepend BOS unless the folder says not to; a tokenizer.json carries its
        # own rule in its post-processor (as transformers applies it with add_special_tokens=True)
        self.add_bos = tcfg.get("add_bos_token", True) if self.kind == "sp" else None

    def encode(self, text, bos=True):
        """Token ids as transformers' tokenizer gives them (special tokens included when bos=True)."""
        if self.kind == "sp":
            ids = self.tok.encode(text)
            return ([self.bos_id] if bos and self.add_bos and self.bos_id is not None else []) + ids
        return self.tok.encode(text, add_special_tokens=bos).ids

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if self.kind == "sp":
            return self.tok.decode(ids)
        return self.tok.decode(ids, skip_special_tokens=True)
