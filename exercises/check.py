"""
Grader of the exercises in EXERCISES.md.

    python -m exercises.check 3                       # grade your exercises/ex3_wanda.py
    python exercises/check.py 3                       # the same
    python -m exercises.check 3 --file my_ex3.py      # grade any file with the same functions
    python -m exercises.check all                     # every exercise
    python -m exercises.check 3 --solution            # the reference solution (what PASS looks like)

check(n, module) runs the graded checks of exercise n against `module` (default: the student file;
also a module, a dotted name or a path to a .py file), prints PASS or FAIL with the reason, and
returns True / False; the CLI exits 0 when everything passed, 1 otherwise. Every check compares with
an independent computation (brute-force loops, enumeration, torch.linalg.lstsq, an exact
hypergeometric sum) on seeded random inputs, then on a real layer of a small LLaMA.

Three kinds of answers that look right on easy inputs are caught on purpose (issue 14):
  - ties: masks are checked on integer scores with exact zeros and tied N:M groups (real prune events
    score exactly 0 wherever U = 0), and every tie-break is accepted, so a threshold mask
    (`scores > kthvalue`) fails with a message about ties while any exact top-k passes;
  - wrappers: while an answer runs, the library functions it is graded against (xpert.foresight_scores,
    select_mask, pbs_output, pbs_diag, ...) are replaced by tripwires, so an answer that calls them
    fails with a message naming the call;
  - simulations and disguised formulas: chance_iou is held to 1e-7 of the exact value, and the
    brute force of exercise 1 is graded on non-linear consumers given as callables.
The reference solutions live outside this package (exercises_solutions/) and are imported only with
--solution.
"""
import builtins
import importlib
import importlib.util
import inspect
import itertools
import math
import os
import sys
import traceback
import types

import torch
import torch.nn.functional as F

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


class LibraryCall(Fail):
    """A submission called a library function it is graded against."""


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


# -----------------------------------------------------------------------------
# Library off while an answer runs: a wrapper around the function it is graded against proves nothing.

LIBRARY = ("foresight_scores", "consumer_energy", "select_mask", "_prune_groups", "pbs_output", "pbs_diag",
           "pca_A", "prune_event", "prune_oneshot", "sparsegpt_prune")
_TRIP_CODES = {}  # tripwire code object -> library name
_HITS = []  # library names called by the answer now running
_OFF = {"depth": 0, "saved": []}


def _tripwire(*args, **kwargs):
    # runs with the library function's globals (its __code__ replaces the function's): the name below is put
    # there while the library is off
    return _exercises_library_called()  # noqa: F821


def _library_called():
    name = _TRIP_CODES.get(sys._getframe(1).f_code, "?")
    _HITS.append(name)
    raise LibraryCall(name)


def _trip_code(name):
    code = _tripwire.__code__.replace(co_name=name)
    try:
        code = code.replace(co_qualname=f"xpert.{name}")
    except TypeError:  # Python < 3.11
        pass
    _TRIP_CODES[code] = name
    return code


class library_off:
    """Context manager: every xpert function in LIBRARY raises LibraryCall when called. The code object of
    each function is swapped, so every reference to it is caught (xpert.f, `from xpert import f`, an alias,
    functools.partial); a function that cannot be swapped is replaced on the module instead."""

    def __enter__(self):
        _OFF["depth"] += 1
        if _OFF["depth"] > 1:
            return self
        saved = _OFF["saved"]
        for name in LIBRARY:
            f = getattr(xpert, name, None)
            if f is None:
                continue
            target = inspect.unwrap(f)
            if isinstance(target, types.FunctionType) and not target.__code__.co_freevars:
                saved.append(("globals", target.__globals__, None))
                target.__globals__["_exercises_library_called"] = _library_called  # xpert's, or its submodule's
                saved.append(("code", target, target.__code__))
                target.__code__ = _trip_code(name)
            else:
                trip = types.FunctionType(_trip_code(name), {"__builtins__": builtins,
                                                             "_exercises_library_called": _library_called}, name)
                saved.append(("attr", name, f))
                setattr(xpert, name, trip)
        return self

    def __exit__(self, *exc):
        _OFF["depth"] -= 1
        if _OFF["depth"] == 0:
            for kind, a, b in reversed(_OFF["saved"]):
                if kind == "code":
                    a.__code__ = b
                elif kind == "globals":
                    a.pop("_exercises_library_called", None)
                else:
                    setattr(xpert, a, b)
            _OFF["saved"].clear()
        return False


class Submission:
    """The answer as the checks see it: every function of it runs with the library off, and a call to
    the library (even one the answer caught) fails the exercise with a message that names it."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        obj = getattr(self._module, name)
        if not callable(obj) or isinstance(obj, type):
            return obj

        def call(*args, **kwargs):
            del _HITS[:]
            try:
                with library_off():
                    return obj(*args, **kwargs)
            except LibraryCall:
                pass
            finally:
                hits = list(_HITS)
                del _HITS[:]
                if hits:
                    raise LibraryCall(f"{name}() calls xpert.{hits[0]}: this exercise asks you to write that "
                                      "computation yourself. The grader checks answers against xpert, so an answer "
                                      "that calls it (or wraps it) proves nothing")
        call.__name__ = name
        return call


def expect_top_k(mask, scores, k, what, unit="row", name_of=None, rtol=1e-9):
    """mask (G, S) keeps the top of scores (G, S) in every group: exactly k pruned per group, and no kept
    score below a pruned one (up to rtol of the group's largest |score|). Every tie-break is accepted.
    A wrong count at a tie names the tie (a threshold mask cannot break ties)."""
    name_of = name_of or (lambda i: f"{unit} {i}")
    pruned = ~mask
    counts = pruned.sum(1)
    bad = (counts != k).nonzero()
    if len(bad):
        i = int(bad[0])
        c, row = int(counts[i]), scores[i]
        srt = row.sort().values
        total = f" (in all {int(counts.sum())} pruned instead of {k * mask.shape[0]})"
        cut = srt[k - 1] if k > 0 else srt[0]
        n_tied = int((row == cut).sum())
        if 0 < k < row.numel() and srt[k] == cut:  # the k-th and (k+1)-th lowest are equal: no threshold works
            raise Fail(f"{what}: {name_of(i)} has {c} pruned, but exactly {k} must go{total}. {n_tied} of its scores "
                       f"are tied at the cut (value {cut.item():.6g}): a threshold on the k-th lowest score (score <= kth, "
                       f"or keep score > kth) prunes all tied weights or none of them. Select exactly {k} positions "
                       "(argsort / topk); any choice among the tied ones is accepted")
        raise Fail(f"{what}: {name_of(i)} has {c} pruned, but exactly {k} must go (floor(p·size + 1e-6)){total}")
    inf = torch.tensor(float("inf"), dtype=scores.dtype)
    hi_pruned = torch.where(pruned, scores, -inf).max(1).values
    lo_kept = torch.where(mask, scores, inf).min(1).values
    tol = rtol * scores.abs().max(1).values
    viol = (hi_pruned > lo_kept + tol).nonzero()
    if len(viol):
        i = int(viol[0])
        raise Fail(f"{what}: {name_of(i)} prunes a score of {hi_pruned[i].item():.6g} but keeps a lower one "
                   f"({lo_kept[i].item():.6g}): prune the {k} LOWEST scores of every {unit}")


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


def expect_close(a, b, what, rtol=1e-7, atol=0.0, mistakes=()):
    """a ≈ b; if not, and a matches one of `mistakes` [(value, 'what that mistake is'), ...], name it."""
    if not isinstance(a, torch.Tensor):
        raise Fail(f"{what}: expected a tensor, got {type(a).__name__}")
    if tuple(a.shape) != tuple(b.shape):
        raise Fail(f"{what}: shape {tuple(a.shape)}, expected {tuple(b.shape)}")
    ok, rel = close(a, b, rtol, atol)
    if not ok:
        for value, mistake in mistakes:
            if close(a, value, 1e-6)[0]:
                raise Fail(f"{what}: differs from the independent computation (max relative difference {rel:.3g}); "
                           f"it equals {mistake}")
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


def pruned_iou_ref(a, b):
    pa, pb = (~a).reshape(-1).tolist(), (~b).reshape(-1).tolist()
    inter = sum(1 for x, y in zip(pa, pb) if x and y)
    union = sum(1 for x, y in zip(pa, pb) if x or y)
    return 1.0 if union == 0 else inter / union


# -----------------------------------------------------------------------------
# Exercise 1 — ForeSight = ‖ΔZ‖² of the consumer's output (PAPER.md §4.1)

def bruteforce_dz(X, U, consumer, entries=None):
    """‖Z − Z'‖²_F with Z = consumer(X Uᵀ) and Z' = consumer(X Vᵀ) recomputed from scratch after zeroing
    U[j, c] (V = U but V[j, c] = 0); all entries or the given ones. consumer: a callable (N × m) -> (N × k)."""
    Z = consumer(X @ U.T)
    out = torch.full(U.shape, float("nan"), dtype=F64)
    for j, c in (entries if entries is not None else itertools.product(range(U.shape[0]), range(U.shape[1]))):
        V = U.clone()
        V[j, c] = 0.0
        out[j, c] = (Z - consumer(X @ V.T)).pow(2).sum()
    return out


def linear(U2):
    return lambda Y: Y @ U2.T


def closed_form_mistakes(X, U, U2):
    """Plausible wrong closed forms, so that a FAIL can say which one an answer is."""
    E, out = X.pow(2).sum(0)[None, :], []
    if U2.shape[0] == U2.shape[1]:  # only a square consumer lets the wrong axis broadcast
        out.append((U.pow(2) * E * U2.pow(2).sum(1)[:, None],
                    "U² · ‖X_c‖² · e with e taken from the rows of U2 (Σ_j U2[k, j]²). Which entries of U2 "
                    "multiply output j of U in Z = X Uᵀ U2ᵀ?"))
    e = U2.pow(2).sum(0)[:, None]
    out.append((U.abs() * E.sqrt() * e, "|U|·‖X_c‖·e (Wanda's powers): ‖ΔZ‖² is a squared norm"))
    out.append((U.pow(2) * E.sqrt() * e, "U²·‖X_c‖·e: the column norm is not squared"))
    return out


def check_1(mod, log):
    g = gen(1)
    # the square consumer (k = m) comes first: there a consumer read along the wrong axis broadcasts
    # silently instead of raising
    for N, n, m, k in [(8, 5, 4, 4), (7, 5, 4, 3), (9, 6, 5, 7)]:
        X, U, U2 = randn(N, n, g=g) * randn(n, g=g).exp(), randn(m, n, g=g), randn(k, m, g=g)
        ref = bruteforce_dz(X, U, linear(U2))
        shape = f"random X {N}×{n}, U {m}×{n}, U2 {k}×{m}"
        expect_close(mod.foresight_closed_form(X, U, U2), ref, f"foresight_closed_form, {shape}", rtol=1e-9,
                     mistakes=closed_form_mistakes(X, U, U2))
        expect_close(mod.foresight_bruteforce(X, U, linear(U2)), ref,
                     f"foresight_bruteforce, {shape}, linear consumer Y ↦ Y U2ᵀ", rtol=1e-9,
                     mistakes=[(ref.sqrt(), "‖ΔZ‖_F, not its square ‖ΔZ‖²_F")])
    X, U, U2 = randn(40, 24, g=g) * randn(24, g=g).exp(), randn(16, 24, g=g), randn(12, 16, g=g)
    expect_close(mod.foresight_closed_form(X, U, U2), bruteforce_dz(X, U, linear(U2)),
                 "foresight_closed_form, random 16×24 layer", rtol=1e-9, mistakes=closed_form_mistakes(X, U, U2))
    log("random layers (a square consumer among them): both functions equal ‖ΔZ‖²_F recomputed from scratch for "
        "every weight")

    # non-linear consumers: only a brute force that calls the consumer on the changed output gets them right
    N, n, m, k = 9, 6, 5, 7
    X, U, U2 = randn(N, n, g=g) * randn(n, g=g).exp(), randn(m, n, g=g), randn(k, m, g=g)
    gate = F.silu(randn(N, m, g=g))
    for name, consumer in [("tanh, Y ↦ tanh(Y) U2ᵀ", lambda Y: torch.tanh(Y) @ U2.T),
                           ("per-token gate, Y ↦ (silu(G) ⊙ Y) U2ᵀ as in SwiGLU", lambda Y: (gate * Y) @ U2.T)]:
        ref = bruteforce_dz(X, U, consumer)
        ok, rel = close(mod.foresight_bruteforce(X, U, consumer), ref, 1e-9)
        expect(ok, f"foresight_bruteforce with a non-linear consumer ({name}): differs from ‖consumer(X Uᵀ) − "
               f"consumer(X Vᵀ)‖²_F recomputed from scratch for every weight (max relative difference {rel:.3g}). "
               "A brute force must zero each weight and call the consumer on the changed layer output: no closed "
               "form holds once the consumer is not linear")
    log("non-linear consumers given as callables (tanh, a per-token SwiGLU-like gate): the brute force equals ‖ΔZ‖²_F "
        "recomputed from scratch")

    b = real_block(1)
    U, U2 = C.weight(b, "mlp.up_proj"), C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.up_proj"]
    cf = mod.foresight_closed_form(X, U, U2)
    e = real_energy(b)["mlp.up_proj"]
    expect_close(cf, xpert.foresight_scores(U, X.pow(2).sum(0), e), f"block {b} up_proj (real weights): "
                 "closed form vs xpert.foresight_scores with xpert.consumer_energy", rtol=1e-5)
    entries = [(int(j), int(c)) for j, c in zip(torch.randint(U.shape[0], (25,), generator=g),
                                                 torch.randint(U.shape[1], (25,), generator=g))]
    bf = bruteforce_dz(X, U, linear(U2), entries)
    worst = max(abs(cf[j, c].item() - bf[j, c].item()) / bf[j, c].item() for j, c in entries)
    expect(worst < 1e-6, f"block {b} up_proj (real weights): closed form differs from ‖ΔZ‖² by {worst:.3g} (relative)")
    # the same 25 weights through the block's real SwiGLU: down(silu(gate(x)) ⊙ up(x))
    silu_gate = F.silu(X @ C.weight(b, "mlp.gate_proj").T)
    swiglu = bruteforce_dz(X, U, lambda Y: (silu_gate * Y) @ U2.T, entries)
    ratio = sorted(swiglu[j, c].item() / cf[j, c].item() for j, c in entries)
    log(f"{C.tiny_model()[2]}, block {b} up_proj → down_proj on {X.shape[0]} legal tokens: closed form = "
        f"xpert.foresight_scores, and = ‖ΔZ‖² on 25 random weights (worst relative difference {worst:.1e});\n"
        f"through the real SwiGLU the same 25 weights change the block output by {ratio[0]:.3g}× to {ratio[-1]:.3g}× "
        f"(median {ratio[12]:.3g}×) of their ForeSight score")


# -----------------------------------------------------------------------------
# Exercise 2 — the propagation factor and the selection group (PAPER.md §4.3)

def group_view(t, group):
    """(G, S) view of an m × n tensor: rows for 'out', columns for 'in', one row for 'layer'."""
    return {"out": lambda: t, "in": lambda: t.t(), "layer": lambda: t.reshape(1, -1)}[group]()


UNIT = {"out": "row", "in": "column", "layer": "matrix"}


def tied_scores(m, n, zeros, g):
    """Integer scores with exact ties: `zeros` exact zeros in every row (what a prune event scores wherever
    U = 0), the rest small positive integers (tied among themselves too)."""
    s = torch.randint(1, 4, (m, n), generator=g).to(F64)
    for i in range(m):
        s[i, torch.randperm(n, generator=g)[:zeros]] = 0.0
    return s


def check_2(mod, log):
    g = gen(2)
    cases = [((m, n), p, randn(m, n, g=g)) for (m, n), p in itertools.product([(6, 10), (7, 9), (4, 90)],
                                                                              [0.0, 0.3, 0.5, 0.7])]
    cases += [((8, 20), p, tied_scores(8, 20, 12, g)) for p in (0.5, 0.3)]  # ties: 12 exact zeros per row
    for (m, n), p, scores in cases:
        kind = "integer scores with exact ties" if scores.eq(0).any() else "random scores"
        for group in ("out", "in", "layer"):
            mask = mod.group_mask(scores, p, group)
            what = f"group_mask({m}×{n} {kind}, p={p}, {group!r})"
            expect_mask(mask, (m, n), what)
            sv = group_view(scores, group)
            expect_top_k(group_view(mask, group), sv, n_pruned(sv.shape[1], p), what, UNIT[group],
                         name_of=(lambda i: "the matrix") if group == "layer" else None, rtol=0.0)
    try:
        mod.group_mask(randn(3, 4, g=g), 0.5, "rows")
    except ValueError:
        pass
    else:
        raise Fail("group_mask(..., group='rows') should raise ValueError (unknown group)")
    log("group_mask prunes exactly floor(p·size) of the lowest scores of every group (3 groups × 3 shapes × 4 "
        "sparsities, and integer scores with exact ties)")

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
    # no table here: it is what the exercise asks you to prove (it is printed once the claim is right)
    expect(claim == observed, f"groups_where_e_is_inert() = {sorted(claim)} is not the set of groups in which a "
           "positive per-row factor can never change the mask. Argue it on paper: inside which groups is e_j the "
           "same number for every score? (The grader's measurement is printed once your claim is right.)")
    log(f"{C.tiny_model()[2]}, block {b} gate_proj ({U.shape[0]}×{U.shape[1]}), p=0.4:\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 3 — Wanda, and how it relates to ForeSight (PAPER.md §4.3, §6)

def ref_wanda_scores(W, X):
    """Wanda's score by loops: |W[i,c]|·sqrt(Σ_t X[t,c]²)."""
    m, n = W.shape
    norms = [math.sqrt(sum(v * v for v in X[:, c].tolist())) for c in range(n)]
    return torch.tensor([[abs(W[i, c].item()) * norms[c] for c in range(n)] for i in range(m)], dtype=F64)


def expect_wanda(mask, W, X, p, what):
    expect_mask(mask, W.shape, what)
    expect_top_k(mask, ref_wanda_scores(W, X), n_pruned(W.shape[1], p), what + " vs the reference |W[i,c]|·‖X_c‖₂ "
                 "per output row", "row")


def check_3(mod, log):
    g = gen(3)
    for (m, n, N), p in itertools.product([(8, 12, 30), (5, 16, 20)], [0.25, 0.5, 0.6]):
        W, X = randn(m, n, g=g), randn(N, n, g=g) * (randn(n, g=g) * 1.5).exp()  # very uneven column scales
        expect_wanda(mod.wanda_mask(W, X, p), W, X, p, f"wanda_mask(random {m}×{n}, {N} tokens, p={p})")
    # a weight folded by an earlier event: 12 exact zeros per row score exactly 0 and tie
    W, X = tied_scores(8, 20, 12, g) * randn(8, 20, g=g).sign(), randn(30, 20, g=g) * (randn(20, g=g) * 1.5).exp()
    for p in (0.5, 0.3):
        expect_wanda(mod.wanda_mask(W, X, p), W, X, p, f"wanda_mask(8×20 weight with 12 exact zeros per row, p={p})")
    log("wanda_mask keeps the top of |W[i,c]|·‖X_c‖₂ per output row, exactly floor(p·n) pruned (6 random cases, and a "
        "weight with exact zeros that tie)")

    b = real_block(1)
    Xs, e = C.layer_inputs("legal"), real_energy(b)
    lines = []
    for proj in PROJECTIONS:
        W, X = C.weight(b, proj), Xs[f"model.layers.{b}.{proj}"]
        mask = mod.wanda_mask(W, X, 0.5)
        expect_wanda(mask, W, X, 0.5, f"wanda_mask(block {b} {proj}, real weights)")
        fs = xpert.foresight_scores(W, X.pow(2).sum(0), e[proj])
        out, layer = xpert.select_mask(fs, 0.5, "out"), xpert.select_mask(fs, 0.5, "layer")
        lines.append(f"  {proj:17} IoU(pruned) with ForeSight 'out' {pruned_iou_ref(mask, out):.4f}   "
                     f"with ForeSight 'layer' {pruned_iou_ref(mask, layer):.4f}")
    # the same layer after an earlier event folded it at 40%: its zeros tie at score 0
    W, X = C.weight(b, "mlp.down_proj"), Xs[f"model.layers.{b}.mlp.down_proj"]
    W = W * xpert.select_mask(W.abs() * X.pow(2).sum(0).sqrt()[None, :], 0.4, "out")
    expect_wanda(mod.wanda_mask(W, X, 0.5), W, X, 0.5, f"wanda_mask(block {b} down_proj already 40% sparse, p=0.5)")
    log(f"{C.tiny_model()[2]}, block {b}, p=0.5, {Xs[f'model.layers.{b}.mlp.gate_proj'].shape[0]} legal tokens "
        f"(chance IoU {0.5 / 1.5:.3f}; down_proj already 40% sparse: exact count):\n" + "\n".join(lines))


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

def expected_iou(p, n):
    """Exact E[|P_a ∩ P_b| / |P_a ∪ P_b|] for two independent, uniformly random masks that each prune k = p·n
    of n positions: the overlap i is hypergeometric, and then the IoU is i / (2k − i)."""
    k = round(p * n)
    i = torch.arange(max(0, 2 * k - n), k + 1, dtype=F64)

    def lg(x):
        return torch.lgamma(torch.as_tensor(x, dtype=F64))
    log_pmf = (lg(k + 1) - lg(i + 1) - lg(k - i + 1)  # C(k, i): which of a's pruned positions b prunes too
               + lg(n - k + 1) - lg(k - i + 1) - lg(n - 2 * k + i + 1)  # C(n−k, k−i): b's others, among a's kept
               - (lg(n + 1) - lg(k + 1) - lg(n - k + 1)))  # / C(n, k)
    return (log_pmf.exp() * i / (2 * k - i)).sum().item()


def exact_chance_iou(p, n=200_000):
    """The large-matrix limit of expected_iou: E(n) = L + a/n + O(1/n²), so 2·E(2n) − E(n) = L + O(1/n²)."""
    return 2 * expected_iou(p, 2 * n) - expected_iou(p, n)


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

    for p in (0.1, 0.25, 0.4, 0.5, 0.8):
        v1, v2 = float(mod.chance_iou(p)), float(mod.chance_iou(p))
        expect(v1 == v2, f"chance_iou({p}) returned {v1:.6f}, then {v2:.6f}: the task asks for the exact formula, not "
               "a simulation")
        exact = exact_chance_iou(p)
        rel = abs(v1 - exact) / exact
        expect(rel < 0.1, f"chance_iou({p}) = {v1:.6f} is far from the expected IoU of two independent random masks "
               f"with {p:.0%} pruned (relative difference {rel:.3g}; the grader sums the exact hypergeometric "
               "distribution of their overlap)")
        expect(rel <= 1e-7, f"chance_iou({p}) = {v1:.6f} is close to, but not exactly, the expected IoU of two random "
               f"masks (relative difference {rel:.2g}, tolerance 1e-7): as close as a Monte-Carlo estimate, a count on "
               "a finite matrix or an approximation gets. The task asks for the exact formula, not a simulation")
    log("chance_iou equals the exact expected IoU (hypergeometric overlap, large-matrix limit) to 1e-7 at p = 0.1, "
        "0.25, 0.4, 0.5, 0.8")

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

def expect_nm(mask, scores, N, M, what):
    m, n = scores.shape
    expect_mask(mask, (m, n), what)
    per = n // M
    expect_top_k(mask.reshape(m * per, M), scores.reshape(m * per, M), N,
                 what + f": every run of {M} consecutive inputs (columns k·M … k·M+{M - 1}) of a row", "group",
                 name_of=lambda i: f"row {i // per}, group {i % per} (columns {(i % per) * M}…{(i % per) * M + M - 1})",
                 rtol=0.0)


def check_6(mod, log):
    g = gen(6)
    for (N, M), (m, n) in itertools.product([(2, 4), (1, 4), (3, 4), (4, 8), (2, 8)], [(5, 16), (3, 24)]):
        scores = randn(m, n, g=g)
        expect_nm(mod.nm_mask(scores, N, M), scores, N, M, f"nm_mask(random {m}×{n}, {N}:{M})")
    # ties: integer scores, and the 2:4 groups [0, 0, 0, 1] of a weight an earlier event left mostly zero
    tied = torch.tensor([[0, 0, 0, 1] * 3, [1, 0, 0, 0] * 3, [0, 2, 0, 0, 3, 3, 3, 3, 1, 1, 0, 1]], dtype=F64)
    for name, scores in [("groups [0, 0, 0, 1]", tied), ("integer scores 0…2", torch.randint(0, 3, (6, 16), generator=g)
                                                        .to(F64))]:
        for N, M in [(2, 4), (1, 4), (3, 4)]:
            expect_nm(mod.nm_mask(scores, N, M), scores, N, M, f"nm_mask({name}, tied, {N}:{M})")
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
    log("nm_mask: exactly N of the lowest pruned in every run of M consecutive inputs (5 patterns × 2 shapes, and "
        "tied integer scores); 2:4 keeps the best of the 6 choices in every group; ValueError when M does not divide n")

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

def load_file(path, n=0):
    """Import a .py file as a module (the answer of `--file`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"submission_ex{n}_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution_module(n):
    """The reference solution, kept outside this package (exercises_solutions/ at the repo root)."""
    return f"exercises_solutions.{EXERCISES[n]}"


def check(n, module=None, verbose=True):
    """Run the graded checks of exercise n against `module`: a module (or any object with the functions),
    a dotted name, a path to a .py file, or None for the student file exercises/exN_*.py. Prints PASS / FAIL
    and the reason; returns True when everything passed."""
    name = EXERCISES[n]
    say = print if verbose else (lambda *a, **k: None)
    try:
        if module is None:
            module = importlib.import_module(f"exercises.{name}")
        elif isinstance(module, str) and module.endswith(".py"):
            module = load_file(module, n)
        elif isinstance(module, str):
            module = importlib.import_module(module)
    except Exception as e:
        say(f"exercise {n} ({name}): FAIL — the file does not import: {type(e).__name__}: {e}")
        return False
    where = getattr(module, "__file__", None) or getattr(module, "__name__", None) or type(module).__name__
    if isinstance(where, str) and os.path.isabs(where):
        where = os.path.relpath(where, C.ROOT) if where.startswith(C.ROOT + os.sep) else where
    say(f"exercise {n} ({name}) — grading {where}")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    # the checks multiply many tiny matrices: one thread is ~1000× faster than a contended thread pool there
    torch.set_num_threads(1)
    try:
        CHECKS[n](Submission(module), lambda msg: say("  " + msg.replace("\n", "\n  ")))
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


USAGE = ("usage: python -m exercises.check N|all [--solution | --file PATH]   (N in {ns}; --file grades PATH, a .py "
         "file with the exercise's functions, instead of exercises/exN_*.py)")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = USAGE.format(ns=sorted(EXERCISES))
    solution = "--solution" in argv
    argv = [a for a in argv if a != "--solution"]
    path = None
    if "--file" in argv:
        i = argv.index("--file")
        if i + 1 >= len(argv):
            print(usage, file=sys.stderr)
            return 2
        path = argv[i + 1]
        del argv[i:i + 2]
    args = argv
    if len(args) != 1 or not (args[0] == "all" or (args[0].isdigit() and int(args[0]) in EXERCISES)) \
            or (path and (solution or args[0] == "all")):
        print(usage, file=sys.stderr)
        return 2
    ns = sorted(EXERCISES) if args[0] == "all" else [int(args[0])]
    results = {}
    for n in ns:
        module = solution_module(n) if solution else (os.path.abspath(path) if path else None)
        results[n] = check(n, module)
    if len(ns) > 1:
        print("summary: " + "  ".join(f"{n}:{'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
