"""
EfficientXpert, the method: LoRA fine-tuning of a LLaMA with pruning inside the same run.

Sections follow docs/paper.md in order and formulas cite it ("§4.2", "paper Eq. 2"); longer notes:
docs/method_notes.md. Only the method lives here:

    §3  activation capture (forward hooks, block by block)      Capture, sequential_blocks
    §3  masked LoRA (frozen W, mask M, adapter B·A, the fold)   LoRALinear, add_lora, merge_lora
    §4  ForeSight: consumer energies, Eq. 2, EMA, selection     consumer_energy, foresight_scores,
                                                                ema, select_mask
    §5  the update at an event: PBS (two readings), SparseGPT   pbs_output, pbs_diag, UPDATES
    §3  the prune event and its options                         PruneConfig, prune_event
    §6  one-shot baselines: magnitude, Wanda, SparseGPT         prune_oneshot, sparsegpt_prune
        sparsity measured from the weights                      sparsity_report

Layout (§2): y = x Wᵀ with W (m outputs × n inputs); LoRA B (m×r), A (r×n), s = α/r;
U = W + s·B·A; mask M (True = keep); X (N tokens × n) calibration inputs, ‖X_c‖² column energy,
H = XᵀX.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from model import PROJECTIONS


def get_sub(module, dotted):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def set_sub(module, dotted, new):
    parent, _, leaf = dotted.rpartition(".")
    setattr(get_sub(module, parent) if parent else module, leaf, new)


def layer_name(b, proj):
    """A projection's state-dict name without '.weight': model.layers.3.mlp.down_proj."""
    return f"model.layers.{b}.{proj}"


def _f32(t):
    """At least float32: bf16/fp16 weights are scored and folded in float32, float64 stays."""
    return t if t.dtype == torch.float64 else t.float()


def _to_host(t, buf=None):
    """t in host memory: the EMA state between events (4 B a weight; on the GPU it would cost
    LoRA's memory twice over at 7B). From CUDA into reused page-locked memory: a pageable copy
    runs at a few GB/s."""
    if t.device.type != "cuda":
        return t.cpu()
    if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or not buf.is_pinned():
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return buf.copy_(t)


# -----------------------------------------------------------------------------
# §3 — activation capture

# q/k/v read one tensor and gate/up another: four hooked inputs feed the seven projections.
INPUT_OF = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
            "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
            "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj",
            "mlp.down_proj": "mlp.down_proj"}


class InputStats:
    """Float32 running statistics of the input X (N×n) of one projection over calibration
    batches."""

    def __init__(self, n, gram, device):
        self.n_tokens = 0
        self.energy = torch.zeros(n, dtype=torch.float32, device=device)  # (n,) ‖X_c‖²
        self.gram = torch.zeros(n, n, dtype=torch.float32, device=device) if gram else None

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, n)
        self.n_tokens += x.shape[0]
        self.energy += x.pow(2).sum(0)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)  # (n, n) H = XᵀX

    @property
    def rms(self):
        """g_c = RMS activation of column c (§5.2)."""
        return (self.energy / max(self.n_tokens, 1)).sqrt()


class Capture:
    """`with Capture(block, gram=True) as cap: block(x, cos, sin)` hooks the block's projections
    into cap.stats[proj] (InputStats); the hooks go on leaving, also when the forward raised."""

    def __init__(self, block, gram=False):
        self.block, self.gram, self.handles, self.stats = block, gram, [], {}

    def __enter__(self):
        try:
            by_input = {}
            for src in dict.fromkeys(INPUT_OF.values()):
                mod = get_sub(self.block, src)
                st = by_input[src] = InputStats(mod.weight.shape[1], self.gram, mod.weight.device)
                hook = (lambda m, inp, out, st=st: st.add(inp[0]))
                self.handles.append(mod.register_forward_hook(hook))
            self.stats = {name: by_input[src] for name, src in INPUT_OF.items()}
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return False  # never swallow the exception

    def all_reduce(self):
        """Data parallel (train.py under torchrun): each rank captured its share of the calibration
        windows; ‖X_c‖², XᵀX and the token counts are sums over tokens, so their sums over ranks are
        the whole set's statistics, the same on every rank. In place, tensor by tensor: packing
        them into one buffer would copy every Gram (docs/fsdp.md)."""
        uniq = list(dict.fromkeys(self.stats.values()))  # four inputs feed the seven projections
        for st in uniq:
            for t in (st.energy, st.gram):
                if t is not None:
                    dist.all_reduce(t)
        n = torch.tensor([st.n_tokens for st in uniq], device=uniq[0].energy.device)  # int64
        dist.all_reduce(n)
        for st, v in zip(uniq, n.tolist()):
            st.n_tokens = v


def sequential_blocks(model, calib_ids, batch_size=8, gram=False, desc=None):
    """Yields (b, block, stats) block by block (§3, sequential as in Wanda/SparseGPT): block b+1 is
    captured on what block b computes once the caller has pruned it (docs/method_notes.md).
    desc: a progress bar's label (None: no bar)."""
    device = model.lm_head.weight.device
    with torch.no_grad():
        xs = []
        for ids in calib_ids.to(device).split(batch_size):
            x, cos, sin = model.embed(ids)  # (b, T, d); all batches share T: one rotary table
            xs.append(x)
    for b, block in enumerate(tqdm(model.model.layers, desc=desc, disable=desc is None)):
        with torch.no_grad(), Capture(block, gram) as cap:
            for x in xs:
                block(x, cos, sin)
        if dist.is_available() and dist.is_initialized():  # the block's statistics are complete
            cap.all_reduce()
        yield b, block, cap.stats
        cap.stats.clear()  # free block b's energies and Grams before block b+1 forms its own
        with torch.no_grad():
            for i, x in enumerate(xs):  # in place: one batch's hidden states exist twice at a time
                xs[i] = block(x, cos, sin)


# -----------------------------------------------------------------------------
# §3 — masked LoRA
#
# Invariant: W ⊙ M = W (the frozen base is zero wherever the mask is 0); every writer of a mask
# keeps it, so the masked forward computes (W + s·B·A) ⊙ M as W + (s·B·A) ⊙ M. Adapters are
# float32 (float64 over float64) whatever the base's dtype, as PEFT. docs/method_notes.md.


class _MaskedLoRAFn(torch.autograd.Function):
    """y = x·((W + s·B·A) ⊙ M)ᵀ (§3) as ONE matmul, adapter gradients by hand so that no m×n
    tensor is kept for backward: G = dYᵀ·X, dA = s·Bᵀ·(G ⊙ M), dB = s·(G ⊙ M)·Aᵀ."""

    @staticmethod
    def merged(W, A, B, M, s):
        """W + (s·B·A) ⊙ M (m×n), summed in the adapter dtype and rounded once into W's dtype."""
        U = torch.addmm(W.to(A.dtype), B, A, alpha=s)  # (m, n) U; W ⊙ M = W: masking U masks s·B·A
        return U.mul_(M).to(W.dtype)  # (m, n)

    @staticmethod
    def forward(ctx, x, W, A, B, M, s):
        ctx.s = s
        ctx.save_for_backward(x, W, A, B, M)  # references to existing tensors: nothing m×n is new
        return F.linear(x, _MaskedLoRAFn.merged(W, A, B, M, s))  # (..., m); the merged weight dies

    @staticmethod
    def backward(ctx, dy):
        (x, W, A, B, M), s = ctx.saved_tensors, ctx.s
        dx = None
        if ctx.needs_input_grad[0]:  # not for block 0's q/k/v, whose input is the frozen embedding
            dx = dy @ _MaskedLoRAFn.merged(W, A, B, M, s)  # (..., n)
        # G in the adapter dtype from the start (as PEFT): a bf16 product would carry bf16's 2e-3
        dy2 = dy.reshape(-1, dy.shape[-1]).to(A.dtype)  # (N, m)
        x2 = x.reshape(-1, x.shape[-1]).to(A.dtype)  # (N, n)
        G = (dy2.T @ x2).mul_(M)  # (m, n) G ⊙ M: the merged weight's gradient at kept positions
        return dx, None, s * (B.T @ G), s * (G @ A.T), None, None  # dA (r, n), dB (m, r)


class LoRALinear(nn.Module):
    """Frozen W, mask M and LoRA adapter (B, A) (§2-3): plain LoRA while nothing is pruned, else
    exactly y = x·((W + s·B·A) ⊙ M)ᵀ (_MaskedLoRAFn, no dropout). Requires W ⊙ M = W. A bias
    (Qwen2's q/k/v) stays frozen and is never masked: U, the mask and the fold are weights only."""

    def __init__(self, base: nn.Linear, rank=8, alpha=16, dropout=0.05, mask=None):
        super().__init__()
        m, n = base.weight.shape
        self.in_features, self.out_features, self.rank = n, m, rank
        self.scale = alpha / rank  # s = α/r
        self.weight = base.weight.requires_grad_(False)  # same Parameter: the key stays "...weight"
        bias = None if base.bias is None else base.bias.requires_grad_(False)
        self.register_parameter("bias", bias)  # None, or the same Parameter: "...bias" stays
        dev, dt = self.weight.device, _f32(self.weight).dtype  # adapters: float32 (or float64)
        mask = torch.ones(m, n, dtype=torch.bool) if mask is None else mask
        mask = mask.to(dev, torch.bool)
        assert mask.shape == (m, n), f"mask {tuple(mask.shape)} does not match weight {(m, n)}"
        self.register_buffer("mask", mask)
        self.lora_A = nn.Parameter(torch.empty(rank, n, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.empty(m, rank, device=dev, dtype=dt))
        self.dropout = nn.Dropout(dropout)
        self.reset_adapter()

    @torch.no_grad()
    def reset_adapter(self, A=None):
        """A ← kaiming-uniform (as LoRA/PEFT) or the given A; B ← 0. In place: the optimizer's
        references stay valid."""
        if A is None:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            self.lora_A.copy_(A)
        self.lora_B.zero_()

    def U(self):
        """U = W + s·B·A (§2), unmasked, in float32 (float64 over float64): what ForeSight scores
        (§4.4 (1)) and what the fold starts from."""
        W, A, B = (_f32(t) for t in (self.weight, self.lora_A, self.lora_B))
        return W + self.scale * (B @ A)  # (m, n)

    def merged_weight(self):
        """(W + s·B·A) ⊙ M in float32: the weight the forward computes and merge_lora writes."""
        return self.U() * self.mask  # (m, n)

    def pruned(self):
        """Does the mask hold a zero? Cached on the buffer's identity and `_version`."""
        key = (self.mask.data_ptr(), self.mask._version)
        if getattr(self, "_pruned_key", None) != key:
            self._pruned_key, self._pruned = key, not bool(self.mask.all())
        return self._pruned

    def forward(self, x):
        if self.pruned():  # masked LoRA, exact, one matmul, no adapter dropout
            A, B = self.lora_A, self.lora_B
            y = _MaskedLoRAFn.apply(x, self.weight, A, B, self.mask, self.scale)  # (..., m)
            return y if self.bias is None else y + self.bias  # frozen: no gradient to form
        # plain LoRA: base in x's dtype, the adapter path in the adapter dtype, summed in place
        xa = self.dropout(x.to(self.lora_A.dtype))  # (..., n)
        lora = F.linear(F.linear(xa, self.lora_A), self.lora_B)  # (..., m)
        return F.linear(x, self.weight, self.bias).add_(lora, alpha=self.scale)

    @torch.no_grad()
    def fold(self, U=None, keep=None, A=None):
        """The fold (§3): W ← U ⊙ M (float32, rounded once), M ← keep, then A ← A (or kaiming)
        and B ← 0. Defaults U = W + s·B·A and the current mask; a prune event passes the updated
        U + ΔU and its new mask. Idempotent on the weights."""
        U = self.U() if U is None else U
        keep = self.mask if keep is None else keep
        self.weight.copy_((U * keep).to(self.weight.dtype))
        self.mask.copy_(keep)
        self.reset_adapter(A)

    def extra_repr(self):
        dt = str(self.lora_A.dtype).replace("torch.", "")
        return (f"in={self.in_features}, out={self.out_features}, r={self.rank}, s={self.scale:g}, "
                f"adapter={dt}, bias={self.bias is not None}, "
                f"kept={self.mask.float().mean().item():.3f}")


def lora_layers(model):
    """(name, LoRALinear) of every adapted projection, in block order."""
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            mod = get_sub(block, proj)
            if isinstance(mod, LoRALinear):
                yield layer_name(b, proj), mod


def add_lora(model, rank=8, alpha=16, dropout=0.05, masks=None):
    """Wrap the seven projections of every block in LoRALinear (in place; returns model); all
    else is frozen. masks: {layer_name: bool (m×n)}, e.g. Wanda's for Wanda→LoRA (§6)."""
    model.requires_grad_(False)
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            base = get_sub(block, proj)
            assert not isinstance(base, LoRALinear), f"{layer_name(b, proj)} already has an adapter"
            mask = None if masks is None else masks.get(layer_name(b, proj))
            set_sub(block, proj, LoRALinear(base, rank, alpha, dropout, mask))
    return model


def lora_parameters(model):
    """The adapter parameters (A and B of every LoRALinear), marked trainable."""
    mods = [mod for _, mod in lora_layers(model)]
    return [p.requires_grad_(True) for mod in mods for p in (mod.lora_A, mod.lora_B)]


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter and put plain nn.Linear back (the same weight and bias Parameters); the
    sparsity stays exact."""
    for name, mod in lora_layers(model):
        mod.fold()
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                        device="meta")
        lin.weight = mod.weight
        if mod.bias is not None:
            lin.bias = mod.bias
        set_sub(model, name, lin)
    return model


def effective_weight(mod):
    """A projection's unmasked effective weight in float32: U = W + s·B·A for a LoRALinear, W
    for a plain nn.Linear (a consumer's weight in §4.2)."""
    return mod.U() if isinstance(mod, LoRALinear) else _f32(mod.weight)


# -----------------------------------------------------------------------------
# §4 — ForeSight Mask

def foresight_scores(U, col_energy, e):
    """Paper Eq. 2 in PyTorch layout (§4): s[j, c] = U[j, c]² · ‖X_c‖² · e_j, with U (m×n),
    col_energy (n,) and e (m,) the consumers' energy of output j, or a squared factor (m, n) /
    (1, n) of the §4.4 (a) reading."""
    return U.pow(2) * col_energy[None, :] * (e[:, None] if e.dim() == 1 else e)


def _block_U(block):
    """{short projection name: U (m, n)} of a block's seven projections (§4.4 (1): unmasked)."""
    return {p.split(".")[-1]: effective_weight(get_sub(block, p)) for p in PROJECTIONS}


def consumer_energy(block, nxt, n_head, n_kv, head_dim):
    """{proj: e_j (m,) float32} of `block`'s seven projections: the §4.2 table with GQA, every
    consumer read through its unmasked U, as the scored layer (docs/paper.md §4.4 (1)).
    nxt: the next Block, or (final_norm, lm_head) after the last one."""
    U = _block_U(block)
    rep = n_head // n_kv  # query heads per KV group; KV head g serves heads g·rep ... g·rep+rep-1
    q_rows = U["q_proj"].pow(2).sum(1).view(n_head, head_dim)  # ‖U_q[h·hd+d, :]‖²
    k_rows = U["k_proj"].pow(2).sum(1).view(n_kv, head_dim)  # ‖U_k[g·hd+d, :]‖²
    o_cols = U["o_proj"].pow(2).sum(0).view(n_head, head_dim)  # ‖U_o[:, h·hd+d]‖²
    e_q = k_rows.repeat_interleave(rep, 0)  # (n_head, hd) k of the same group
    e_k = q_rows.view(n_kv, rep, head_dim).sum(1)  # (n_kv, hd) Σ q heads in g
    attn = block.self_attn
    if attn.qk_norm:  # Qwen3: q, k read through RMSNorm over hd: gains γ, 1/ρ² (docs/paper.md §4.2)
        gg = (_f32(attn.q_norm.weight) * _f32(attn.k_norm.weight)).pow(2)  # (hd,) (γ_q·γ_k)²
        rho_q = q_rows.mean(1, keepdim=True).clamp_min(1e-30)  # (n_head, 1) ρ² = ‖U_q,h‖²_F / hd
        rho_k = k_rows.mean(1, keepdim=True).clamp_min(1e-30)  # (n_kv, 1) (clamp: a zero head)
        e_q = gg * e_q / (rho_q * rho_k.repeat_interleave(rep, 0))
        e_k = gg * (q_rows / rho_q).view(n_kv, rep, head_dim).sum(1) / rho_k
    gamma2 = _f32(block.post_attention_layernorm.weight).pow(2)
    e = {"self_attn.q_proj": e_q.reshape(-1), "self_attn.k_proj": e_k.reshape(-1),
         "self_attn.v_proj": o_cols.view(n_kv, rep, head_dim).sum(1).reshape(-1),  # o of heads in g
         "self_attn.o_proj": gamma2 * (U["gate_proj"].pow(2).sum(0) + U["up_proj"].pow(2).sum(0))}
    e["mlp.gate_proj"] = e["mlp.up_proj"] = U["down_proj"].pow(2).sum(0)  # down_proj column j
    if isinstance(nxt, (tuple, list)):  # last block: final norm, then lm_head
        gamma, readers = nxt[0].weight, [_f32(nxt[1].weight)]
    else:  # the next block's q/k/v, through its input_layernorm
        gamma = nxt.input_layernorm.weight
        readers = [effective_weight(get_sub(nxt, p)) for p in PROJECTIONS[:3]]
    e["mlp.down_proj"] = _f32(gamma).pow(2) * sum(Wc.pow(2).sum(0) for Wc in readers)
    return e


def code_factors(block, nxt, n_head, n_kv, head_dim):
    """The authors' per-module propagation factors (§4.4 (a) table), *squared* so that they
    multiply Eq. 2's squared terms. Returns {proj: factor²}, each (m,), (m, n) or (1, n); nxt is
    unused (their factors stay inside the block)."""
    U = _block_U(block)
    rep, n = n_head // n_kv, U["q_proj"].shape[1]
    q_cols = U["q_proj"].pow(2).view(n_head, head_dim, n).sum(1)  # (n_head, n) per head, column c
    k_cols = U["k_proj"].pow(2).view(n_kv, head_dim, n).sum(1)  # (n_kv, n) per group, column c
    o_cols = U["o_proj"].pow(2).sum(0).view(n_kv, rep, head_dim)  # ‖U_o[:, h·hd+d]‖² by group
    gate, up = U["gate_proj"].pow(2).sum(0).sqrt(), U["up_proj"].pow(2).sum(0).sqrt()  # (n_o,)
    f = {"self_attn.q_proj": k_cols.repeat_interleave(rep * head_dim, 0),  # (m_q, n) K of h's group
         "self_attn.k_proj": q_cols.view(n_kv, rep, n).mean(1).repeat_interleave(head_dim, 0),
         "self_attn.v_proj": o_cols.mean(1).reshape(-1),  # (m_v,) RMS² over h∈g of o's columns
         "self_attn.o_proj": (0.5 * (gate + up)).pow(2)}
    f["mlp.gate_proj"] = f["mlp.up_proj"] = U["down_proj"].pow(2).sum(1)[None, :]  # row c of down
    f["mlp.down_proj"] = torch.ones(U["down_proj"].shape[0], device=U["down_proj"].device)  # Wanda²
    return f


FORESIGHT = {"eq2": consumer_energy, "code": code_factors}  # the literal Eq. 2 / §4.4 (a)


def ema(s_k, prev, eta):
    """§4.3: score_k = η·s_k + (1−η)·score_{k−1}; the first event (prev None) uses s_1 alone."""
    return s_k if prev is None else eta * s_k + (1 - eta) * prev.to(s_k.device)


def n_pruned(size, p):
    """How many of `size` weights sparsity p prunes: floor(p·size) (the 1e-6: 0.7·90 is
    62.99999999999999 in floating point)."""
    return int(math.floor(p * size + 1e-6))


def _prune_groups(scores, total):
    """Keep-mask for scores (G, S) pruning exactly `total` weights as evenly as possible over
    the G groups: each loses floor(total/G) lowest, the remainder one each where the next-lowest
    is smallest."""
    G, S = scores.shape
    k, extra = divmod(total, G)
    low = scores.topk(min(k + 1, S), dim=1, largest=False)  # (G, k+1) lowest per group, ascending
    keep = torch.ones(G, S, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, low.indices[:, :k], False)
    if extra:
        rows = low.values[:, k].topk(extra, largest=False).indices  # (extra,) lose one more
        keep[rows, low.indices[rows, k]] = False
    return keep


def _prune_bounded(scores, total, sparsity, delta):
    """Keep-mask for scores (G, S) pruning exactly `total` weights at the least total score,
    each group's count in [floor((p−δ)·S), ceil((p+δ)·S)] (§4.4 (b)); the greedy is optimal."""
    G, S = scores.shape
    lo = max(0, math.floor((sparsity - delta) * S + 1e-6))  # the 1e-6: float guards as n_pruned
    hi = min(S, math.ceil((sparsity + delta) * S - 1e-6))
    lo, hi = min(lo, total // G), max(hi, -(-total // G))  # the even share always fits
    order = scores.argsort(dim=1)  # (G, S) each group's scores, ascending
    keep = torch.ones(G, S, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order[:, :lo], False)
    extra = total - G * lo
    if extra:
        cand = scores.gather(1, order[:, lo:hi])  # (G, hi−lo) what a group may still lose
        pick = cand.reshape(-1).topk(extra, largest=False).indices  # the globally lowest
        rows = pick // (hi - lo)
        keep[rows, order[rows, lo + pick % (hi - lo)]] = False
    return keep


def _prune_nm(scores, nm):
    """Keep-mask pruning the N lowest of every M consecutive inputs of a row (nm = (N, M))."""
    (m, n), (N, M) = scores.shape, nm
    s = scores.reshape(m, n // M, M)  # (m, n/M, M)
    low = s.topk(N, dim=-1, largest=False).indices
    return torch.ones_like(s, dtype=torch.bool).scatter_(-1, low, False).reshape(m, n)


GROUPS = ("out", "in", "layer")  # §4.3: per output row (Wanda's), per input column, whole matrix


def select_mask(scores, sparsity, group="out", nm=None, delta=0.0):
    """Keep-mask (True = keep) pruning the lowest scores (§4.3): exactly floor(p·m·n) of them,
    per group (GROUPS); delta > 0 lets rows or columns range over [p−δ, p+δ] (§4.4 (b)); nm=(N, M)
    prunes N of every M consecutive inputs instead. Options are checked by PruneConfig."""
    if nm is not None:
        return _prune_nm(scores, nm)
    total = n_pruned(scores.numel(), sparsity)
    if group == "layer":
        return _prune_groups(scores.reshape(1, -1), total).reshape(scores.shape)
    S = scores if group == "out" else scores.t()  # groups are the rows of S
    keep = _prune_bounded(S, total, sparsity, delta) if delta > 0 else _prune_groups(S, total)
    return keep if group == "out" else keep.t()


# -----------------------------------------------------------------------------
# §5 — the update at a prune event: Partial Brain Surgeon, and the rules an event can apply
#
# λ (paper: 1e-8); lam_relative=True (default) scales it by the mean diagonal of each r×r
# system's Gram, so the solution does not depend on the scale of X and singular rows still solve.

PBS_CHUNK = 1 << 23  # pbs_output's rows per chunk: ~32 MB per (rows, r, n) float32 tensor


def _ridge(G, lam, relative):
    """G (…, r, r) float64 + λ_eff·I."""
    r = G.shape[-1]
    if relative:
        lam_eff = lam * G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)  # (…,)
    else:
        lam_eff = torch.full(G.shape[:-2], float(lam), dtype=G.dtype, device=G.device)
    return G + lam_eff[..., None, None] * torch.eye(r, dtype=G.dtype, device=G.device)


def pbs_output(D, A, M, H, s, lam=1e-8, lam_relative=True):
    """PBS, our reading (§5.1): ΔB (m×r) minimising ‖(s·(ΔB A) ⊙ M − D) Xᵀ‖²_F + λ‖ΔB‖²_F with
    D the change the fold makes (whole_change; R = U ⊙ (1−M) at a first event); one r×r system
    per row: (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K (H D_iᵀ)_K, in chunks of rows."""
    (m, n), r = D.shape, A.shape[0]
    dB = torch.zeros(m, r, dtype=torch.float64, device=D.device)
    chunk = max(1, PBS_CHUNK // (r * n))
    for i0 in range(0, m, chunk):
        i1 = min(i0 + chunk, m)
        AM = A[None] * M[i0:i1, None, :]  # (c, r, n): A with row i's pruned columns zeroed
        AMH = AM @ H  # (c, r, n)
        G = (s * s) * (AMH @ AM.transpose(1, 2))  # (c, r, r)
        rhs = s * (AMH @ D[i0:i1, :, None])  # (c, r, 1)
        dB[i0:i1] = torch.linalg.solve(_ridge(G.double(), lam, lam_relative), rhs.double())[..., 0]
    return dB.to(D.dtype)


def pbs_diag(D, A, g, s, lam=1e-8, lam_relative=True):
    """PBS as in the authors' code (§5.2), κ = 1: per row min_δ Σ_c g_c (d_ic + s·δ·a_c)² + λ‖δ‖²,
    g_c = RMS activation, D as in pbs_output (Ũ = U ⊙ (1−M) at a first event); one shared Gram:
    ΔB = −s·(D·diag(g)·Aᵀ)(s²·A·diag(g)·Aᵀ + λI)⁻¹."""
    AD = A * g[None, :]  # (r, n) A·diag(g)
    G = (s * s) * (AD @ A.T)  # (r, r)
    rhs = -s * (D @ AD.T)  # (m, r)
    dB = torch.linalg.solve(_ridge(G.double(), lam, lam_relative), rhs.double().T).T  # G symmetric
    return dB.to(D.dtype)


def pca_A(H, r):
    """§5.3 extension (a_init="pca"): A = the top-r eigenvectors of H = XᵀX, rows scaled to
    kaiming-uniform's expected norm 1/√3."""
    _, vecs = torch.linalg.eigh(H.double())  # ascending eigenvalues
    return (vecs[:, -r:].flip(-1).T / math.sqrt(3)).to(H.dtype)  # (r, n), largest first


class MaskChange(NamedTuple):
    """One matrix at a prune event: U = W + s·B·A (m×n), the mask the network computes with now
    (old) and the new one."""
    U: torch.Tensor
    old: torch.Tensor
    new: torch.Tensor

    def whole_change(self):
        """D = U ⊙ M_old − U ⊙ M_new = R − Rev (docs/paper.md §5.1 "Later events"): what folding
        with the new mask changes in the computed weight, the pruned weights (R) and the revived
        ones (Rev, which re-enter at their U)."""
        return self.U * self.old - self.U * self.new  # (m, n)


# An update rule gives ΔU (m×n): the event folds W ← (U + ΔU) ⊙ M_new. Every rule starts from the
# unmasked U, so a revived weight keeps its value, and compensates the whole change D.

def update_output(ch, A, stats, s, lam):
    """§5.1: ΔU = s·ΔB·A, ΔB from pbs_output on the layer's Gram."""
    return s * (pbs_output(ch.whole_change(), A, ch.new, stats.gram.to(A.dtype), s, lam) @ A)


def update_diag(ch, A, stats, s, lam):
    """§5.2: ΔU = s·ΔB·A, ΔB from pbs_diag on the RMS activations."""
    return s * (pbs_diag(ch.whole_change(), A, stats.rms.to(A.dtype), s, lam) @ A)


def update_sparsegpt(ch, A, stats, s, lam):
    """A measured variant (docs/paper.md §5.1): SparseGPT's full OBS update of the kept weights on
    the new mask, from what the network computes now (U ⊙ M_old), a revived weight entering at
    its U plus its update; A, s and λ are unused."""
    revived = ch.U * (ch.new & ~ch.old)  # (m, n) Rev
    W_new, _ = sparsegpt_prune(ch.U * ch.old, stats.gram, None, keep=ch.new, add=revived)
    return W_new - ch.U


UPDATES = {"output": update_output, "diag": update_diag, "sparsegpt": update_sparsegpt,
           "none": None}
NEEDS_GRAM = ("output", "sparsegpt")  # the rules that read H = XᵀX (the others: ‖X_c‖² alone)


# -----------------------------------------------------------------------------
# §3 — the prune event

@dataclass(frozen=True)
class PruneConfig:
    """The options of a prune event, with the paper's defaults (§3-5), checked once, here."""
    sparsity: float = 0.4  # p: the fraction of zeros in every adapted matrix
    group: str = "out"  # §4.3 selection group (GROUPS)
    nm: tuple = None  # (N, M): N of every M consecutive inputs pruned (then sparsity = N/M)
    delta: float = 0.0  # §4.4 (b): a group's pruned fraction may range over [p−δ, p+δ]
    foresight: str = "eq2"  # §4 reading (FORESIGHT): the literal Eq. 2, or the authors' code
    update: str = "output"  # §5 rule at the events before the last (UPDATES)
    ema: float = 0.5  # §4.3 η
    lam: float = 1e-8  # §5 PBS ridge λ, relative to each system's scale
    a_init: str = "adapter"  # §5.3: the A of the update and of the new adapter: trained, or pca
    batch_size: int = 8  # calibration sequences per forward

    def __post_init__(self):
        def check(name, ok, what):  # ValueError(field, message): train.py names the flag
            if not ok:
                raise ValueError(name, f"must be {what}, got {getattr(self, name)!r}")
        check("nm", self.nm is None or 0 < self.nm[0] < self.nm[1], "N:M with 0 < N < M")
        check("sparsity", 0.0 <= self.sparsity < 1.0, "in [0, 1)")  # comparisons with nan fail
        check("group", self.group in GROUPS, f"one of {', '.join(GROUPS)}")
        check("delta", 0.0 <= self.delta <= 1.0, "in [0, 1]")
        check("foresight", self.foresight in FORESIGHT, f"one of {', '.join(FORESIGHT)}")
        check("update", self.update in UPDATES, f"one of {', '.join(UPDATES)}")
        check("ema", 0.0 < self.ema <= 1.0, "in (0, 1]")
        check("lam", 0.0 <= self.lam < math.inf, "at least 0")
        check("a_init", self.a_init in ("adapter", "pca"), "adapter or pca")
        check("batch_size", self.batch_size >= 1, "at least 1")
        if self.nm is not None:
            check("sparsity", self.sparsity == self.nm[0] / self.nm[1], "N/M with nm")


def _next_reader(model, b):
    """What reads block b's output (§4.2): block b+1, or the final norm and lm_head."""
    layers = model.model.layers
    return layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)


def _update_A(lin, proj, stats, a_init, cache):
    """The A of the update and of the new adapter (§5.3): the trained A, or the top-r eigenvectors
    of H (q/k/v and gate/up share one H: one eigendecomposition for them, kept in cache)."""
    if a_init != "pca":
        return _f32(lin.lora_A)
    if INPUT_OF[proj] not in cache:
        cache[INPUT_OF[proj]] = pca_A(stats[proj].gram, lin.rank)
    return cache[INPUT_OF[proj]]


@torch.no_grad()
def prune_event(model, calib_ids, cfg, state=None, final=False, progress=True):
    """One prune event (§3), block by block: capture → e_j → U → Eq. 2 → EMA → mask → update →
    fold. calib_ids (N, T); cfg: PruneConfig; state: the last event's {'scores': {name: float32
    host tensor}, 'events': k} or None. final: no update (§3), exact zeros go first, so the model
    is exactly p-sparse. Returns the new state, with 'changed': {name: mask entries flipped}."""
    state = state or {"scores": {}, "events": 0}
    update = None if final else UPDATES[cfg.update]
    gram = update is not None and cfg.update in NEEDS_GRAM or cfg.a_init == "pca"
    mc, scores, changed = model.config, state["scores"], {}
    heads = (mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim)
    blocks = sequential_blocks(model, calib_ids, cfg.batch_size, gram,
                               desc=f"prune event {state['events'] + 1}" if progress else None)
    was_training = model.training
    model.eval()  # no adapter dropout while capturing
    try:
        for b, block, stats in blocks:
            e = FORESIGHT[cfg.foresight](block, _next_reader(model, b), *heads)  # §4.2 / §4.4 (a)
            plan, A_pca = {}, {}  # all seven masks from the block's weights before any changes
            for proj in PROJECTIONS:
                lin, name = get_sub(block, proj), layer_name(b, proj)
                U = lin.U()  # (m, n) §2, unmasked (§4.4 (1)): a pruned weight can come back
                score = ema(foresight_scores(U, stats[proj].energy, e[proj]), scores.get(name),
                            cfg.ema)  # (m, n) paper Eq. 2, then §4.3
                scores[name] = _to_host(score, scores.get(name))  # the old buffer takes the new
                if final:  # scores are ≥ 0: an exact zero of U goes before any live weight
                    score = score.masked_fill(U == 0, -1.0)
                keep = select_mask(score, cfg.sparsity, cfg.group, cfg.nm, cfg.delta)  # §4.3
                plan[proj] = MaskChange(U, lin.mask.clone(), keep)
            for proj, ch in plan.items():
                lin = get_sub(block, proj)
                changed[layer_name(b, proj)] = int((ch.new != ch.old).sum())
                if not changed[layer_name(b, proj)]:
                    continue  # the same mask: nothing to compensate, nothing to fold (§4.4 (1))
                A = _update_A(lin, proj, stats, cfg.a_init, A_pca)  # (r, n)
                dU = update(ch, A, stats[proj], lin.scale, cfg.lam) if update else 0.0  # §5
                lin.fold(ch.U + dU, ch.new, A if cfg.a_init == "pca" else None)  # §3
            del plan, stats  # nothing of block b outlives it (one block at a time)
    finally:
        model.train(was_training)
    state.update(events=state["events"] + 1, changed=changed)
    return state


# -----------------------------------------------------------------------------
# §6 — one-shot baselines on given weights

SPARSEGPT_BLOCKSIZE, SPARSEGPT_PERCDAMP = 128, 0.01  # SparseGPT's defaults (§6)


def sparsegpt_prune(W, H, sparsity, nm=None, keep=None, add=None):
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1) from the paper: prune W (m×n) column by column
    with OBS updates of the later columns, H = XᵀX, damping 1% of mean(diag H); exactly
    floor(p·m·n) zeros, or N:M with nm=(N, M). keep: a given mask (m×n bool) instead of its own
    selection, and add (m×n): values that enter at kept positions, compensated like the pruned
    ones (the revived weights of update_sparsegpt). Returns (Ŵ, keep mask), in W's dtype."""
    W, H = W.clone(), H.to(W.dtype).clone()
    m, n = W.shape
    dead = H.diagonal() == 0  # inputs that never fire: their weights are free to prune
    H[dead, dead] = 1
    if keep is None:
        W[:, dead] = 0
    H.diagonal().add_(SPARSEGPT_PERCDAMP * H.diagonal().mean())
    # upper Cholesky factor of H⁻¹: row i holds the OBS update for column i, columns < i done
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    given, keep = keep, torch.ones(m, n, dtype=torch.bool, device=W.device)
    add = torch.zeros_like(W) if add is None else add.to(W.dtype)
    done, bs = 0, SPARSEGPT_BLOCKSIZE  # done: pruned so far, floor(p·m·i2) after each block
    for i1 in range(0, n, bs):
        i2 = min(i1 + bs, n)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1, prune1 = torch.zeros_like(W1), torch.zeros_like(W1, dtype=torch.bool)
        if given is not None:
            prune1 = ~given[:, i1:i2]
        elif nm is None:
            err = W1.pow(2) / Hinv1.diagonal()[None, :].pow(2)  # OBS saliency w²/[H⁻¹]_cc²
            k = n_pruned(m * i2, sparsity) - done
            done += k
            prune1.view(-1)[err.reshape(-1).topk(k, largest=False).indices] = True
        for i in range(i2 - i1):
            if given is None and nm is not None and i % nm[1] == 0:
                N, M = nm
                err = W1[:, i:i + M].pow(2) / Hinv1.diagonal()[i:i + M][None, :].pow(2)
                prune1.scatter_(1, i + err.topk(N, dim=1, largest=False).indices, True)
            w, d = W1[:, i], Hinv1[i, i]
            q = torch.where(prune1[:, i], torch.zeros_like(w), w + add[:, i1 + i])  # (m,) new
            e1 = (w - q) / d
            W1[:, i:] -= e1[:, None] * Hinv1[i, i:][None, :]  # compensate the block's later columns
            W1[:, i], Err1[:, i] = q, e1
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the columns after the block
        keep[:, i1:i2] = ~prune1
    return W * keep, keep


ONESHOT = ("magnitude", "wanda", "sparsegpt")  # §6


@torch.no_grad()
def prune_oneshot(model, calib_ids, method, sparsity, nm=None, batch_size=8):
    """One-shot pruning of a plain model (nn.Linear; merge_lora first for LoRA→X) in place,
    sequential over blocks (§6): magnitude |W| or Wanda |W|·‖X_c‖ per output row (or N:M),
    exactly p-sparse, or SparseGPT on H = XᵀX. Returns {layer_name: keep mask, bool, CPU}."""
    masks, was_training = {}, model.training
    model.eval()
    if method == "magnitude":  # needs no data: no calibration forwards
        blocks = ((b, blk, None) for b, blk in enumerate(model.model.layers))
    else:
        blocks = sequential_blocks(model, calib_ids, batch_size, gram=method == "sparsegpt")
    try:
        for b, block, stats in blocks:
            for proj in PROJECTIONS:
                lin = get_sub(block, proj)
                assert type(lin) is nn.Linear, f"{layer_name(b, proj)}: merge_lora first"
                W = _f32(lin.weight)  # (m, n)
                if method == "sparsegpt":
                    W_new, keep = sparsegpt_prune(W, stats[proj].gram, sparsity, nm)
                else:
                    score = W.abs()  # (m, n) magnitude; Wanda: times ‖X_c‖
                    if method == "wanda":
                        score = score * stats[proj].energy.sqrt()[None, :]
                    keep = select_mask(score, sparsity, "out", nm)
                    W_new = W * keep
                lin.weight.copy_(W_new.to(lin.weight.dtype))
                masks[layer_name(b, proj)] = keep.cpu()
    finally:
        model.train(was_training)
    return masks


# -----------------------------------------------------------------------------
# Sparsity, measured from the weights

@torch.no_grad()
def sparsity_report(model):
    """Fraction of exact zeros of every adapted projection (a LoRALinear's merged weight, what
    merge_lora writes) and overall: {'layers': {name: fraction}, 'zeros', 'total', 'overall'}."""
    rep = {"layers": {}, "zeros": 0, "total": 0}
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            mod = get_sub(block, proj)
            W = mod.merged_weight() if isinstance(mod, LoRALinear) else mod.weight
            z = int((W == 0).sum())
            rep["layers"][layer_name(b, proj)] = z / W.numel()
            rep["zeros"] += z
            rep["total"] += W.numel()
    rep["overall"] = rep["zeros"] / max(rep["total"], 1)
    return rep
