"""
Grader of the exercises in EXERCISES.md.

    python -m exercises.check 3              # grade your exercises/ex3_wanda.py
    python exercises/check.py 3              # the same
    python -m exercises.check all            # every exercise
    python -m exercises.check 3 --solution   # the reference solution (what PASS looks like)

check(n, module) runs the graded checks of exercise n against `module` (default: the student file),
prints PASS or FAIL with the reason, and returns True / False; the CLI exits 0 when everything passed,
1 otherwise. Every check compares with an independent computation (brute-force loops, enumeration,
torch.linalg.lstsq, Monte Carlo) on seeded random inputs, then on a real layer of a small LLaMA.
"""
import importlib
import itertools
import math
import os
import sys
import traceback

import torch

if __package__ in (None, ""):  # run as a script: python exercises/check.py N
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exercises import _common as C  # noqa: E402  (also puts the repo root on sys.path)

import xpert  # noqa: E402
from model import PROJECTIONS  # noqa: E402

EXERCISES = {1: "ex1_foresight", 2: "ex2_grouping", 3: "ex3_wanda", 4: "ex4_pbs", 5: "ex5_iou", 6: "ex6_nm",
             7: "ex7_pbs_diag"}
F64 = torch.float64


class Fail(Exception):
    """A graded check did not hold; the message says which and why."""


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, g):
    return torch.randn(*shape, generator=g, dtype=F64)


def close(a, b, rtol=1e-7, atol=0.0):
    """(ok, max relative difference) with the scale of b."""
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False, float("inf")
    a = a.detach().to(F64)
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return diff <= rtol * scale + atol, diff / max(scale, 1e-300)


def expect_close(a, b, what, rtol=1e-7, atol=0.0):
    if not isinstance(a, torch.Tensor):
        raise Fail(f"{what}: expected a tensor, got {type(a).__name__}")
    if tuple(a.shape) != tuple(b.shape):
        raise Fail(f"{what}: shape {tuple(a.shape)}, expected {tuple(b.shape)}")
    ok, rel = close(a, b, rtol, atol)
    expect(ok, f"{what}: differs from the independent computation (max relative difference {rel:.3g})")


def expect_mask(mask, shape, what):
    expect(isinstance(mask, torch.Tensor), f"{what}: expected a bool tensor, got {type(mask).__name__}")
    expect(mask.dtype == torch.bool, f"{what}: expected dtype torch.bool (True = keep), got {mask.dtype}")
    expect(tuple(mask.shape) == tuple(shape), f"{what}: shape {tuple(mask.shape)}, expected {tuple(shape)}")


def n_pruned(size, p):
    return int(math.floor(p * size + 1e-6))


def real_block(b):
    """Block index b clipped to the model (the fallback random model has 3 blocks)."""
    model, _, _ = C.tiny_model()
    return min(b, len(model.model.layers) - 1)


def real_energy(b):
    """{proj: e_j} of block b of the tiny model, from xpert.consumer_energy (float64)."""
    model, _, _ = C.tiny_model()
    cfg, layers = model.config, model.model.layers
    nxt = layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)
    e = xpert.consumer_energy(layers[b], nxt, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    return {k: v.double() for k, v in e.items()}


def ref_group_prune(scores, p, groups):
    """Keep-mask by brute force: `groups` is a list of lists of flat indices; in each, sort the
    (score, index) pairs in Python and prune the floor(p·size) lowest."""
    flat = scores.reshape(-1).tolist()
    keep = [True] * len(flat)
    for grp in groups:
        for _, i in sorted((flat[i], i) for i in grp)[:n_pruned(len(grp), p)]:
            keep[i] = False
    return torch.tensor(keep, dtype=torch.bool).reshape(scores.shape)


def rows(m, n):
    return [[i * n + c for c in range(n)] for i in range(m)]


def cols(m, n):
    return [[i * n + c for i in range(m)] for c in range(n)]


def ref_wanda(W, X, p):
    """Wanda by loops: |W[i,c]|·sqrt(Σ_t X[t,c]²), per output row."""
    m, n = W.shape
    norms = [math.sqrt(sum(v * v for v in X[:, c].tolist())) for c in range(n)]
    score = torch.tensor([[abs(W[i, c].item()) * norms[c] for c in range(n)] for i in range(m)], dtype=F64)
    return ref_group_prune(score, p, rows(m, n))


def pruned_iou_ref(a, b):
    pa, pb = (~a).reshape(-1).tolist(), (~b).reshape(-1).tolist()
    inter = sum(1 for x, y in zip(pa, pb) if x and y)
    union = sum(1 for x, y in zip(pa, pb) if x or y)
    return 1.0 if union == 0 else inter / union


# -----------------------------------------------------------------------------
# Exercise 1 — ForeSight = ‖ΔZ‖² of the consumer's output (PAPER.md §4.1)

def bruteforce_dz(X, U, U2, entries=None):
    """‖Z − Z'‖²_F with Z' recomputed from scratch after zeroing U[j, c]; all entries or the given ones."""
    Z = X @ U.T @ U2.T
    out = torch.full(U.shape, float("nan"), dtype=F64)
    for j, c in (entries if entries is not None else itertools.product(range(U.shape[0]), range(U.shape[1]))):
        V = U.clone()
        V[j, c] = 0.0
        out[j, c] = (Z - X @ V.T @ U2.T).pow(2).sum()
    return out


def check_1(mod, log):
    g = gen(1)
    for N, n, m, k in [(7, 5, 4, 3), (9, 6, 5, 7)]:
        X, U, U2 = randn(N, n, g=g) * randn(n, g=g).exp(), randn(m, n, g=g), randn(k, m, g=g)
        ref = bruteforce_dz(X, U, U2)
        expect_close(mod.foresight_bruteforce(X, U, U2), ref, f"foresight_bruteforce, random X {N}×{n}, U {m}×{n}, U2 {k}×{m}",
                     rtol=1e-9)
        expect_close(mod.foresight_closed_form(X, U, U2), ref, f"foresight_closed_form, random X {N}×{n}, U {m}×{n}, U2 {k}×{m}",
                     rtol=1e-9)
    X, U, U2 = randn(40, 24, g=g) * randn(24, g=g).exp(), randn(16, 24, g=g), randn(12, 16, g=g)
    expect_close(mod.foresight_closed_form(X, U, U2), bruteforce_dz(X, U, U2), "foresight_closed_form, random 16×24 layer",
                 rtol=1e-9)
    log("random layers: both functions equal ‖ΔZ‖²_F recomputed from scratch for every weight")

    b = real_block(1)
    U, U2 = C.weight(b, "mlp.up_proj"), C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.up_proj"]
    cf = mod.foresight_closed_form(X, U, U2)
    e = real_energy(b)["mlp.up_proj"]
    expect_close(cf, xpert.foresight_scores(U, X.pow(2).sum(0), e), f"block {b} up_proj (real weights): "
                 "closed form vs xpert.foresight_scores with xpert.consumer_energy", rtol=1e-5)
    entries = [(int(j), int(c)) for j, c in zip(torch.randint(U.shape[0], (25,), generator=g),
                                                 torch.randint(U.shape[1], (25,), generator=g))]
    bf = bruteforce_dz(X, U, U2, entries)
    worst = max(abs(cf[j, c].item() - bf[j, c].item()) / bf[j, c].item() for j, c in entries)
    expect(worst < 1e-6, f"block {b} up_proj (real weights): closed form differs from ‖ΔZ‖² by {worst:.3g} (relative)")
    log(f"{C.tiny_model()[2]}, block {b} up_proj → down_proj on {X.shape[0]} legal tokens: closed form = "
        f"xpert.foresight_scores, and = ‖ΔZ‖² on 25 random weights (worst relative difference {worst:.1e})")


# -----------------------------------------------------------------------------
# Exercise 2 — the propagation factor and the selection group (PAPER.md §4.3)

def check_2(mod, log):
    g = gen(2)
    for (m, n), p in itertools.product([(6, 10), (7, 9), (4, 90)], [0.0, 0.3, 0.5, 0.7]):
        scores = randn(m, n, g=g)
        for group, groups in (("out", rows(m, n)), ("in", cols(m, n)), ("layer", [list(range(m * n))])):
            mask = mod.group_mask(scores, p, group)
            expect_mask(mask, (m, n), f"group_mask({m}×{n}, p={p}, {group!r})")
            ref = ref_group_prune(scores, p, groups)
            expect(torch.equal(mask, ref), f"group_mask({m}×{n}, p={p}, {group!r}): {int((mask != ref).sum())} positions "
                   f"differ from a brute-force sort of every group (prune the floor(p·size) LOWEST of each group; "
                   f"{'rows' if group == 'out' else 'columns' if group == 'in' else 'the whole matrix'})")
    try:
        mod.group_mask(randn(3, 4, g=g), 0.5, "rows")
    except ValueError:
        pass
    else:
        raise Fail("group_mask(..., group='rows') should raise ValueError (unknown group)")
    log("group_mask equals a brute-force sort of every group (3 shapes × 4 sparsities × 3 groups)")

    b = real_block(2)
    U = C.weight(b, "mlp.gate_proj")
    E = C.layer_inputs("legal")[f"model.layers.{b}.mlp.gate_proj"].pow(2).sum(0)
    e_real = real_energy(b)["mlp.gate_proj"]
    base = U.pow(2) * E[None, :]  # Wanda², no propagation factor
    trials = [("real e_j", e_real)] + [(f"random e_j #{t}", torch.rand(U.shape[0], generator=g, dtype=F64) * 10 + 0.01)
                                       for t in range(2)]
    observed, lines = set(), []
    for group in ("out", "in", "layer"):
        changed = [int((mod.group_mask(base * e[:, None], 0.4, group) != mod.group_mask(base, 0.4, group)).sum())
                   for _, e in trials]
        if max(changed) == 0:
            observed.add(group)
        lines.append(f"  group {group!r:8}: weights whose keep/prune flips when e_j is applied: "
                     + ", ".join(f"{c} ({name})" for c, (name, _) in zip(changed, trials)))
    claim = mod.groups_where_e_is_inert()
    expect(isinstance(claim, (set, frozenset, list, tuple)), "groups_where_e_is_inert() should return a set of group names")
    claim = set(claim)
    expect(claim == observed, f"groups_where_e_is_inert() = {sorted(claim)}, but on block {b} gate_proj (40% sparsity) "
           f"e_j never changed the mask exactly in {sorted(observed)}:\n" + "\n".join(lines))
    log(f"{C.tiny_model()[2]}, block {b} gate_proj ({U.shape[0]}×{U.shape[1]}), p=0.4:\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 3 — Wanda, and ForeSight 'out' = Wanda (PAPER.md §4.3, §6)

def check_3(mod, log):
    g = gen(3)
    for (m, n, N), p in itertools.product([(8, 12, 30), (5, 16, 20)], [0.25, 0.5, 0.6]):
        W, X = randn(m, n, g=g), randn(N, n, g=g) * (randn(n, g=g) * 1.5).exp()  # very uneven column scales
        mask = mod.wanda_mask(W, X, p)
        expect_mask(mask, (m, n), f"wanda_mask({m}×{n}, p={p})")
        ref = ref_wanda(W, X, p)
        expect(torch.equal(mask, ref), f"wanda_mask(random {m}×{n}, {N} tokens, p={p}): {int((mask != ref).sum())} positions "
               "differ from the reference |W[i,c]|·‖X_c‖₂ pruned per output row")
    log("wanda_mask equals a loop-by-loop reference on random layers (6 cases)")

    b = real_block(1)
    Xs, e = C.layer_inputs("legal"), real_energy(b)
    lines, worst = [], 0.0
    for proj in PROJECTIONS:
        W, X = C.weight(b, proj), Xs[f"model.layers.{b}.{proj}"]
        mask = mod.wanda_mask(W, X, 0.5)
        expect_mask(mask, W.shape, f"wanda_mask(block {b} {proj})")
        ref = ref_wanda(W, X, 0.5)
        expect(torch.equal(mask, ref), f"wanda_mask(block {b} {proj}, real weights): {int((mask != ref).sum())} positions "
               "differ from the reference")
        fs = xpert.foresight_scores(W, X.pow(2).sum(0), e[proj])
        out, layer = xpert.select_mask(fs, 0.5, "out"), xpert.select_mask(fs, 0.5, "layer")
        worst = max(worst, (mask != out).double().mean().item())
        lines.append(f"  {proj:17} IoU(pruned) with ForeSight 'out' {pruned_iou_ref(mask, out):.4f}   "
                     f"with ForeSight 'layer' {pruned_iou_ref(mask, layer):.4f}")
    expect(worst <= 1e-3, f"Wanda and ForeSight 'out' should agree (up to float rounding of near-ties) but differ on "
           f"{100 * worst:.2f}% of a matrix")
    log(f"{C.tiny_model()[2]}, block {b}, p=0.5, {Xs[f'model.layers.{b}.mlp.gate_proj'].shape[0]} legal tokens "
        f"(chance IoU {0.5 / 1.5:.3f}):\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 4 — PBS (our reading, PAPER.md §5.1) vs lstsq; rank 8 vs 64

def pbs_lstsq(U, A, M, X, s, lam):
    """Row by row: min_δ ‖s·X_K A_Kᵀ δ − X_S R_Sᵀ‖² + λ‖δ‖², as one augmented least-squares problem."""
    r = A.shape[0]
    dB = torch.zeros(U.shape[0], r, dtype=F64)
    for i in range(U.shape[0]):
        K, S = M[i], ~M[i]
        D = torch.cat([s * X[:, K] @ A[:, K].T, math.sqrt(lam) * torch.eye(r, dtype=F64)])
        t = torch.cat([X[:, S] @ U[i, S], torch.zeros(r, dtype=F64)])
        dB[i] = torch.linalg.lstsq(D, t[:, None], driver="gelsd").solution[:, 0]
    return dB


def random_row_mask(m, n, p, g):
    keep = torch.ones(m, n, dtype=torch.bool)
    for i in range(m):
        keep[i, torch.randperm(n, generator=g)[:n_pruned(n, p)]] = False
    return keep


def check_4(mod, log):
    g = gen(4)
    for m, n, r, N, s, lam in [(6, 10, 3, 40, 2.0, 1e-3), (5, 12, 5, 30, 0.5, 1e-2)]:
        X = randn(N, n, g=g) @ (randn(n, n, g=g) / math.sqrt(n) + torch.eye(n, dtype=F64))  # correlated inputs
        U, A, M = randn(m, n, g=g), randn(r, n, g=g), random_row_mask(m, n, 0.5, g)
        dB = mod.pbs_solve(U, A, M, X.T @ X, s, lam)
        expect_close(dB, pbs_lstsq(U, A, M, X, s, lam), f"pbs_solve(random {m}×{n}, r={r}, s={s}, λ={lam})", rtol=1e-6)
    log("pbs_solve equals torch.linalg.lstsq on every row's least-squares problem (2 random layers)")

    b = real_block(1)
    U = C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.down_proj"]
    X_test = C.layer_inputs("legal", 8, 8)[f"model.layers.{b}.mlp.down_proj"]  # 8 other windows
    H, s = X.T @ X, 2.0
    M = xpert.select_mask(U.abs() * X.pow(2).sum(0).sqrt()[None, :], 0.5, "out")  # Wanda mask, 50%
    A64 = randn(64, U.shape[1], g=g) / math.sqrt(3 * U.shape[1])  # kaiming-uniform-like scale
    errs = {"none": (C.rel_output_error(U * M, U, X), C.rel_output_error(U * M, U, X_test))}
    for r in (8, 64):
        A = A64[:r]  # A_8 = the first 8 rows of A_64: the rank-64 adapter can do all the rank-8 one can
        lam = 1e-9 * s * s * torch.trace(A @ H @ A.T).item() / r
        dB = mod.pbs_solve(U, A, M, H, s, lam)
        expect_close(dB, xpert.pbs_output(U, A, M, H, s, lam, lam_relative=False),
                     f"pbs_solve(block {b} down_proj, r={r}) vs xpert.pbs_output", rtol=1e-4, atol=1e-12)
        W = (U + s * dB @ A) * M
        errs[f"r={r}"] = (C.rel_output_error(W, U, X), C.rel_output_error(W, U, X_test))
    lines = [f"  {k:5}  calibration {v[0]:.4f}   held-out {v[1]:.4f}" for k, v in errs.items()]
    report = f"{C.tiny_model()[2]}, block {b} down_proj ({U.shape[0]}×{U.shape[1]}), 50% Wanda mask, " \
             f"|S_i| = {n_pruned(U.shape[1], 0.5)} pruned per row; relative output error:\n" + "\n".join(lines)
    cal = {k: v[0] for k, v in errs.items()}
    expect(cal["r=64"] < cal["r=8"] < cal["none"], "on the calibration tokens PBS must order the errors "
           "r=64 < r=8 < no PBS (each is the minimiser over a larger set):\n" + report)
    log(report)


# -----------------------------------------------------------------------------
# Exercise 5 — mask IoU, chance level, domain vs general calibration (PAPER.md §7)

def check_5(mod, log):
    g = gen(5)
    for shape in [(3, 4), (5, 7), (11,), (4, 6, 2)]:
        for pa, pb in [(0.5, 0.5), (0.3, 0.6), (0.9, 0.2)]:
            a = torch.rand(shape, generator=g) >= pa
            b = torch.rand(shape, generator=g) >= pb
            v, ref = mod.pruned_iou(a, b), pruned_iou_ref(a, b)
            expect(isinstance(v, (float, int)) or (isinstance(v, torch.Tensor) and v.numel() == 1),
                   f"pruned_iou should return a number, got {type(v).__name__}")
            expect(abs(float(v) - ref) < 1e-12, f"pruned_iou on random masks {shape}: {float(v):.6f}, a brute-force count "
                   f"of the PRUNED positions (keep == False) gives {ref:.6f}")
            expect(abs(float(mod.pruned_iou(b, a)) - ref) < 1e-12, "pruned_iou should be symmetric")
    full, some = torch.ones(4, 5, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)
    some[1, 2] = False
    expect(abs(float(mod.pruned_iou(full, full)) - 1.0) < 1e-12, "pruned_iou of two masks that prune nothing should be 1.0")
    expect(abs(float(mod.pruned_iou(full, some))) < 1e-12, "pruned_iou(nothing pruned, one weight pruned) should be 0.0")
    log("pruned_iou equals a brute-force count (12 random cases + edge cases)")

    size = 200_000
    for p in (0.1, 0.4, 0.5, 0.8):
        k = n_pruned(size, p)
        mc = []
        for _ in range(3):
            a = torch.ones(size, dtype=torch.bool)
            b = torch.ones(size, dtype=torch.bool)
            a[torch.randperm(size, generator=g)[:k]] = False
            b[torch.randperm(size, generator=g)[:k]] = False
            mc.append(pruned_iou_ref(a, b) if size < 1000 else ((~a & ~b).sum() / (~a | ~b).sum()).item())
        mc = sum(mc) / len(mc)
        v = float(mod.chance_iou(p))
        expect(abs(v - mc) < 0.005, f"chance_iou({p}) = {v:.4f}, but two random masks with {p:.0%} pruned have IoU {mc:.4f} "
               f"(Monte Carlo, {size:,} positions)")
    log("chance_iou matches Monte Carlo at p = 0.1, 0.4, 0.5, 0.8")

    p = 0.4
    dom, gen_, test = C.layer_inputs("legal"), C.layer_inputs("general"), C.layer_inputs("legal", 8, 8)
    model, _, desc = C.tiny_model()
    per_proj = {proj: [] for proj in PROJECTIONS}
    cost = {"legal-calibrated": 0.0, "general-calibrated": 0.0}
    for b in range(len(model.model.layers)):
        for proj in PROJECTIONS:
            key = f"model.layers.{b}.{proj}"
            W = C.weight(b, proj)
            ma = xpert.select_mask(W.abs() * dom[key].pow(2).sum(0).sqrt()[None, :], p, "out")
            mb = xpert.select_mask(W.abs() * gen_[key].pow(2).sum(0).sqrt()[None, :], p, "out")
            v = float(mod.pruned_iou(ma, mb))
            pa, pb = (~ma).numpy().ravel(), (~mb).numpy().ravel()
            ref = (pa & pb).sum() / (pa | pb).sum()
            expect(abs(v - ref) < 1e-9, f"pruned_iou on {key}: {v:.6f}, expected {ref:.6f}")
            per_proj[proj].append(v)
            cost["legal-calibrated"] += C.rel_output_error(W * ma, W, test[key]) / (7 * len(model.model.layers))
            cost["general-calibrated"] += C.rel_output_error(W * mb, W, test[key]) / (7 * len(model.model.layers))
    general = "WikiText-2" if C.assets_dir() else "health text (WikiText-2 absent)"
    lines = [f"  {proj:17} mean IoU over blocks {sum(v) / len(v):.3f}" for proj, v in per_proj.items()]
    log(f"{desc}: Wanda masks at p={p} calibrated on legal text vs {general} (chance {float(mod.chance_iou(p)):.3f}):\n"
        + "\n".join(lines) + "\n  mean relative output error on held-out legal tokens (one-shot, each layer alone): "
        + ", ".join(f"{k} {v:.4f}" for k, v in cost.items()))


# -----------------------------------------------------------------------------
# Exercise 6 — N:M masks (PAPER.md §4.3)

def ref_nm(scores, N, M):
    m, n = scores.shape
    return ref_group_prune(scores, N / M, [[i * n + k * M + t for t in range(M)] for i in range(m) for k in range(n // M)])


def check_6(mod, log):
    g = gen(6)
    for (N, M), (m, n) in itertools.product([(2, 4), (1, 4), (3, 4), (4, 8), (2, 8)], [(5, 16), (3, 24)]):
        scores = randn(m, n, g=g)
        mask = mod.nm_mask(scores, N, M)
        expect_mask(mask, (m, n), f"nm_mask({m}×{n}, {N}:{M})")
        pruned = (~mask).reshape(m, n // M, M).sum(-1)
        expect(bool((pruned == N).all()), f"nm_mask({m}×{n}, {N}:{M}): every run of {M} consecutive inputs of a row must "
               f"have exactly {N} pruned; found counts {sorted(set(pruned.reshape(-1).tolist()))}")
        ref = ref_nm(scores, N, M)
        expect(torch.equal(mask, ref), f"nm_mask({m}×{n}, {N}:{M}): {int((mask != ref).sum())} positions differ from a "
               "brute-force reference (prune the N LOWEST of columns k·M … k·M+M−1)")
    scores = randn(6, 12, g=g).abs()
    mask = mod.nm_mask(scores, 2, 4)
    for i in range(6):
        for k in range(3):
            grp = scores[i, 4 * k:4 * k + 4].tolist()
            best = max(sum(grp[t] for t in keep) for keep in itertools.combinations(range(4), 2))
            got = sum(grp[t] for t in range(4) if mask[i, 4 * k + t])
            expect(abs(got - best) < 1e-12, f"2:4 row {i} group {k}: kept score {got:.6f}, but the best of the 6 "
                   f"choices keeps {best:.6f}")
    try:
        mod.nm_mask(randn(3, 10, g=g), 2, 4)
    except ValueError:
        pass
    else:
        raise Fail("nm_mask on 10 inputs with M=4 should raise ValueError")
    log("nm_mask: exact N:M pattern (5 patterns × 2 shapes), equal to a brute-force reference; 2:4 keeps the best of "
        "the 6 choices in every group; ValueError when M does not divide n")

    b = real_block(1)
    Xs = C.layer_inputs("legal")
    lines = []
    for proj in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
        W, X = C.weight(b, proj), Xs[f"model.layers.{b}.{proj}"]
        score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
        nm, un = mod.nm_mask(score, 2, 4), xpert.select_mask(score, 0.5, "out")
        kept_nm, kept_un = (score * nm).sum().item(), (score * un).sum().item()
        expect(kept_nm <= kept_un * (1 + 1e-12), f"{proj}: 2:4 keeps more Wanda score than unstructured 50% per row — "
               "impossible for a correct 2:4 mask")
        lines.append(f"  {proj:17} Wanda score kept: 2:4 {kept_nm / score.sum().item():.4f} vs unstructured "
                     f"{kept_un / score.sum().item():.4f};  relative output error 2:4 "
                     f"{C.rel_output_error(W * nm, W, X):.4f} vs unstructured {C.rel_output_error(W * un, W, X):.4f}")
    log(f"{C.tiny_model()[2]}, block {b}, Wanda scores on legal tokens:\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 7 — the authors' PBS (PAPER.md §5.2) and the fold

def pbs_diag_lstsq(U, A, M, gvec, s, lam):
    """Row by row: min_δ Σ_c g_c (ũ_ic + s·δ·a_c)² + λ‖δ‖² as an augmented least-squares problem."""
    r = A.shape[0]
    Ut = U * ~M
    w = gvec.sqrt()
    D = torch.cat([w[:, None] * s * A.T, math.sqrt(lam) * torch.eye(r, dtype=F64)])  # (n + r, r)
    dB = torch.zeros(U.shape[0], r, dtype=F64)
    for i in range(U.shape[0]):
        t = torch.cat([-w * Ut[i], torch.zeros(r, dtype=F64)])
        dB[i] = torch.linalg.lstsq(D, t[:, None], driver="gelsd").solution[:, 0]
    return dB


def check_7(mod, log):
    g = gen(7)
    for m, n, r, s, lam in [(5, 9, 3, 2.0, 1e-2), (7, 12, 4, 0.5, 1e-3)]:
        U, A, M = randn(m, n, g=g), randn(r, n, g=g), random_row_mask(m, n, 0.5, g)
        gv = torch.rand(n, generator=g, dtype=F64) * 3 + 0.05
        dB = mod.pbs_diag_solve(U, A, M, gv, s, lam)
        expect_close(dB, pbs_diag_lstsq(U, A, M, gv, s, lam), f"pbs_diag_solve(random {m}×{n}, r={r}, s={s}, λ={lam}) "
                     "vs the per-row minimiser (lstsq)", rtol=1e-6)
        expect_close(dB, xpert.pbs_diag(U, A, M, gv, s, lam, lam_relative=False), "pbs_diag_solve vs xpert.pbs_diag",
                     rtol=1e-6)
    log("pbs_diag_solve equals the lstsq minimiser of every row's objective (2 random layers) and xpert.pbs_diag")

    b = real_block(1)
    U = C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.down_proj"]
    H, rms, s = X.T @ X, (X.pow(2).mean(0)).sqrt(), 2.0
    M = xpert.select_mask(U.abs() * X.pow(2).sum(0).sqrt()[None, :], 0.5, "out")
    none = C.rel_output_error(U * M, U, X)
    lines = [f"  no PBS            {none:.4f}"]
    for r in (8, 64):
        A = randn(r, U.shape[1], g=g) / math.sqrt(3 * U.shape[1])
        lam = 1e-8 * s * s * torch.trace(A @ (A * rms[None, :]).T).item() / r
        dB = mod.pbs_diag_solve(U, A, M, rms, s, lam)
        expect_close(dB, pbs_diag_lstsq(U, A, M, rms, s, lam), f"pbs_diag_solve(block {b} down_proj, r={r})", rtol=1e-5,
                     atol=1e-12)
        diag = C.rel_output_error((U + s * dB @ A) * M, U, X)
        out = C.rel_output_error((U + s * xpert.pbs_output(U, A, M, H, s) @ A) * M, U, X)
        expect(out < none, f"r={r}: the 'output' reading should beat no PBS on the calibration tokens")
        lines.append(f"  r={r:<3} diag (yours) {diag:.4f}   output (xpert.pbs_output) {out:.4f}")
    log(f"{C.tiny_model()[2]}, block {b} down_proj, 50% Wanda mask, relative output error on the calibration "
        "tokens after the fold:\n" + "\n".join(lines))


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7}


# -----------------------------------------------------------------------------

def check(n, module=None, verbose=True):
    """Run the graded checks of exercise n against `module` (a module, a dotted name, or None for the student
    file exercises/exN_*.py). Prints PASS / FAIL and the reason; returns True when everything passed."""
    name = EXERCISES[n]
    say = print if verbose else (lambda *a, **k: None)
    try:
        if module is None:
            module = importlib.import_module(f"exercises.{name}")
        elif isinstance(module, str):
            module = importlib.import_module(module)
    except Exception as e:
        say(f"exercise {n} ({name}): FAIL — the file does not import: {type(e).__name__}: {e}")
        return False
    where = getattr(module, "__name__", repr(module))
    say(f"exercise {n} ({name}) — grading {where}")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    # the checks multiply many tiny matrices: one thread is ~1000× faster than a contended thread pool there
    torch.set_num_threads(1)
    try:
        CHECKS[n](module, lambda msg: say("  " + msg.replace("\n", "\n  ")))
    except NotImplementedError as e:
        say(f"exercise {n}: FAIL — not implemented yet ({e or 'NotImplementedError'})")
        return False
    except Fail as e:
        say(f"exercise {n}: FAIL — {e}")
        return False
    except Exception as e:  # a bug in the submission: report it, never crash the grader
        tb = traceback.extract_tb(e.__traceback__)
        frame = next((f for f in reversed(tb) if "check.py" not in f.filename and "_common.py" not in f.filename), tb[-1])
        say(f"exercise {n}: FAIL — your code raised {type(e).__name__}: {e}  "
            f"(at {os.path.basename(frame.filename)}:{frame.lineno})")
        return False
    finally:
        torch.set_num_threads(threads)
    say(f"exercise {n}: PASS")
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    solution = "--solution" in argv
    args = [a for a in argv if a != "--solution"]
    if len(args) != 1 or not (args[0] == "all" or (args[0].isdigit() and int(args[0]) in EXERCISES)):
        print(f"usage: python -m exercises.check N|all [--solution]   (N in {sorted(EXERCISES)})", file=sys.stderr)
        return 2
    ns = sorted(EXERCISES) if args[0] == "all" else [int(args[0])]
    results = {}
    for n in ns:
        module = f"exercises.solutions.{EXERCISES[n]}" if solution else None
        results[n] = check(n, module)
    if len(ns) > 1:
        print("summary: " + "  ".join(f"{n}:{'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
