"""
EfficientXpert, the method: LoRA fine-tuning of a LLaMA with pruning inside the same run.

Sections follow ../shared/PAPER.md in order and formulas cite it ("PAPER.md §4.2", "paper Eq. 2"); longer
notes: docs/method_notes.md. Only the method lives here:

    §3  activation capture (forward hooks, block by block)        Capture, sequential_blocks
    §3  masked LoRA (frozen W, mask M, adapter B·A, fold)          LoRALinear, add_lora, merge_lora
    §4  ForeSight Mask scores, consumer energies, selection, EMA   foresight_scores, consumer_energy, select_mask
    §5  Partial Brain Surgeon, both readings, PCA init of A        pbs_output, pbs_diag, pca_A
    §3  the prune event                                            prune_event
    §6  one-shot baselines: magnitude, Wanda, SparseGPT           prune_oneshot, sparsegpt_prune
        sparsity measured from the weights                        sparsity_report

Layout (PAPER.md §2): y = x Wᵀ with W (m outputs × n inputs); LoRA B (m×r), A (r×n), s = α/r;
U = W + s·B·A; mask M (True = keep); X (N tokens × n) calibration inputs, ‖X_c‖² column energy, H = XᵀX.
"""
import math

import torch
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
    """The name of a projection as in the state dict, without '.weight': model.layers.3.mlp.down_proj."""
    return f"model.layers.{b}.{proj}"


def _f32(t):
    """At least float32 (bf16/fp16 weights are scored and folded in float32; float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


def _to_host(t, buf=None):
    """t in host memory: the EMA state between events (4 B per weight; on the GPU it would cost LoRA's memory
    twice over at 7B). From CUDA into page-locked memory, `buf` reused: a pageable copy runs at a few GB/s."""
    if t.device.type != "cuda":
        return t.cpu()
    if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or not buf.is_pinned():
        buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return buf.copy_(t)


# -----------------------------------------------------------------------------
# PAPER.md §3 — activation capture

# q/k/v read one tensor and gate/up another: four hooked inputs feed the seven projections (3 fewer Grams).
INPUT_OF = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.k_proj": "self_attn.q_proj",
            "self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj",
            "mlp.gate_proj": "mlp.gate_proj", "mlp.up_proj": "mlp.gate_proj", "mlp.down_proj": "mlp.down_proj"}


class InputStats:
    """Float32 running statistics of the input X (N×n) of one projection over calibration batches."""

    def __init__(self, n, gram, device):
        self.n_tokens = 0
        self.energy = torch.zeros(n, dtype=torch.float32, device=device)  # ‖X_c‖² = Σ_t x_tc²
        self.gram = torch.zeros(n, n, dtype=torch.float32, device=device) if gram else None  # H = XᵀX

    def add(self, x):
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, n)
        self.n_tokens += x.shape[0]
        self.energy += x.pow(2).sum(0)
        if self.gram is not None:
            self.gram.addmm_(x.T, x)

    @property
    def rms(self):
        """g_c = RMS activation of column c (PAPER.md §5.2)."""
        return (self.energy / max(self.n_tokens, 1)).sqrt()


class Capture:
    """`with Capture(block, gram=True) as cap: block(x, cos, sin)` hooks the block's projections into
    cap.stats[proj] (InputStats); the hooks are removed on leaving, also when the forward raised."""

    def __init__(self, block, gram=False):
        self.block, self.gram, self.handles, self.stats = block, gram, [], {}

    def __enter__(self):
        try:
            by_input = {}
            for src in dict.fromkeys(INPUT_OF.values()):
                mod = get_sub(self.block, src)
                st = by_input[src] = InputStats(mod.weight.shape[1], self.gram, mod.weight.device)
                self.handles.append(mod.register_forward_hook(lambda m, inp, out, st=st: st.add(inp[0])))
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


def sequential_blocks(model, calib_ids, batch_size=8, gram=False, progress=False, desc="blocks"):
    """Yields (b, block, stats) block by block (PAPER.md §3, sequential as in Wanda/SparseGPT): block b+1
    is captured on what the block b the caller left (pruned) computes (docs/method_notes.md)."""
    device = model.lm_head.weight.device
    with torch.no_grad():
        xs = []
        for ids in calib_ids.to(device).split(batch_size):
            x, cos, sin = model.embed(ids)  # (b, T, d); all batches have the same T: one rotary table
            xs.append(x)
    for b, block in enumerate(tqdm(model.model.layers, desc=desc, disable=not progress)):
        with torch.no_grad(), Capture(block, gram) as cap:
            for x in xs:
                block(x, cos, sin)
        yield b, block, cap.stats
        cap.stats.clear()  # free block b's energies and Grams before block b+1 forms its own
        with torch.no_grad():
            for i, x in enumerate(xs):  # in place: only one batch's hidden states exist twice at a time
                xs[i] = block(x, cos, sin)


# -----------------------------------------------------------------------------
# PAPER.md §3 — masked LoRA
#
# Invariant: W ⊙ M = W (the frozen base is zero wherever the mask is 0); every writer of a mask keeps it,
# so the masked forward computes (W + s·B·A) ⊙ M as W + (s·B·A) ⊙ M. Adapters are float32 (float64 over
# float64) whatever the base's dtype, as PEFT. Both notes in full: docs/method_notes.md.


class _MaskedLoRAFn(torch.autograd.Function):
    """y = x·((W + s·B·A) ⊙ M)ᵀ (PAPER.md §3) as ONE matmul, adapter gradients by hand so that no m×n
    tensor is kept for backward: G = dYᵀ·X, dA = s·Bᵀ·(G ⊙ M), dB = s·(G ⊙ M)·Aᵀ (docs/method_notes.md)."""

    @staticmethod
    def merged(W, A, B, M, s):
        """W + (s·B·A) ⊙ M (m×n), summed in the adapter dtype and rounded once into W's dtype."""
        U = torch.addmm(W.to(A.dtype), B, A, alpha=s)  # (m, n) W + s·B·A; W ⊙ M = W, so masking U masks s·B·A
        return U.mul_(M).to(W.dtype)  # (m, n)

    @staticmethod
    def forward(ctx, x, W, A, B, M, s):
        ctx.s = s
        ctx.save_for_backward(x, W, A, B, M)  # x and references to existing tensors: nothing m×n is new
        return F.linear(x, _MaskedLoRAFn.merged(W, A, B, M, s))  # (..., m); the merged weight dies here

    @staticmethod
    def backward(ctx, dy):
        (x, W, A, B, M), s = ctx.saved_tensors, ctx.s
        dx = dy @ _MaskedLoRAFn.merged(W, A, B, M, s) if ctx.needs_input_grad[0] else None  # (..., n); not block 0's q/k/v
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])  # (N, m), (N, n)
        G = (dy2.T @ x2).to(A.dtype).mul_(M)  # (m, n) G ⊙ M: the merged weight's gradient at kept positions
        return dx, None, s * (B.T @ G), s * (G @ A.T), None, None  # dA (r, n), dB (m, r)


class LoRALinear(nn.Module):
    """Frozen W, mask M and LoRA adapter (B, A) (PAPER.md §2-3): plain LoRA while nothing is pruned, else exactly
    y = x·((W + s·B·A) ⊙ M)ᵀ (_MaskedLoRAFn, no dropout). Requires W ⊙ M = W (docs/method_notes.md)."""

    def __init__(self, base: nn.Linear, rank=8, alpha=16, dropout=0.05, mask=None):
        super().__init__()
        m, n = base.weight.shape
        self.in_features, self.out_features, self.rank = n, m, rank
        self.scale = alpha / rank  # s = α/r
        self.weight = base.weight.requires_grad_(False)  # same Parameter: the state-dict key stays "...q_proj.weight"
        dev, dt = self.weight.device, _f32(self.weight).dtype  # adapters: float32 (float64 over float64)
        mask = torch.ones(m, n, dtype=torch.bool, device=dev) if mask is None else mask.to(dev, torch.bool)
        assert mask.shape == (m, n), f"mask {tuple(mask.shape)} does not match weight {(m, n)}"
        self.register_buffer("mask", mask)
        self.lora_A = nn.Parameter(torch.empty(rank, n, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.empty(m, rank, device=dev, dtype=dt))
        self.dropout = nn.Dropout(dropout)
        self.reset_adapter()

    @torch.no_grad()
    def reset_adapter(self, A=None):
        """A ← kaiming-uniform (as LoRA/PEFT) or the given A; B ← 0. In place: optimizer references stay valid."""
        if A is None:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            self.lora_A.copy_(A)
        self.lora_B.zero_()

    def delta(self):
        """s·B·A (m×n) in the adapter dtype, the adapter's dense update."""
        return self.scale * (self.lora_B @ self.lora_A)

    def effective_weight(self):
        """(W + s·B·A) ⊙ M in float32 (float64 over float64): the weight the forward computes and fold() writes."""
        W, A, B = (_f32(t) for t in (self.weight, self.lora_A, self.lora_B))
        return (W + self.scale * (B @ A)) * self.mask  # (m, n)

    def pruned(self):
        """Does the mask hold a zero? Cached on the buffer's identity and `_version` (no m×n scan per call)."""
        key = (self.mask.data_ptr(), self.mask._version)
        if getattr(self, "_pruned_key", None) != key:
            self._pruned_key, self._pruned = key, not bool(self.mask.all())
        return self._pruned

    def forward(self, x):
        if self.pruned():  # masked LoRA, exact, one matmul, no adapter dropout
            return _MaskedLoRAFn.apply(x, self.weight, self.lora_A, self.lora_B, self.mask, self.scale)
        # plain LoRA: base in x's dtype, adapter path in the adapter dtype, summed in place into the base output
        xa = self.dropout(x.to(self.lora_A.dtype))  # (..., n)
        return F.linear(x, self.weight).add_(F.linear(F.linear(xa, self.lora_A), self.lora_B), alpha=self.scale)

    @torch.no_grad()
    def fold(self):
        """W ← (W + s·B·A) ⊙ M (in float32, rounded once); A re-initialised; B = 0 (PAPER.md §3). Idempotent."""
        self.weight.copy_(self.effective_weight().to(self.weight.dtype))
        self.reset_adapter()

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, r={self.rank}, s={self.scale:g}, "
                f"adapter={str(self.lora_A.dtype).replace('torch.', '')}, kept={self.mask.float().mean().item():.3f}")


def lora_layers(model):
    """(name, LoRALinear) of every adapted projection, in block order."""
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            mod = get_sub(block, proj)
            if isinstance(mod, LoRALinear):
                yield layer_name(b, proj), mod


def add_lora(model, rank=8, alpha=16, dropout=0.05, masks=None):
    """Wrap the seven projections of every block in LoRALinear (in place; returns model); all else is frozen.
    masks: optional {layer_name: bool (m×n)}, e.g. Wanda's for Wanda→LoRA (PAPER.md §6); W ⊙ M = W required."""
    model.requires_grad_(False)
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            base = get_sub(block, proj)
            assert not isinstance(base, LoRALinear), f"{layer_name(b, proj)} already has an adapter"
            mask = None if masks is None else masks.get(layer_name(b, proj))
            set_sub(block, proj, LoRALinear(base, rank, alpha, dropout, mask))
    return model


def lora_parameters(model):
    """The adapter parameters (A and B of every LoRALinear), marked trainable: what the optimizer gets."""
    return [p.requires_grad_(True) for _, mod in lora_layers(model) for p in (mod.lora_A, mod.lora_B)]


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter and put plain nn.Linear back (same frozen weight Parameter); sparsity stays exact."""
    for name, mod in lora_layers(model):
        mod.fold()
        lin = nn.Linear(mod.in_features, mod.out_features, bias=False, device="meta")
        lin.weight = mod.weight
        set_sub(model, name, lin)
    return model


def effective_weight(mod):
    """Float32 effective weight of a projection: (W + s·B·A) ⊙ M for LoRALinear, W for nn.Linear."""
    return mod.effective_weight() if isinstance(mod, LoRALinear) else _f32(mod.weight)


# -----------------------------------------------------------------------------
# PAPER.md §4 — ForeSight Mask

FORESIGHT = ("eq2", "code")  # the literal paper Eq. 2 (§4) / the authors' per-module factors (§4.4 (a))


def foresight_scores(U, col_energy, e):
    """Paper Eq. 2 in PyTorch layout (PAPER.md §4): s[j, c] = U[j, c]² · ‖X_c‖² · e_j, with U (m×n), col_energy
    (n,), e (m,) the consumers' energy of output j, or a squared factor (m, n) / (1, n) (docs/method_notes.md)."""
    return U.pow(2) * col_energy[None, :] * (e[:, None] if e.dim() == 1 else e)


def consumer_energy(block, nxt, n_head, n_kv, head_dim, foresight="eq2"):
    """{proj: e_j (m,) float32} of `block`'s seven projections (PAPER.md §4.2 table, GQA; our reading,
    docs/method_notes.md) on effective weights; nxt: the next Block, or (final_norm, lm_head). foresight="code": code_factors."""
    U = {p.split(".")[-1]: effective_weight(get_sub(block, p)) for p in PROJECTIONS}
    if foresight == "code":
        return code_factors(U, n_head, n_kv, head_dim)
    rep = n_head // n_kv  # query heads per KV group; KV head g serves heads g*rep ... g*rep+rep-1
    q_rows = U["q_proj"].pow(2).sum(1).view(n_head, head_dim)  # ‖U_q[h·hd+d, :]‖²
    k_rows = U["k_proj"].pow(2).sum(1).view(n_kv, head_dim)  # ‖U_k[g·hd+d, :]‖²
    o_cols = U["o_proj"].pow(2).sum(0).view(n_head, head_dim)  # ‖U_o[:, h·hd+d]‖²
    e = {"self_attn.q_proj": k_rows.repeat_interleave(rep, 0).reshape(-1),  # k of the same group, same dim
         "self_attn.k_proj": q_rows.view(n_kv, rep, head_dim).sum(1).reshape(-1),  # Σ over q heads in g
         "self_attn.v_proj": o_cols.view(n_kv, rep, head_dim).sum(1).reshape(-1),  # o columns of heads in g
         "self_attn.o_proj": _f32(block.post_attention_layernorm.weight).pow(2)
         * (U["gate_proj"].pow(2).sum(0) + U["up_proj"].pow(2).sum(0))}
    e["mlp.gate_proj"] = e["mlp.up_proj"] = U["down_proj"].pow(2).sum(0)  # down_proj column j
    if isinstance(nxt, (tuple, list)):  # last block: final norm, then lm_head
        gamma, readers = nxt[0].weight, [_f32(nxt[1].weight)]
    else:  # the next block's q/k/v, through its input_layernorm
        gamma, readers = nxt.input_layernorm.weight, [effective_weight(get_sub(nxt, p)) for p in PROJECTIONS[:3]]
    e["mlp.down_proj"] = _f32(gamma).pow(2) * sum(Wc.pow(2).sum(0) for Wc in readers)
    return e


def code_factors(U, n_head, n_kv, head_dim):
    """The authors' per-module propagation factors (PAPER.md §4.4 (a) table), *squared* (docs/method_notes.md).
    U: {short proj name: effective weight}. Returns {proj: factor²}, each (m,), (m, n) or (1, n)."""
    rep = n_head // n_kv
    n = U["q_proj"].shape[1]
    q_cols = U["q_proj"].pow(2).view(n_head, head_dim, n).sum(1)  # (n_head, n) ‖U_q[rows of head h, c]‖²
    k_cols = U["k_proj"].pow(2).view(n_kv, head_dim, n).sum(1)  # (n_kv, n) ‖U_k[rows of group g, c]‖²
    o_cols = U["o_proj"].pow(2).sum(0).view(n_kv, rep, head_dim)  # ‖U_o[:, h·hd+d]‖², heads by group
    f = {"self_attn.q_proj": k_cols.repeat_interleave(rep * head_dim, 0),  # (m_q, n): K of head h's group
         "self_attn.k_proj": q_cols.view(n_kv, rep, n).mean(1).repeat_interleave(head_dim, 0),  # RMS² over h∈g
         "self_attn.v_proj": o_cols.mean(1).reshape(-1),  # (m_v,) RMS² over h∈g of o's column norms
         "self_attn.o_proj": (0.5 * (U["gate_proj"].pow(2).sum(0).sqrt() + U["up_proj"].pow(2).sum(0).sqrt())).pow(2)}
    f["mlp.gate_proj"] = f["mlp.up_proj"] = U["down_proj"].pow(2).sum(1)[None, :]  # (1, n): row c of down_proj
    f["mlp.down_proj"] = torch.ones(U["down_proj"].shape[0], device=U["down_proj"].device)  # plain Wanda²
    return f


def n_pruned(size, p):
    """How many of `size` weights are pruned at sparsity p: floor(p·size) (1e-6: 0.7·90 = 62.99999999999999)."""
    return int(math.floor(p * size + 1e-6))


def _prune_groups(scores, total):
    """Keep-mask for scores (G, S) pruning exactly `total` weights as evenly as possible over the G groups:
    each loses floor(total/G) lowest, the remainder one each where the next-lowest is smallest (docs/method_notes.md)."""
    G, S = scores.shape
    k, extra = divmod(total, G)
    low = scores.topk(min(k + 1, S), dim=1, largest=False)  # (G, k+1) lowest scores per group, ascending
    keep = torch.ones(G, S, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, low.indices[:, :k], False)
    if extra:
        rows = low.values[:, k].topk(extra, largest=False).indices  # (extra,) groups that lose one more
        keep[rows, low.indices[rows, k]] = False
    return keep


def _prune_bounded(scores, total, sparsity, delta):
    """Keep-mask for scores (G, S) pruning exactly `total` weights at the least total score, each group's count in
    [floor((p−δ)·S), ceil((p+δ)·S)] (PAPER.md §4.4 (b)); the greedy is optimal (docs/method_notes.md)."""
    G, S = scores.shape
    lo = max(0, math.floor((sparsity - delta) * S + 1e-6))  # the 1e-6: float guards as in n_pruned
    hi = min(S, math.ceil((sparsity + delta) * S - 1e-6))
    lo, hi = min(lo, total // G), max(hi, -(-total // G))  # the even share always fits: total is feasible
    order = scores.argsort(dim=1)  # (G, S) each group's scores, ascending
    keep = torch.ones(G, S, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, order[:, :lo], False)
    extra = total - G * lo
    if extra:
        cand = scores.gather(1, order[:, lo:hi])  # (G, hi−lo) the scores a group may still lose, ascending
        pick = cand.reshape(-1).topk(extra, largest=False).indices  # the globally lowest of them
        rows = pick // (hi - lo)
        keep[rows, order[rows, lo + pick % (hi - lo)]] = False
    return keep


def select_mask(scores, sparsity, group="out", nm=None, delta=0.0):
    """Keep-mask (bool, True = keep) pruning the lowest scores (PAPER.md §4.3), exactly floor(p·m·n) of them,
    per group 'out' (rows, Wanda's), 'in' (columns) or 'layer'; delta > 0 lets groups range over [p−δ, p+δ]
    (PAPER.md §4.4 (b)); nm=(N, M) prunes N of every M consecutive inputs instead (docs/method_notes.md)."""
    if not 0.0 <= delta <= 1.0:  # also refuses nan
        raise ValueError(f"delta must be in [0, 1], not {delta}")
    m, n = scores.shape
    if nm is not None:
        N, M = nm
        assert n % M == 0, f"N:M needs the input size {n} to be a multiple of M={M}"
        s = scores.reshape(m, n // M, M)
        return torch.ones_like(s, dtype=torch.bool).scatter_(-1, s.topk(N, dim=-1, largest=False).indices, False).reshape(m, n)
    total = n_pruned(m * n, sparsity)
    groups = lambda S: _prune_bounded(S, total, sparsity, delta) if delta > 0 else _prune_groups(S, total)  # noqa: E731
    if group == "out":
        return groups(scores)
    if group == "in":
        return groups(scores.t()).t()
    if group == "layer":
        return _prune_groups(scores.reshape(1, -1), total).reshape(m, n)
    raise ValueError(f"group must be 'out', 'in' or 'layer', not {group!r}")


# -----------------------------------------------------------------------------
# PAPER.md §5 — Partial Brain Surgeon
#
# λ (paper: 1e-8); lam_relative=True (default) scales it by the mean diagonal of each r×r system's Gram, so
# the solution does not depend on the scale of X and singular rows still solve (docs/method_notes.md).

def _ridge(G, lam, relative):
    """G (…, r, r) float64 + λ_eff·I."""
    r = G.shape[-1]
    lam_eff = lam * G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30) if relative \
        else torch.full(G.shape[:-2], float(lam), dtype=G.dtype, device=G.device)
    return G + lam_eff[..., None, None] * torch.eye(r, dtype=G.dtype, device=G.device)


def pbs_output(U, A, M, H, s, lam=1e-8, lam_relative=True, chunk=None):
    """PBS, our reading (PAPER.md §5.1): ΔB (m×r) minimising ‖(s·(ΔB A) ⊙ M − R) Xᵀ‖²_F + λ‖ΔB‖²_F, R = U ⊙ (1−M),
    one r×r system per row, in chunks of rows (docs/method_notes.md). The caller folds W ← (U + s·ΔB·A) ⊙ M."""
    (m, n), r = U.shape, A.shape[0]
    R = U * ~M
    dB = torch.zeros(m, r, dtype=torch.float64, device=U.device)
    chunk = chunk or max(1, (1 << 23) // (r * n))  # rows per chunk: ~32 MB per (c, r, n) float32 tensor
    for i0 in range(0, m, chunk):
        i1 = min(i0 + chunk, m)
        AM = A[None] * M[i0:i1, None, :]  # (c, r, n): A with row i's pruned columns zeroed
        AMH = AM @ H  # (c, r, n)
        G = (s * s) * (AMH @ AM.transpose(1, 2))  # (c, r, r)
        rhs = s * (AMH @ R[i0:i1, :, None])  # (c, r, 1)
        dB[i0:i1] = torch.linalg.solve(_ridge(G.double(), lam, lam_relative), rhs.double()).squeeze(-1)
    return dB.to(U.dtype)


def pbs_diag(U, A, M, g, s, lam=1e-8, lam_relative=True):
    """PBS as in the authors' code (PAPER.md §5.2), κ = 1: per row min_δ Σ_c g_c (ũ_ic + s·δ·a_c)² + λ‖δ‖²,
    Ũ = U ⊙ (1−M), g_c = RMS activation; one shared Gram: ΔB = −s·(Ũ D Aᵀ)(s²·A D Aᵀ + λI)⁻¹, D = diag(g)."""
    Ut = U * ~M
    AD = A * g[None, :]  # (r, n) = A D
    G = (s * s) * (AD @ A.T)  # (r, r)
    rhs = -s * (Ut @ AD.T)  # (m, r)
    dB = torch.linalg.solve(_ridge(G.double(), lam, lam_relative), rhs.double().T).T  # G is symmetric
    return dB.to(U.dtype)


def pca_A(H, r):
    """PAPER.md §5.3 extension (a_init="pca"): A = top-r eigenvectors of H = XᵀX, rows scaled to kaiming's 1/√3."""
    _, vecs = torch.linalg.eigh(H.double())  # ascending eigenvalues
    return (vecs[:, -r:].flip(-1).T / math.sqrt(3)).to(H.dtype)  # (r, n), largest first


# -----------------------------------------------------------------------------
# PAPER.md §3 — the prune event

@torch.no_grad()
def prune_event(model, calib_ids, sparsity, group="out", nm=None, pbs="output", ema=0.5, state=None, lam=1e-8,
                final=False, pbs_final=False, a_init=None, foresight="eq2", delta=0.0, batch_size=8, progress=True):
    """One prune event (PAPER.md §3), block by block: capture → ForeSight scores on U = W + s·B·A → EMA
    score_k = η·s_k + (1−η)·score_{k−1} → mask → PBS ΔB → fold W ← (U + s·ΔB·A) ⊙ M → reset the adapter
    (docs/method_notes.md: revival). final=True: no PBS (unless pbs_final), exactly p-sparse.
    calib_ids (N, T); group/nm/delta: select_mask; foresight: 'eq2' (Eq. 2) or 'code' (§4.4 (a)); pbs: 'output'
    (§5.1), 'diag' (§5.2), None, or 'sparsegpt': the kept weights take SparseGPT's full OBS update for the pruned
    ones on ForeSight's mask, not PBS's rank-r one (a variant, issue 12); lam: PBS ridge. state: the last event's ({'scores': {layer_name: float32 host tensor},
    'events': k}); returns the new one, with 'changed' ({layer_name: mask entries flipped}) and 'changed_total'."""
    assert pbs in (None, "output", "diag", "sparsegpt"), "pbs must be 'output', 'diag', 'sparsegpt' or None"
    assert a_init in (None, "pca"), "a_init must be None or 'pca'"
    assert foresight in FORESIGHT, f"foresight must be one of {FORESIGHT}"
    use_pbs = pbs if (not final or pbs_final) else None
    obs = use_pbs == "sparsegpt"
    state = {"scores": {}, "events": 0} if state is None else state
    state["changed"] = {}
    cfg, layers = model.config, model.model.layers
    was_training = model.training
    model.eval()  # no adapter dropout while capturing
    try:
        gram = use_pbs == "output" or a_init == "pca" or obs  # PBS, the PCA init and SparseGPT's update need XᵀX
        for b, block, stats in sequential_blocks(model, calib_ids, batch_size, gram=gram, progress=progress,
                                                 desc=f"prune event {state['events'] + 1}"):
            # ForeSight scores, EMA, masks: all seven from the block's weights before any of them changes
            nxt = layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)
            e = consumer_energy(block, nxt, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, foresight)
            plan = {}
            for proj in PROJECTIONS:
                lin, name = get_sub(block, proj), layer_name(b, proj)
                assert isinstance(lin, LoRALinear), f"{name} has no adapter: call add_lora first"
                # (m, n) float32, no mask on the adapter (§4.4); W ⊙ M_old: W is zero there after a fold anyway
                U = _f32(lin.weight) * lin.mask + lin.scale * (_f32(lin.lora_B) @ _f32(lin.lora_A))
                s_k = foresight_scores(U, stats[proj].energy, e[proj])  # (m, n) paper Eq. 2 (or §4.4 (a))
                prev = state["scores"].get(name)
                score = s_k if prev is None else ema * s_k + (1 - ema) * prev.to(s_k.device)  # §4.3 EMA
                state["scores"][name] = _to_host(score, prev)  # prev is spent: its buffer takes the new EMA
                if final:  # scores are ≥ 0: an exact zero of U goes before any live weight
                    score = score.masked_fill(U == 0, -1.0)
                keep = select_mask(score, sparsity, group, nm, delta)
                state["changed"][name] = int((keep != lin.mask).sum())
                plan[proj] = (U, keep)

            pca_cache = {}  # q/k/v (and gate/up) share one H: one eigendecomposition
            for proj in PROJECTIONS:
                lin = get_sub(block, proj)
                U, keep = plan[proj]
                if not state["changed"][layer_name(b, proj)]:
                    continue  # the same mask: nothing for PBS to do (R = 0), nothing to fold; W, A, B stay
                A = _f32(lin.lora_A)  # (r, n)
                if a_init == "pca":  # PAPER.md §5.3: A from the principal directions of this layer's inputs
                    if id(stats[proj]) not in pca_cache:
                        pca_cache[id(stats[proj])] = pca_A(stats[proj].gram, lin.rank)
                    A = pca_cache[id(stats[proj])]
                U_net = U * lin.mask  # what the network computes now: PBS's R = U_net ⊙ (1 − M_new)
                if obs:  # the kept weights compensate for the pruned ones with SparseGPT's full update
                    U = sparsegpt_prune(U_net, stats[proj].gram.to(U.dtype), sparsity, keep=keep)[0]
                elif use_pbs == "output":
                    U = U + lin.scale * (pbs_output(U_net, A, keep, stats[proj].gram.to(U.dtype), lin.scale, lam) @ A)  # §5.1
                elif use_pbs == "diag":
                    U = U + lin.scale * (pbs_diag(U_net, A, keep, stats[proj].rms.to(U.dtype), lin.scale, lam) @ A)  # §5.2
                lin.weight.copy_((U * keep).to(lin.weight.dtype))  # the fold, with B = ΔB: W ← (U + s·ΔB·A) ⊙ M
                lin.mask.copy_(keep)
                lin.reset_adapter(A.to(lin.lora_A.dtype) if a_init == "pca" else None)
            del plan, stats, U, keep, pca_cache  # nothing of block b outlives it (one block at a time)
    finally:
        model.train(was_training)
    state["changed_total"] = sum(state["changed"].values())
    state["events"] += 1
    return state


# -----------------------------------------------------------------------------
# PAPER.md §6 — one-shot baselines on given weights

def sparsegpt_prune(W, H, sparsity, nm=None, blocksize=128, percdamp=0.01, keep=None):
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1) from the paper: prune W (m×n) column by column with OBS
    updates of the later columns, H = XᵀX, damping percdamp·mean(diag H); exactly floor(p·m·n) zeros, or
    N:M with nm=(N, M) (docs/method_notes.md). keep: a given mask (m×n bool) instead of SparseGPT's own
    selection: only its updates (xpert's --final-update sparsegpt). Returns (Ŵ, keep mask), in W's dtype."""
    W, H = W.clone(), H.to(W.dtype).clone()
    m, n = W.shape
    dead = H.diagonal() == 0  # inputs that never fire: their weights are free to prune
    H[dead, dead] = 1
    if keep is None:
        W[:, dead] = 0
    H.diagonal().add_(percdamp * H.diagonal().mean())
    # upper Cholesky factor of H⁻¹: row i holds the OBS update for column i given columns < i are done
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    given, keep = keep, torch.ones(m, n, dtype=torch.bool, device=W.device)
    done = 0  # weights pruned so far: each block brings the total to floor(p·m·i2), exact at the end
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
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
            q = torch.where(prune1[:, i], torch.zeros_like(w), w)
            e1 = (w - q) / d
            W1[:, i:] -= e1[:, None] * Hinv1[i, i:][None, :]  # compensate in the block's later columns
            W1[:, i], Err1[:, i] = q, e1
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the columns after the block
        keep[:, i1:i2] = ~prune1
    return W * keep, keep


@torch.no_grad()
def prune_oneshot(model, calib_ids, method, sparsity, nm=None, batch_size=8, progress=False):
    """One-shot pruning of a plain model (nn.Linear; merge_lora first for LoRA→X) in place, sequential over
    blocks (PAPER.md §6): magnitude |W| or Wanda |W|·‖X_c‖ per output row (or N:M), exactly p-sparse, or
    SparseGPT on H = XᵀX (docs/method_notes.md). Returns {layer_name: keep mask, bool, CPU} for add_lora(masks=)."""
    assert method in ("magnitude", "wanda", "sparsegpt"), "method: magnitude, wanda or sparsegpt"
    masks = {}
    was_training = model.training
    model.eval()
    blocks = ((b, blk, None) for b, blk in enumerate(tqdm(model.model.layers, desc=method, disable=not progress))) \
        if method == "magnitude" else sequential_blocks(model, calib_ids, batch_size, gram=method == "sparsegpt",
                                                         progress=progress, desc=method)  # magnitude needs no data
    try:
        for b, block, stats in blocks:
            for proj in PROJECTIONS:
                lin = get_sub(block, proj)
                assert type(lin) is nn.Linear, f"{layer_name(b, proj)} is not a plain nn.Linear (merge_lora first)"
                W = _f32(lin.weight)  # (m, n)
                if method == "sparsegpt":
                    W_new, keep = sparsegpt_prune(W, stats[proj].gram, sparsity, nm)
                else:
                    score = W.abs() if method == "magnitude" else W.abs() * stats[proj].energy.sqrt()[None, :]
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
    """Fraction of exact zeros of every adapted projection (a LoRALinear's folded weight, what merge_lora
    writes) and overall: {'layers': {layer_name: fraction}, 'zeros': int, 'total': int, 'overall': fraction}."""
    rep = {"layers": {}, "zeros": 0, "total": 0}
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            W = effective_weight(get_sub(block, proj))
            z = int((W == 0).sum())
            rep["layers"][layer_name(b, proj)] = z / W.numel()
            rep["zeros"] += z
            rep["total"] += W.numel()
    rep["overall"] = rep["zeros"] / max(rep["total"], 1)
    return rep
