"""
A LLaMA written by hand, nanoGPT-style, that loads real Hugging Face weight folders: Llama, Mistral
(without a sliding window), Qwen2 (biases on q/k/v) and Qwen3 (RMSNorm on every query and key head).

Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...) and RoPE is the
rotate-half layout, so a checkpoint's state dict loads 1:1 with no renaming or permuting. GQA
(`num_key_value_heads`) is supported throughout. The seven projections of every block are plain
`nn.Linear`s so that xpert.py can hook them and wrap them with adapters; nothing here knows about
pruning. File formats (config checks, safetensors, the GGUF default model) live in fileio/.

    python model.py --prompt "The capital of France is" --max-new-tokens 20 --temperature 0
"""
import argparse
import math
import sys
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fileio.hf import ModelError, check_state_dict, load_state_dict, read_config_dict, save_folder
from fileio.tokenizer import Tokenizer  # noqa: F401  (re-exported: `from model import Tokenizer`)


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
    rope_scaling: Optional[dict] = None  # None or {"rope_type": "llama3" | "linear", ...}
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[object] = 2  # an int, or a list of ints (Llama 3)
    model_type: str = "llama"  # llama, mistral, qwen2 or qwen3: saved as is (transformers reads it)

    # The two ways Qwen differs from LLaMA follow from model_type, as in transformers (no config
    # key of their own), so a saved folder can never say one thing and hold another.
    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2"  # Qwen2/2.5: biases on q, k and v (never on o)

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "qwen3"  # Qwen3: RMSNorm over head_dim on each query and key head

    def __post_init__(self):
        self.num_key_value_heads = self.num_key_value_heads or self.num_attention_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"{self.num_attention_heads} query heads do not group evenly over "
                             f"{self.num_key_value_heads} KV heads")

    @classmethod
    def from_dict(cls, d: dict, where="config.json") -> "LlamaConfig":
        """From a config.json dict already checked by fileio.hf (unknown keys are ignored)."""
        try:
            return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
        except (TypeError, ValueError, ZeroDivisionError) as e:
            raise ModelError(f"{where}: invalid LLaMA config ({e})")

    def to_dict(self) -> dict:
        """The Hugging Face config.json (legacy rope keys: all transformers versions read them)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        arch = ARCHITECTURES.get(self.model_type, "LlamaForCausalLM")
        d.update(architectures=[arch], hidden_act="silu", mlp_bias=False)
        if self.model_type != "qwen2":  # Qwen2Config has no such key: its q/k/v biases are implied
            d["attention_bias"] = False
        return d


# "architectures" of each family's folders (a mistral has always been saved as LlamaForCausalLM)
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


# -----------------------------------------------------------------------------
# The model

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32, cast back before the gain, exactly as Hugging Face (bf16 parity)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies of rotary embedding, with llama3 / linear scaling when configured."""
    hd = cfg.head_dim
    dims = torch.arange(0, hd, 2, dtype=torch.int64, device="cpu").float()  # (hd/2,)
    inv = 1.0 / (cfg.rope_theta ** (dims / hd))  # (hd/2,)
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
    """Rotate-half RoPE, x (B, H, T, hd), cos/sin (T, hd): x*cos + rotate_half(x)*sin, as Hugging
    Face. rotate_half(x) = cat(-x2, x1) equals roll(x, hd/2) with its first half negated, so we fold
    that sign into sin: same numbers bit for bit, one cheap roll instead of chunk + neg + cat over
    the whole of x."""
    h = x.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)  # (T, hd), tiny
    return x * cos + x.roll(h, dims=-1) * sin_signed


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if self.qk_norm:  # Qwen3: one gain over head_dim shared by all heads (HF: q_norm, k_norm)
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        if self.qk_norm:  # every query and key head normalised over its hd dims, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)  # (B, H, T, hd), (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:  # cache = [k, v] of earlier positions, extended in place
            if cache[0] is not None:
                past = cache[0].shape[2]
                k = torch.cat([cache[0], k], 2)  # (B, Hkv, past+T, hd)
                v = torch.cat([cache[1], v], 2)  # (B, Hkv, past+T, hd)
            cache[0], cache[1] = k, v
        # GQA: every KV head serves n_head // n_kv consecutive query heads; SDPA's enable_gqa does
        # that grouping itself, without materialising repeated K/V (as HF's repeat_kv does)
        gqa = self.n_kv != self.n_head
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1,
                                               enable_gqa=gqa)  # (B, H, T, hd)
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


# the seven adapted projections of a block, by their Hugging Face names (docs/paper.md §2)
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
        self.inv_freq = rope_inv_freq(cfg)  # a plain tensor, not a buffer: derived, never saved
        self.source_dir = None  # the folder we were loaded from (for its tokenizer files)

    def rope(self, start, T, device, dtype):
        """cos, sin of positions start..start+T-1, each (T, head_dim); in float32 like HF."""
        pos = torch.arange(start, start + T, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def embed(self, idx, start=0):
        """Token embeddings and the rotary tables: the inputs of block 0 (xpert.py drives the
        blocks itself)."""
        x = self.model.embed_tokens(idx)  # (B, T, d)
        cos, sin = self.rope(start, idx.shape[1], idx.device, x.dtype)
        return x, cos, sin

    def head(self, x):
        return self.lm_head(self.model.norm(x))  # (B, T, vocab)

    def forward(self, idx, targets=None, caches=None, start=0):
        """idx (B, T) token ids -> logits (B, T, vocab); with targets (B, T), also the mean
        cross-entropy (targets of -100 are ignored)."""
        x, cos, sin = self.embed(idx, start)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, None if caches is None else caches[i])
        logits = self.head(x)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.0, top_k=None, eos_token_id=None,
                 use_cache=True):
        """Continue idx (B, T). temperature 0 = greedy. Stops early once every row produced eos."""
        caches = [[None, None] for _ in self.model.layers] if use_cache else None
        eos = [eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or [])
        eos = list(dict.fromkeys(eos))
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
            if eos:  # a finished row keeps emitting eos (as transformers pads), not any token
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
    # Hugging Face folders in and out (the formats themselves: fileio/hf.py)

    @classmethod
    def from_pretrained(cls, path=None, device="cpu", dtype=torch.float32) -> "LLaMA":
        """Load a Hugging Face Llama/Mistral/Qwen2/Qwen3 folder, asserting every key and shape;
        no path = the default model."""
        if path is None:
            from fileio.gguf_convert import default_model_dir  # SmolLM2-135M, from its GGUF once
            path = default_model_dir()
        path = str(path)
        cfg = LlamaConfig.from_dict(read_config_dict(path), where=f"{path}/config.json")
        sd = load_state_dict(path)
        with torch.device("meta"):  # no memory for random init: the checkpoint fills every tensor
            model = cls(cfg)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            expected.pop("lm_head.weight")
            sd.pop("lm_head.weight", None)  # some tied checkpoints store the copy too
        sd = {k: v for k, v in sd.items()
              if not k.endswith("rotary_emb.inv_freq")}  # derived, never loaded
        check_state_dict(sd, expected, path)  # keys and shapes as config.json says, weights finite
        model.load_state_dict({k: sd[k].to(device=device, dtype=dtype) for k in expected},
                              strict=not cfg.tie_word_embeddings, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight  # assign= broke the tie: restore
        model.source_dir = path
        return model.eval()

    def save_pretrained(self, path, tokenizer_dir=None):
        """A Hugging Face folder that transformers loads unchanged, written atomically."""
        sd = self.state_dict()
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight")
        dtype = str(next(iter(sd.values())).dtype).replace("torch.", "")
        cfg = dict(self.config.to_dict(), torch_dtype=dtype)
        save_folder(path, cfg, sd, tokenizer_dir or self.source_dir)


# -----------------------------------------------------------------------------
# Command line: continue a prompt

def main(argv=None):
    p = argparse.ArgumentParser(
        description="Continue a prompt with a LLaMA (default: SmolLM2-135M-Instruct).")
    p.add_argument("--model", default=None,
                   help="Hugging Face Llama folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", default="Once upon a time")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--seed", type=int, default=1337)
    args = p.parse_args(argv)
    try:
        if not (args.max_new_tokens >= 0 and 0 <= args.temperature < float("inf")
                and (args.top_k is None or args.top_k >= 1)):
            raise ValueError("--max-new-tokens and --temperature must be >= 0 and finite, "
                             "--top-k >= 1")
        try:  # bytes that are not UTF-8 arrive as lone surrogates (PEP 383): no tokenizer takes
            args.prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            byte = ord(args.prompt[e.start]) & 0xFF
            raise ValueError(f"--prompt is not UTF-8 text (byte 0x{byte:02x} at character "
                             f"{e.start}); pass it in UTF-8")
        from fileio.paths import device_dtype
        device, _ = device_dtype(args.device, args.dtype)
        model = LLaMA.from_pretrained(args.model, device=device, dtype=getattr(torch, args.dtype))
        tok = Tokenizer(model.source_dir)
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    ids = tok.encode(args.prompt) or ([tok.bos_id] if tok.bos_id is not None else [])
    if not ids:
        print("error: empty prompt and the tokenizer has no BOS token to start from",
              file=sys.stderr)
        return 2
    if len(ids) + args.max_new_tokens > model.config.max_position_embeddings:
        print(f"warning: prompt + new tokens = {len(ids) + args.max_new_tokens} is beyond the "
              f"model's context ({model.config.max_position_embeddings} positions): the output "
              "there means little", file=sys.stderr)
    out = model.generate(torch.tensor([ids], device=device), args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, eos_token_id=tok.eos_ids)
    print(tok.decode(out[0].tolist()))  # the prompt and its continuation, as one text
    return 0


if __name__ == "__main__":
    sys.exit(main())
