"""
EfficientXpert, the method: LoRA fine-tuning of a LLaMA with pruning inside the same run.

Read this file beside PAPER.md (../shared/PAPER.md); the sections below follow it in order and every
formula cites it ("PAPER.md §4.2", "paper Eq. 2"). Only the method lives here: no CLI, no data
loading, no training loop. The pieces, in order:

    §3  activation capture (forward hooks, block by block)        Capture, sequential_blocks
    §3  masked LoRA (frozen W, mask M, adapter B·A, fold)          LoRALinear, add_lora, merge_lora
    §4  ForeSight Mask scores, consumer energies, selection, EMA   foresight_scores, consumer_energy, select_mask
    §5  Partial Brain Surgeon, both readings, PCA init of A        pbs_output, pbs_diag, pca_A
    §3  the prune event                                            prune_event
    §6  one-shot baselines: magnitude, Wanda, SparseGPT           prune_oneshot, sparsegpt_prune
        sparsity measured from the weights                        sparsity_report

Layout (PAPER.md §2): a linear layer computes y = x Wᵀ with W (m outputs × n inputs); LoRA B (m×r),
A (r×n), scale s = α/r; effective weight U = W + s·B·A; mask M (True = keep); X (N tokens × n) the
calibration inputs of a layer, ‖X_c‖² its column energy and H = XᵀX its Gram matrix.
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


# -----------------------------------------------------------------------------
# PAPER.md §3 — activation capture

# In a LLaMA block q/k/v read the same tensor (input_layernorm's output) and gate/up read the same
# tensor (post_attention_layernorm's output): four distinct inputs feed the seven projections. We hook
# those four and let the seven names share their statistics (3 fewer n×n Gram matrices to form).
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
    """Context manager: forward hooks on the projections of one block that accumulate InputStats.
    `with Capture(block, gram=True) as cap: block(x, cos, sin)` then cap.stats[proj].energy / .gram.
    The hooks are removed on leaving the block, also when the forward raised."""

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
    """Generator over blocks (PAPER.md §3, "capture is sequential as in Wanda/SparseGPT"): yields
    (b, block, stats) with stats captured on the inputs block b sees now. The caller prunes block b,
    and when the loop resumes the calibration hidden states are pushed through the *pruned* block,
    so block b+1 sees what the pruned model computes. Only one block's statistics exist at a time."""
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
            for i, x in enumerate(xs):  # through the block as the caller left it (pruned); in place, so
                xs[i] = block(x, cos, sin)  # only one batch's hidden states exist twice at a time


# -----------------------------------------------------------------------------
# PAPER.md §3 — masked LoRA
#
# Invariant this section relies on: W ⊙ M = W (the frozen base weight is exactly zero wherever the mask is
# 0). Every writer of a mask keeps it: fold() and prune_event write W and M together, a one-shot prune
# (prune_oneshot, for Wanda→LoRA) zeroes W before add_lora gets its masks, and a resumed checkpoint holds
# both. The masked forward therefore computes (W + s·B·A) ⊙ M as W + (s·B·A) ⊙ M without re-masking W
# every call. Tests assert the invariant after folds and events; the forward does not (an m×n scan).
#
# Precision (as PEFT): the adapters A, B are float32 (float64 over a float64 base) whatever the base's
# dtype, so AdamW's moments and updates far below bf16's resolution (2⁻⁸ relative) are not rounded
# away, and fp16's AdamW eps (1e-8 → 0 in fp16) does not turn the first step into 0/0. The base runs in its
# own dtype; fold() sums in float32 and rounds into W's dtype once.


class _MaskedLoRAFn(torch.autograd.Function):
    """y = x·((W + s·B·A) ⊙ M)ᵀ (PAPER.md §3) as ONE matmul, with adapter gradients computed by hand so
    that no m×n tensor is kept for backward (autograd on the expression would save s·B·A ⊙ M and the
    merged weight, two m×n tensors per layer, until backward).
    Shapes: x (..., n) in the compute dtype (W's); W, M (m×n); A (r×n), B (m×r) in the adapter dtype.
    Relies on W ⊙ M = W (see above), so (W + s·B·A) ⊙ M = W + (s·B·A) ⊙ M.
    Backward, with G = dYᵀ·X (m×n, the gradient w.r.t. the merged weight):
        dX = dY·(W + s·B·A ⊙ M)          (the merged weight recomputed, transient)
        dA = s·Bᵀ·(G ⊙ M),  dB = s·(G ⊙ M)·Aᵀ   (in the adapter dtype)"""

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
        x, W, A, B, M = ctx.saved_tensors
        s = ctx.s
        dx = None
        if ctx.needs_input_grad[0]:  # not for the first block's q/k/v: their input comes from frozen layers
            dx = dy @ _MaskedLoRAFn.merged(W, A, B, M, s)  # (..., n)
        dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])  # (N, m), (N, n)
        G = (dy2.T @ x2).to(A.dtype).mul_(M)  # (m, n) G ⊙ M: the merged weight's gradient at kept positions
        dA = s * (B.T @ G)  # (r, n)
        dB = s * (G @ A.T)  # (m, r)
        return dx, None, dA, dB, None, None


class LoRALinear(nn.Module):
    """A projection with a frozen base weight W, a mask M and a LoRA adapter (B, A) (PAPER.md §2-3).

    Nothing pruned (M all ones: the dense phase before the first event, the lora baselines): plain LoRA,
      y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ, at LoRA's cost.
    Something pruned: masked LoRA, y = x·((W + s·B·A) ⊙ M)ᵀ exactly — a pruned weight never contributes,
      gradients of A and B see only kept positions, and the model trained is exactly the model fold()
      produces. One matmul with the merged weight (see _MaskedLoRAFn); it costs one m×n product s·B·A
      per forward and per backward, and the m×n weight gradient G = dYᵀ·X, as in full fine-tuning.
      NO adapter dropout here: dropout(x) on the adapter path alone would need a second full matmul
      x·Wᵀ + dropout(x)·((s·B·A) ⊙ M)ᵀ, so once the mask holds a zero, train() and eval() compute the same.
    Adapter A, B are float32 over a bf16/fp16 base (see the note above _MaskedLoRAFn).
    Requires W ⊙ M = W (the note above): pass a mask only with a base already zero off it.
    fold(): W ← (W + s·B·A) ⊙ M in float32, rounded once into W's dtype; then A re-initialised, B = 0."""

    def __init__(self, base: nn.Linear, rank=8, alpha=16, dropout=0.05, mask=None):
        super().__init__()
        m, n = base.weight.shape
        self.in_features, self.out_features, self.rank = n, m, rank
        self.scale = alpha / rank  # s = α/r
        self.weight = base.weight  # same Parameter: the state-dict key stays "...q_proj.weight"
        self.weight.requires_grad_(False)
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
        """A ← kaiming-uniform (as LoRA/PEFT) or the given A; B ← 0. In place: optimizer references
        stay valid (their moment estimates are the training loop's business)."""
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
        """Does the mask hold a zero? Cached on the buffer's identity and in-place version counter
        (prune events and resume rewrite it in place, which bumps `_version`), so the forward does not
        scan m×n booleans — on a GPU, a host sync per projection — every call."""
        key = (self.mask.data_ptr(), self.mask._version)
        if getattr(self, "_pruned_key", None) != key:
            self._pruned_key, self._pruned = key, not bool(self.mask.all())
        return self._pruned

    def forward(self, x):
        if self.pruned():  # masked LoRA, exact, one matmul, no adapter dropout (class docstring)
            return _MaskedLoRAFn.apply(x, self.weight, self.lora_A, self.lora_B, self.mask, self.scale)
        # plain LoRA: the base in x's dtype, the adapter path in the adapter dtype (x cast up, as PEFT),
        # summed into the base output in place (add_ with alpha: the scale and the sum in one pass; F.linear's
        # output is not saved for backward, so adding into it is safe), rounded once into x's dtype
        xa = self.dropout(x.to(self.lora_A.dtype))  # (..., n)
        return F.linear(x, self.weight).add_(F.linear(F.linear(xa, self.lora_A), self.lora_B), alpha=self.scale)

    @torch.no_grad()
    def fold(self):
        """W ← (W + s·B·A) ⊙ M; A re-initialised; B = 0 (PAPER.md §3). Summed in float32, rounded into W's
        dtype once. Idempotent: with B = 0 and W already zero off the mask, a second fold leaves W unchanged."""
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
    """Wrap the seven projections of every block in LoRALinear (in place; returns model). masks:
    optional {layer_name: bool (m×n)} — e.g. Wanda's masks for the Wanda→LoRA baseline (PAPER.md §6),
    so the masked adapter keeps the pruned base's pattern; the base must already be zero off them
    (W ⊙ M = W, the note above _MaskedLoRAFn). Everything but the adapters is frozen."""
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
    params = []
    for _, mod in lora_layers(model):
        for p in (mod.lora_A, mod.lora_B):
            p.requires_grad_(True)
            params.append(p)
    return params


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter and put plain nn.Linear back (same weight Parameter, still frozen): the result
    is an ordinary model.py LLaMA whose save_pretrained writes standard Hugging Face keys. Because fold
    multiplies by M, the merge keeps the exact sparsity (it does not densify)."""
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            mod = get_sub(block, proj)
            if isinstance(mod, LoRALinear):
                mod.fold()
                lin = nn.Linear(mod.in_features, mod.out_features, bias=False, device="meta")
                lin.weight = mod.weight
                set_sub(block, proj, lin)
    return model


def effective_weight(mod):
    """Float32 effective weight of a projection: (W + s·B·A) ⊙ M for LoRALinear, W for nn.Linear."""
    return mod.effective_weight() if isinstance(mod, LoRALinear) else _f32(mod.weight)


# -----------------------------------------------------------------------------
# PAPER.md §4 — ForeSight Mask

FORESIGHT = ("eq2", "code")  # the literal paper Eq. 2 (§4) / the authors' per-module factors (§4.4 (a))


def foresight_scores(U, col_energy, e):
    """Paper Eq. 2 in PyTorch layout (PAPER.md §4): s[j, c] = U[j, c]² · ‖X_c‖² · e_j.
    U (m×n) effective weight, col_energy (n,) = ‖X_c‖², e (m,) = energy with which consumers read
    output j. For a linear chain it is exactly ‖ΔZ‖²_F of the consumer's output when U[j,c] alone is
    zeroed (PAPER.md §4.1; tested by brute force). e may also be a squared factor that varies along
    the row, (m, n) or (1, n): the authors' reading (consumer_energy(foresight="code"), §4.4 (a))."""
    return U.pow(2) * col_energy[None, :] * (e[:, None] if e.dim() == 1 else e)


def consumer_energy(block, nxt, n_head, n_kv, head_dim, foresight="eq2"):
    """e_j of the seven projections of `block` (PAPER.md §4.2 table, GQA included), on effective
    weights. nxt: the next Block (down_proj is read by its q/k/v through its input_layernorm γ), or
    (final_norm, lm_head) for the last block. Returns {proj: e (m,)} in float32.
    foresight="code": the authors' factors instead (code_factors, PAPER.md §4.4 (a)).

    Our reading of the table (the authors' code differs in places): RoPE is ignored (it rotates pairs
    of dims inside a head; the dims' energies are taken as they are), and SwiGLU / attention are
    treated as if the consumer read the output linearly, as the paper's diagonal score does."""
    U = {p.split(".")[-1]: effective_weight(get_sub(block, p)) for p in PROJECTIONS}
    if foresight == "code":
        return code_factors(U, n_head, n_kv, head_dim)
    rep = n_head // n_kv  # query heads per KV group; KV head g serves heads g*rep ... g*rep+rep-1
    q_rows = U["q_proj"].pow(2).sum(1).view(n_head, head_dim)  # ‖U_q[h·hd+d, :]‖²
    k_rows = U["k_proj"].pow(2).sum(1).view(n_kv, head_dim)  # ‖U_k[g·hd+d, :]‖²
    o_cols = U["o_proj"].pow(2).sum(0).view(n_head, head_dim)  # ‖U_o[:, h·hd+d]‖²
    e = {}
    e["self_attn.q_proj"] = k_rows.repeat_interleave(rep, 0).reshape(-1)  # k of the same group, same dim
    e["self_attn.k_proj"] = q_rows.view(n_kv, rep, head_dim).sum(1).reshape(-1)  # Σ over q heads in g
    e["self_attn.v_proj"] = o_cols.view(n_kv, rep, head_dim).sum(1).reshape(-1)  # o columns of heads in g
    g_post = _f32(block.post_attention_layernorm.weight).pow(2)
    e["self_attn.o_proj"] = g_post * (U["gate_proj"].pow(2).sum(0) + U["up_proj"].pow(2).sum(0))
    e["mlp.gate_proj"] = e["mlp.up_proj"] = U["down_proj"].pow(2).sum(0)  # down_proj column j
    if isinstance(nxt, (tuple, list)):  # last block: final norm, then lm_head
        norm, head = nxt
        gamma, readers = norm.weight, [_f32(head.weight)]
    else:
        gamma = nxt.input_layernorm.weight
        readers = [effective_weight(get_sub(nxt, p)) for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    e["mlp.down_proj"] = _f32(gamma).pow(2) * sum(Wc.pow(2).sum(0) for Wc in readers)
    return e


def code_factors(U, n_head, n_kv, head_dim):
    """The authors' per-module propagation factors (PAPER.md §4.4 (a) table), *squared*, so that
    foresight_scores gives s[j, c] = (|U[j,c]|·‖X_c‖·factor)²: per call the same ranking as their
    first-power score, and the EMA then averages squared scores, the same kind of quantity as Eq. 2.
    U: {short proj name: effective weight}. Returns {proj: factor²}, each (m,) (a row factor), (m, n)
    or (1, n) (indexed by the input column c: these re-rank weights inside a row).
    Only the factors are theirs: U keeps s = α/r, modules are scored together, and the EMA applies."""
    rep = n_head // n_kv
    n = U["q_proj"].shape[1]
    q_cols = U["q_proj"].pow(2).view(n_head, head_dim, n).sum(1)  # (n_head, n) ‖U_q[rows of head h, c]‖²
    k_cols = U["k_proj"].pow(2).view(n_kv, head_dim, n).sum(1)  # (n_kv, n) ‖U_k[rows of group g, c]‖²
    o_cols = U["o_proj"].pow(2).sum(0).view(n_kv, rep, head_dim)  # ‖U_o[:, h·hd+d]‖², heads by group
    f = {}
    f["self_attn.q_proj"] = k_cols.repeat_interleave(rep * head_dim, 0)  # (m_q, n): K of head h's group
    f["self_attn.k_proj"] = q_cols.view(n_kv, rep, n).mean(1).repeat_interleave(head_dim, 0)  # RMS² over h∈g
    f["self_attn.v_proj"] = o_cols.mean(1).reshape(-1)  # (m_v,) RMS² over h∈g of o's column norms
    f["self_attn.o_proj"] = (0.5 * (U["gate_proj"].pow(2).sum(0).sqrt() + U["up_proj"].pow(2).sum(0).sqrt())).pow(2)
    f["mlp.gate_proj"] = f["mlp.up_proj"] = U["down_proj"].pow(2).sum(1)[None, :]  # (1, n): row c of down_proj
    f["mlp.down_proj"] = torch.ones(U["down_proj"].shape[0], device=U["down_proj"].device)  # plain Wanda²
    return f


def n_pruned(size, p):
    """How many of `size` weights are pruned at sparsity p: floor(p·size) (the 1e-6 guards against
    float error: 0.7·90 = 62.99999999999999)."""
    return int(math.floor(p * size + 1e-6))


def _prune_groups(scores, total):
    """Keep-mask for scores (G, S) — G groups of S weights — pruning exactly `total` weights, spread
    as evenly as possible: every group loses floor(total/G) of its lowest scores, and the remainder
    goes one each to the groups whose next-lowest score is smallest. So a 576-wide row at p = 0.4
    (230.4 weights) yields a matrix that is p-sparse to the weight, not 0.3993."""
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
    """Keep-mask for scores (G, S) pruning exactly `total` weights with every group's pruned count
    between lo = floor((p−δ)·S) and hi = ceil((p+δ)·S), clipped to [0, S] (PAPER.md §4.4 (b)), at the
    least total pruned score. Greedy, optimal for these bounds (a pruned score's cost does not depend
    on the rest of the mask, so an exchange argument applies): every group prunes its lo lowest,
    then the rest of the budget goes to the globally lowest remaining scores among groups still
    under hi. δ = 0 is _prune_groups (on distinct scores), δ = 1 the whole matrix."""
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
    """Keep-mask (bool, True = keep) pruning the lowest scores (PAPER.md §4.3). Every group gives the
    matrix exactly floor(p·m·n) zeros: 'out' (per output row, Wanda's convention), 'in' (per input
    column) — each group loses floor or ceil of p·size, see _prune_groups — or 'layer' (the whole
    matrix). delta > 0 (PAPER.md §4.4 (b)): the groups compete across the matrix, each keeping its
    pruned fraction within [p−δ, p+δ] (_prune_bounded; 'layer' is one group, which δ cannot change).
    nm=(N, M): in every run of M consecutive inputs of a row, the N lowest are pruned
    (overrides sparsity, group and delta). Counts are exact whatever the ties (top-k, not a threshold)."""
    if not 0.0 <= delta <= 1.0:  # also refuses nan
        raise ValueError(f"delta must be in [0, 1], not {delta}")
    m, n = scores.shape
    if nm is not None:
        N, M = nm
        assert n % M == 0, f"N:M needs the input size {n} to be a multiple of M={M}"
        s = scores.reshape(m, n // M, M)
        idx = s.topk(N, dim=-1, largest=False).indices
        return torch.ones_like(s, dtype=torch.bool).scatter_(-1, idx, False).reshape(m, n)
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
# λ (paper: 1e-8). With lam_relative=True (the default) the ridge is λ times the mean diagonal of the
# r×r system's Gram, per row: the solution is then invariant to the scale of X (H grows with the number
# of calibration tokens, so an absolute 1e-8 is a no-op for real data and a different regulariser for
# every calibration size) and a row whose system is singular (e.g. all of A's kept columns zero) still
# solves. lam_relative=False applies λ as written. The r×r solves run in float64.

def _ridge(G, lam, relative):
    """G (…, r, r) float64 + λ_eff·I."""
    r = G.shape[-1]
    lam_eff = lam * G.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30) if relative \
        else torch.full(G.shape[:-2], float(lam), dtype=G.dtype, device=G.device)
    return G + lam_eff[..., None, None] * torch.eye(r, dtype=G.dtype, device=G.device)


def pbs_output(U, A, M, H, s, lam=1e-8, lam_relative=True, chunk=None):
    """PBS, our reading (PAPER.md §5.1): ΔB (m×r) minimising ‖(s·(ΔB A) ⊙ M − R) Xᵀ‖²_F + λ‖ΔB‖²_F with
    R = U ⊙ (1−M). Row i separates (A_K = A on the kept columns K_i):
        (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K H_{K,S} R_{i,S}ᵀ
    Batched over chunks of rows: masking A by row i's mask gives A_K H_KK A_Kᵀ = (A⊙M_i) H (A⊙M_i)ᵀ and
    A_K H_{K,S} R_Sᵀ = (A⊙M_i) H R_iᵀ (R is zero on K). Cost O(m·r·n²). The caller folds
    W ← (U + s·ΔB·A) ⊙ M."""
    m, n = U.shape
    r = A.shape[0]
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
    """PBS as in the authors' public code (PAPER.md §5.2), κ = 1: per row i,
        min_δ Σ_c g_c (ũ_ic + s·δ·a_c)² + λ‖δ‖²,   Ũ = U ⊙ (1−M),  g_c = RMS activation of column c,
    whose rows share one Gram: ΔB = −s·(Ũ D Aᵀ)(s²·A D Aᵀ + λI)⁻¹, D = diag(g). Their code forms U
    without α/r and merges with it (s = 1 in their formula); we carry s consistently, so the fold
    W ← (U + s·ΔB·A) ⊙ M applies exactly the minimiser of this objective."""
    Ut = U * ~M
    AD = A * g[None, :]  # (r, n) = A D
    G = (s * s) * (AD @ A.T)  # (r, r)
    rhs = -s * (Ut @ AD.T)  # (m, r)
    dB = torch.linalg.solve(_ridge(G.double(), lam, lam_relative), rhs.double().T).T  # G is symmetric
    return dB.to(U.dtype)


def pca_A(H, r):
    """PAPER.md §5.3 extension (a_init="pca"): A's rows = the top-r eigenvectors of H = XᵀX (the
    calibration activations' principal directions), scaled to 1/√3 = the expected row norm of LoRA's
    kaiming-uniform init, so training dynamics start at the same scale."""
    _, vecs = torch.linalg.eigh(H.double())  # ascending eigenvalues
    return (vecs[:, -r:].flip(-1).T / math.sqrt(3)).to(H.dtype)  # (r, n), largest first


# -----------------------------------------------------------------------------
# PAPER.md §3 — the prune event

@torch.no_grad()
def prune_event(model, calib_ids, sparsity, group="out", nm=None, pbs="output", ema=0.5, state=None, lam=1e-8,
                final=False, pbs_final=False, a_init=None, foresight="eq2", delta=0.0, batch_size=8, progress=True):
    """One prune event (PAPER.md §3) on a model with adapters (add_lora), block by block:
        capture X of the block's inputs → ForeSight scores s_k (on effective weights) → EMA
        score_k = η·s_k + (1−η)·score_{k−1} (first event: s_1) → mask at sparsity p → PBS ΔB (A fixed)
        → fold W ← (U + s·ΔB·A) ⊙ M → reset the adapter (A random, or PCA of H with a_init="pca"; B = 0).
    final=True is the end-of-training event: the same without PBS (pbs_final=True keeps it); the model
    then holds exactly p-sparse weights (merge_lora folds what is left and takes the wrappers off).

    calib_ids (N, T); group/nm/delta: select_mask; foresight: 'eq2' (paper Eq. 2) or 'code' (the authors'
    factors, PAPER.md §4.4 (a)); pbs: 'output' (§5.1), 'diag' (§5.2) or None; lam: the PBS ridge.
    state: the previous event's EMA state ({'scores': {layer_name: float32 CPU tensor}, 'events': k},
    torch.save-able for resume); returns the new one, with 'changed' ({layer_name: mask entries that
    flipped at this event}) and 'changed_total'.

    Scores use the unmasked U = W + s·B·A (PAPER.md §4.4 point 1): at a pruned position W = 0 but s·B·A
    is not, so a pruned weight keeps a score and can come back through the EMA ("revival"), entering
    the fold at its value s·B·A. PBS compensates what the network loses, R = (U ⊙ M_old) ⊙ (1 − M_new):
    zero when the mask did not change. A matrix whose mask did not change is left as it is (W, A, B:
    its function is already the folded one, and its adapter keeps training). A revived weight whose U
    is exactly 0 would leave the saved model more than p sparse, so the final event prunes exact zeros first."""
    assert pbs in (None, "output", "diag"), "pbs must be 'output', 'diag' or None"
    assert a_init in (None, "pca"), "a_init must be None or 'pca'"
    assert foresight in FORESIGHT, f"foresight must be one of {FORESIGHT}"
    use_pbs = pbs if (not final or pbs_final) else None
    state = {"scores": {}, "events": 0} if state is None else state
    state["changed"] = {}
    cfg, layers = model.config, model.model.layers
    was_training = model.training
    model.eval()  # no adapter dropout while capturing
    try:
        for b, block, stats in sequential_blocks(model, calib_ids, batch_size, gram=use_pbs == "output" or a_init == "pca",
                                                 progress=progress, desc=f"prune event {state['events'] + 1}"):
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
                state["scores"][name] = score.cpu()
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
                if use_pbs == "output":
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

def sparsegpt_prune(W, H, sparsity, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1), written from the paper: prune W (m×n) column by
    column with Optimal Brain Surgeon updates of the not-yet-processed columns, H = XᵀX (the Hessian
    of ‖(W − Ŵ)Xᵀ‖² up to 2). Damping: percdamp·mean(diag H). The mask is chosen per block of
    `blocksize` columns by w²/[H⁻¹]_cc² (top-k, not a threshold), each block pruning what brings the
    running total to floor(p·m·columns so far), so the matrix holds exactly floor(p·m·n) zeros; with
    nm=(N, M), N of every M consecutive inputs of a row, chosen as the run is reached.
    Returns (Ŵ, keep mask). Works in W's dtype (float32 or float64)."""
    W = W.clone()
    H = H.to(W.dtype).clone()
    m, n = W.shape
    dead = H.diagonal() == 0  # inputs that never fire: their weights are free to prune
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * H.diagonal().mean())
    # upper Cholesky factor of H⁻¹: row i holds the OBS update for column i given columns < i are done
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    keep = torch.ones(m, n, dtype=torch.bool, device=W.device)
    done = 0  # weights pruned so far: each block takes what brings the total to floor(p·m·i2), so the
    for i1 in range(0, n, blocksize):  # matrix ends exactly floor(p·m·n)-sparse (not a floor per block)
        i2 = min(i1 + blocksize, n)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            err = W1.pow(2) / Hinv1.diagonal()[None, :].pow(2)  # OBS saliency w²/[H⁻¹]_cc²
            k = n_pruned(m * i2, sparsity) - done
            done += k
            idx = err.reshape(-1).topk(k, largest=False).indices
            prune1.view(-1)[idx] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                N, M = nm
                err = W1[:, i:i + M].pow(2) / Hinv1.diagonal()[i:i + M][None, :].pow(2)
                prune1.scatter_(1, i + err.topk(N, dim=1, largest=False).indices, True)
            w, d = W1[:, i], Hinv1[i, i]
            q = torch.where(prune1[:, i], torch.zeros_like(w), w)
            e1 = (w - q) / d
            W1[:, i:] -= e1[:, None] * Hinv1[i, i:][None, :]  # compensate in the block's later columns
            W1[:, i] = q
            Err1[:, i] = e1
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # lazy batch update of the columns after the block
        keep[:, i1:i2] = ~prune1
    return W * keep, keep


@torch.no_grad()
def prune_oneshot(model, calib_ids, method, sparsity, nm=None, batch_size=8, progress=False):
    """One-shot pruning of a plain model (nn.Linear projections; merge_lora first for LoRA→X), in
    place, sequential over blocks like the original papers (PAPER.md §6): magnitude |W|, Wanda
    |W|·‖X_c‖ (both per output row, or N:M; where p·n is not an integer — 0.4 × 576 = 230.4 — the rows
    lose 230 or 231 so the matrix is exactly p-sparse like every other criterion here, where Wanda's own
    code floors per row and ends at 39.93%), SparseGPT (sparsegpt_prune on H = XᵀX). Returns
    {layer_name: keep mask, bool, CPU}; for Wanda→LoRA pass them to add_lora(masks=)."""
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
    """Fraction of exact zeros of every adapted projection, from the weights themselves (for a
    LoRALinear: the folded weight (W + s·B·A) ⊙ M, i.e. what merge_lora would write), and overall.
    Returns {'layers': {layer_name: fraction}, 'zeros': int, 'total': int, 'overall': fraction}."""
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
