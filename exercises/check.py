"""
Grader of the exercises in EXERCISES.md.

    python -m exercises.check 3                     # grade your exercises/ex3_wanda.py
    python exercises/check.py 3                     # the same
    python -m exercises.check 3 --file my_ex3.py    # grade any file with the same functions
    python -m exercises.check all                   # every exercise
    python -m exercises.check 3 --solution          # the reference solution (what PASS looks like)

check(n, module) runs the graded checks of exercise n against `module` (default: the student file;
also a module, a dotted name or a path to a .py file), prints PASS or FAIL with the reason, and
returns True / False; the CLI exits 0 when everything passed, 1 otherwise. Every check compares with
an independent computation (brute-force loops, enumeration, torch.linalg.lstsq, an exact
hypergeometric sum) on seeded random inputs, then on a real layer of a small LLaMA.

Three kinds of answers that look right on easy inputs are caught on purpose (issue 14):
  - ties: masks are checked on integer scores with exact zeros and tied N:M groups (real prune
    events score exactly 0 wherever U = 0), and every tie-break is accepted, so a threshold mask
    (`scores > kthvalue`) fails with a message about ties while any exact top-k passes;
  - wrappers: while an answer runs, the library functions it is graded against
    (xpert.foresight_scores, select_mask, pbs_output, pbs_diag, ...) are replaced by tripwires, so
    an answer that calls them fails with a message naming the call;
  - simulations and disguised formulas: chance_iou is held to 1e-7 of the exact value, and the
    brute force of exercise 1 is graded on non-linear consumers given as callables.
And what a whole class writes (issue 22), through exercises/_guard.py: exit() or any BaseException
other than Ctrl-C is a FAIL (exit code 1; `all` goes on); inputs are compared with a copy after
every call; xpert's private helpers, the grader's references below (REFERENCES) and the solutions
are off limits; every reference is computed after the answer ran; "no loop" is a count of Python
lines; numbers are accepted in any type (a float32 tensor at float32's precision).
The reference solutions live outside this package (exercises_solutions/) and are imported only with
--solution.
"""
import importlib
import importlib.util
import itertools
import copy
import math
import numbers
import os
import sys
import traceback

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: python exercises/check.py N
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exercises import _common as C  # noqa: E402  (also puts the repo root on sys.path)

import xpert  # noqa: E402
from model import PROJECTIONS  # noqa: E402

EXERCISES = {1: "ex1_foresight", 2: "ex2_grouping", 3: "ex3_wanda", 4: "ex4_pbs", 5: "ex5_iou",
             6: "ex6_nm", 7: "ex7_pbs_diag", 8: "ex8_consumers"}
F64 = torch.float64


# (the answer's sandbox)
from exercises._guard import Fail, LibraryCall, Submission  # noqa: E402,F401
from exercises import _guard as G  # noqa: E402


# the input the answer is running on, named in the FAIL line if it crashes there
CASE = {"now": None}


def on(case):
    CASE["now"] = case


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


# -----------------------------------------------------------------------------
# Switched off while an answer runs: a wrapper around the function it is graded against proves
# nothing.

LIBRARY = ("foresight_scores", "consumer_energy", "code_factors", "select_mask", "pbs_output",
           "pbs_diag", "pca_A", "prune_event", "prune_oneshot", "sparsegpt_prune", "update_output",
           "update_diag", "update_sparsegpt", "ema")
# the grader's own reference computations (defined below): calling them is the same shortcut
REFERENCES = ("bruteforce_dz", "closed_form_mistakes", "ref_wanda_scores", "pruned_iou_ref",
              "expected_iou", "exact_chance_iou", "pbs_lstsq", "change_ref", "pbs_diag_lstsq",
              "consumer_bruteforce", "consumer_mistakes")
G.switch_off(xpert, lambda: list(LIBRARY) + [n for n in G.private_functions(xpert)
                                             if n not in LIBRARY], "xpert")
G.switch_off(xpert.MaskChange, ["whole_change"], "xpert.MaskChange")  # exercise 4's D
G.switch_off(sys.modules[__name__], REFERENCES, "exercises.check")


def expect_top_k(mask, scores, k, what, unit="row", name_of=None, rtol=1e-9):
    """mask (G, S) keeps the top of scores (G, S) in every group: exactly k pruned per group, and no
    kept score below a pruned one (up to rtol of the group's largest |score|). Every tie-break is
    accepted. A wrong count at a tie names the tie (a threshold mask cannot break ties)."""
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
        # the k-th and (k+1)-th lowest are equal: no threshold works
        if 0 < k < row.numel() and srt[k] == cut:
            raise Fail(f"{what}: {name_of(i)} has {c} pruned, but exactly {k} must go{total}. "
                       f"{n_tied} of its scores are tied at the cut (value {cut.item():.6g}): a "
                       "threshold on the k-th lowest score (score <= kth, or keep score > kth) "
                       f"prunes all tied weights or none of them. Select exactly {k} positions "
                       "(argsort / topk); any choice among the tied ones is accepted")
        raise Fail(f"{what}: {name_of(i)} has {c} pruned, but exactly {k} must go "
                   f"(floor(p·size + 1e-6)){total}")
    inf = torch.tensor(float("inf"), dtype=scores.dtype)
    hi_pruned = torch.where(pruned, scores, -inf).max(1).values
    lo_kept = torch.where(mask, scores, inf).min(1).values
    tol = rtol * scores.abs().max(1).values
    viol = (hi_pruned > lo_kept + tol).nonzero()
    if len(viol):
        i = int(viol[0])
        raise Fail(f"{what}: {name_of(i)} prunes a score of {hi_pruned[i].item():.6g} but keeps a "
                   f"lower one ({lo_kept[i].item():.6g}): prune the {k} LOWEST scores of every "
                   f"{unit}")


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


def expect_close(a, b, what, rtol=1e-7, atol=0.0, mistakes=(), dtype=None):
    """a ≈ b; if not, and a matches one of `mistakes` [(value, 'what that mistake is'), ...], name
    it. With dtype, a must have that dtype (checked first: a float32 result passes a float64
    comparison, then breaks the fold)."""
    if not isinstance(a, torch.Tensor):
        raise Fail(f"{what}: expected a tensor, got {type(a).__name__}")
    if dtype is not None and a.dtype != dtype:
        raise Fail(f"{what}: returned dtype {a.dtype}, but the inputs are {dtype}: return the "
                   "dtype of the inputs (compute in it, or convert with .to(U.dtype) at the end); "
                   "the grader's fold U + s·ΔB·A, like xpert's, would otherwise mix dtypes")
    ok, rel = close(a, b, rtol, atol)
    if not ok:
        for value, mistake in mistakes:
            if tuple(value.shape) == tuple(a.shape) and close(a, value, 1e-6)[0]:
                raise Fail(f"{what}: differs from the independent computation"
                           + (f" (max relative difference {rel:.3g})" if a.shape == b.shape else "")
                           + f"; it equals {mistake}")
    if tuple(a.shape) != tuple(b.shape):
        raise Fail(f"{what}: shape {tuple(a.shape)}, expected {tuple(b.shape)}")
    expect(ok,
           f"{what}: differs from the independent computation (max relative difference {rel:.3g})")


def expect_mask(mask, shape, what):
    expect(isinstance(mask, torch.Tensor),
           f"{what}: expected a bool tensor, got {type(mask).__name__}")
    expect(mask.dtype == torch.bool,
           f"{what}: expected dtype torch.bool (True = keep), got {mask.dtype}")
    expect(tuple(mask.shape) == tuple(shape),
           f"{what}: shape {tuple(mask.shape)}, expected {tuple(shape)}")


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
    e = xpert.consumer_energy(layers[b], nxt, cfg.num_attention_heads, cfg.num_key_value_heads,
                              cfg.head_dim)
    return {k: v.detach().double() for k, v in e.items()}


def pruned_iou_ref(a, b):
    pa, pb = (~a).reshape(-1).tolist(), (~b).reshape(-1).tolist()
    inter = sum(1 for x, y in zip(pa, pb) if x and y)
    union = sum(1 for x, y in zip(pa, pb) if x or y)
    return 1.0 if union == 0 else inter / union


# -----------------------------------------------------------------------------
# Exercise 1 — ForeSight = ‖ΔZ‖² of the consumer's output (docs/paper.md §4.1)

def bruteforce_dz(X, U, consumer, entries=None):
    """‖Z − Z'‖²_F with Z = consumer(X Uᵀ) and Z' = consumer(X Vᵀ) recomputed from scratch after
    zeroing U[j, c] (V = U but V[j, c] = 0); all entries or the given ones. consumer: a callable
    (N × m) -> (N × k)."""
    Z = consumer(X @ U.T)
    out = torch.full(U.shape, float("nan"), dtype=F64)
    for j, c in (entries if entries is not None
                 else itertools.product(range(U.shape[0]), range(U.shape[1]))):
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
                    "U² · ‖X_c‖² · e with e taken from the rows of U2 (Σ_j U2[k, j]²). Which "
                    "entries of U2 multiply output j of U in Z = X Uᵀ U2ᵀ?"))
    e = U2.pow(2).sum(0)[:, None]
    out.append((U.abs() * E.sqrt() * e, "|U|·‖X_c‖·e (Wanda's powers): ‖ΔZ‖² is a squared norm"))
    out.append((U.pow(2) * E.sqrt() * e, "U²·‖X_c‖·e: the column norm is not squared"))
    return out


# lines of Python a "no loop" answer may run on a layer with ≥ 64 rows, columns and consumers
LOOP_BUDGET = 40


def expect_no_loop(lines, codes, mod, fn, what, calls_bruteforce=None):
    """A "no loop" answer ran `lines` lines of Python (grader and libraries not counted)."""
    helper = (getattr(getattr(mod, "_module", mod), calls_bruteforce, None) if calls_bruteforce
              else None)
    helper = getattr(helper, "__code__", None)
    expect(helper is None or helper not in codes,
           f"{fn} calls your {calls_bruteforce}: the closed form is the formula itself (paper "
           "Eq. 2), computed without any loop; a brute force in disguise proves nothing")
    expect(lines <= LOOP_BUDGET,
           f"{fn} ran {lines} lines of Python on {what}: it loops (over weights, rows, columns or "
           "consumers). The task asks for no loop: whole-tensor operations only (at most "
           f"{LOOP_BUDGET} lines are allowed, whatever the size)")


def check_1(mod, log):
    g = gen(1)
    # the square consumer (k = m) comes first: there a consumer read along the wrong axis broadcasts
    # silently instead of raising. Every reference is computed after the answer ran (nothing to read
    # from here).
    for N, n, m, k in [(8, 5, 4, 4), (7, 5, 4, 3), (9, 6, 5, 7)]:
        X, U, U2 = randn(N, n, g=g) * randn(n, g=g).exp(), randn(m, n, g=g), randn(k, m, g=g)
        shape = f"random X {N}×{n}, U {m}×{n}, U2 {k}×{m}"
        cf = mod.foresight_closed_form(X, U, U2)
        bf = mod.foresight_bruteforce(X, U, linear(U2))
        ref = bruteforce_dz(X, U, linear(U2))
        expect_close(cf, ref, f"foresight_closed_form, {shape}", rtol=1e-9,
                     mistakes=closed_form_mistakes(X, U, U2))
        expect_close(bf, ref, f"foresight_bruteforce, {shape}, linear consumer Y ↦ Y U2ᵀ",
                     rtol=1e-9, mistakes=[(ref.sqrt(), "‖ΔZ‖_F, not its square ‖ΔZ‖²_F")])
    X, U, U2 = randn(40, 24, g=g) * randn(24, g=g).exp(), randn(16, 24, g=g), randn(12, 16, g=g)
    expect_close(mod.foresight_closed_form(X, U, U2), bruteforce_dz(X, U, linear(U2)),
                 "foresight_closed_form, random 16×24 layer", rtol=1e-9,
                 mistakes=closed_form_mistakes(X, U, U2))
    check_1_no_loop(mod, g)
    log("random layers (a square consumer among them): both functions equal ‖ΔZ‖²_F recomputed "
        "from scratch for every weight; the closed form runs no loop (64×96 layer)")
    check_1_nonlinear(mod, log, g)
    check_1_real(mod, log, g)


def check_1_no_loop(mod, g):
    """"Without any loop": a 64×96 layer read by 80 consumer rows, lines of Python counted."""
    X, U, U2 = randn(32, 96, g=g), randn(64, 96, g=g), randn(80, 64, g=g)
    cf, lines, codes = mod.traced("foresight_closed_form", X, U, U2)
    expect_no_loop(lines, codes, mod, "foresight_closed_form",
                   "a 64×96 layer with an 80×64 consumer", "foresight_bruteforce")
    entries = [(int(j), int(c)) for j, c in zip(torch.randint(64, (20,), generator=g),
                                                 torch.randint(96, (20,), generator=g))]
    expect_close(cf[tuple(zip(*entries))],
                 bruteforce_dz(X, U, linear(U2), entries)[tuple(zip(*entries))],
                 "foresight_closed_form, random 64×96 layer (20 weights recomputed)", rtol=1e-9)


def check_1_nonlinear(mod, log, g):
    """Non-linear consumers: only a brute force that calls the consumer on the changed output gets
    them right."""
    N, n, m, k = 9, 6, 5, 7
    X, U, U2 = randn(N, n, g=g) * randn(n, g=g).exp(), randn(m, n, g=g), randn(k, m, g=g)
    gate = F.silu(randn(N, m, g=g))
    for name, consumer in [("tanh, Y ↦ tanh(Y) U2ᵀ", lambda Y: torch.tanh(Y) @ U2.T),
                           ("per-token gate, Y ↦ (silu(G) ⊙ Y) U2ᵀ as in SwiGLU",
                            lambda Y: (gate * Y) @ U2.T)]:
        bf = mod.foresight_bruteforce(X, U, consumer)
        ok, rel = close(bf, bruteforce_dz(X, U, consumer), 1e-9)
        expect(ok, f"foresight_bruteforce with a non-linear consumer ({name}): differs from "
               "‖consumer(X Uᵀ) − consumer(X Vᵀ)‖²_F recomputed from scratch for every weight (max "
               f"relative difference {rel:.3g}). A brute force must zero each weight and call the "
               "consumer on the changed layer output: no closed form holds once the consumer is "
               "not linear")
    log("non-linear consumers given as callables (tanh, a per-token SwiGLU-like gate): the brute "
        "force equals ‖ΔZ‖²_F recomputed from scratch")


def check_1_real(mod, log, g):
    b = real_block(1)
    U, U2 = C.weight(b, "mlp.up_proj"), C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.up_proj"]
    cf = mod.foresight_closed_form(X, U, U2)
    e = real_energy(b)["mlp.up_proj"]
    expect_close(cf, xpert.foresight_scores(U, X.pow(2).sum(0), e),
                 f"block {b} up_proj (real weights): "
                 "closed form vs xpert.foresight_scores with xpert.consumer_energy", rtol=1e-5)
    entries = [(int(j), int(c)) for j, c in zip(torch.randint(U.shape[0], (25,), generator=g),
                                                 torch.randint(U.shape[1], (25,), generator=g))]
    bf = bruteforce_dz(X, U, linear(U2), entries)
    worst = max(abs(cf[j, c].item() - bf[j, c].item()) / bf[j, c].item() for j, c in entries)
    expect(worst < 1e-6, f"block {b} up_proj (real weights): closed form differs from ‖ΔZ‖² by "
                         f"{worst:.3g} (relative)")
    # the same 25 weights through the block's real SwiGLU: down(silu(gate(x)) ⊙ up(x))
    silu_gate = F.silu(X @ C.weight(b, "mlp.gate_proj").T)
    swiglu = bruteforce_dz(X, U, lambda Y: (silu_gate * Y) @ U2.T, entries)
    ratio = sorted(swiglu[j, c].item() / cf[j, c].item() for j, c in entries)
    log(f"{C.tiny_model()[2]}, block {b} up_proj → down_proj on {X.shape[0]} legal tokens: closed "
        "form = xpert.foresight_scores, and = ‖ΔZ‖² on 25 random weights (worst relative "
        f"difference {worst:.1e});\n"
        "through the real SwiGLU the same 25 weights change the block output by "
        f"{ratio[0]:.3g}× to {ratio[-1]:.3g}× (median {ratio[12]:.3g}×) of their ForeSight score")


# -----------------------------------------------------------------------------
# Exercise 2 — the propagation factor and the selection group (docs/paper.md §4.3)

def group_view(t, group):
    """(G, S) view of an m × n tensor: rows for 'out', columns for 'in', one row for 'layer'."""
    return {"out": lambda: t, "in": lambda: t.t(), "layer": lambda: t.reshape(1, -1)}[group]()


UNIT = {"out": "row", "in": "column", "layer": "matrix"}


def tied_scores(m, n, zeros, g):
    """Integer scores with exact ties: `zeros` exact zeros in every row (what a prune event scores
    wherever U = 0), the rest small positive integers (tied among themselves too)."""
    s = torch.randint(1, 4, (m, n), generator=g).to(F64)
    for i in range(m):
        s[i, torch.randperm(n, generator=g)[:zeros]] = 0.0
    return s


def check_2(mod, log):
    g = gen(2)
    cases = [((m, n), p, randn(m, n, g=g))
             for (m, n), p in itertools.product([(6, 10), (7, 9), (4, 90)], [0.0, 0.3, 0.5, 0.7])]
    # ties: 12 exact zeros per row
    cases += [((8, 20), p, tied_scores(8, 20, 12, g)) for p in (0.5, 0.3)]
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
    log("group_mask prunes exactly floor(p·size) of the lowest scores of every group (3 groups × 3 "
        "shapes × 4 sparsities, and integer scores with exact ties)")

    check_2_claim(mod, log, g)


def check_2_claim(mod, log, g):
    """The claim, tested by counterexample on a real layer."""
    claim = mod.groups_where_e_is_inert()  # asked before the grader measures anything
    expect(isinstance(claim, (set, frozenset, list, tuple))
           and all(isinstance(c, str) for c in claim),
           "groups_where_e_is_inert() should return a set of group names ('out', 'in', 'layer')")
    claim = set(claim)
    expect(claim <= set(UNIT),
           f"groups_where_e_is_inert() = {sorted(claim)}: the groups are 'out', 'in', 'layer'")

    # positive per-row factors: the real e_j, random ones, a wide spread
    b = real_block(2)
    U = C.weight(b, "mlp.gate_proj")
    E = C.layer_inputs("legal")[f"model.layers.{b}.mlp.gate_proj"].pow(2).sum(0)
    e_real = real_energy(b)["mlp.gate_proj"]
    base = U.pow(2) * E[None, :]  # Wanda², no propagation factor
    trials = [("real e_j", e_real)] + [(f"random e_j #{t}",
                                        torch.rand(U.shape[0], generator=g, dtype=F64) * 10 + 0.01)
                                       for t in range(2)]
    trials.append(("e_j = exp(3·N(0,1))", (3 * randn(U.shape[0], g=g)).exp()))
    flips, lines = {}, []
    for group in ("out", "in", "layer"):
        plain = mod.group_mask(base, 0.4, group)
        flips[group] = [int((mod.group_mask(base * e[:, None], 0.4, group) != plain).sum())
                        for _, e in trials]
        lines.append(f"  group {group!r:8}: weights whose keep/prune flips when e_j is applied: "
                     + ", ".join(f"{c} ({name})" for c, (name, _) in zip(flips[group], trials)))
    where = f"block {b} gate_proj ({U.shape[0]}×{U.shape[1]}) of {C.tiny_model()[2]}, p=0.4"
    for group in sorted(claim):
        worst = max(range(len(trials)), key=lambda t: flips[group][t])
        expect(flips[group][worst] == 0,
               f"groups_where_e_is_inert() claims that in group {group!r} no positive per-row "
               f"factor can change the mask. Counterexample: on {where}, multiplying Wanda²'s "
               f"scores by the positive factor {trials[worst][0]} flips {flips[group][worst]} "
               f"weights between kept and pruned in group {group!r}. Which factor of the score "
               f"differs between members of a {UNIT[group]}?")
    # a group left out of the claim: the grader finds no counterexample; naming it would give the
    # answer away
    expect(claim == {grp for grp, f in flips.items() if max(f) == 0},
           f"groups_where_e_is_inert() = {sorted(claim)} leaves out a group in which no positive "
           f"per-row factor changed the mask (the grader tried {len(trials)} factors, among them "
           "the real e_j). Can you build one that does? If not, prove why not: inside which groups "
           "is e_j the same number for every score? (The grader's measurement is printed once your "
           "claim is right.)")
    log(f"{C.tiny_model()[2]}, block {b} gate_proj ({U.shape[0]}×{U.shape[1]}), p=0.4:\n"
        + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 3 — Wanda, and how it relates to ForeSight (docs/paper.md §4.3, §6)

def ref_wanda_scores(W, X):
    """Wanda's score by loops: |W[i,c]|·sqrt(Σ_t X[t,c]²)."""
    m, n = W.shape
    norms = [math.sqrt(sum(v * v for v in X[:, c].tolist())) for c in range(n)]
    return torch.tensor([[abs(W[i, c].item()) * norms[c] for c in range(n)] for i in range(m)],
                        dtype=F64)


def expect_wanda(mask, W, X, p, what):
    expect_mask(mask, W.shape, what)
    expect_top_k(mask, ref_wanda_scores(W, X), n_pruned(W.shape[1], p),
                 what + " vs the reference |W[i,c]|·‖X_c‖₂ "
                 "per output row", "row")


def check_3(mod, log):
    g = gen(3)
    # p = 0 (nothing pruned) and p = 1 (everything) are edges: `argsort(descending)[:, -k:]` prunes
    # all at k = 0
    for (m, n, N), p in itertools.product([(8, 12, 30), (5, 16, 20)], [0.0, 0.25, 0.5, 0.6, 1.0]):
        # very uneven column scales
        W, X = randn(m, n, g=g), randn(N, n, g=g) * (randn(n, g=g) * 1.5).exp()
        expect_wanda(mod.wanda_mask(W, X, p), W, X, p,
                     f"wanda_mask(random {m}×{n}, {N} tokens, p={p})")
    # a weight folded by an earlier event: 12 exact zeros per row score exactly 0 and tie
    W, X = (tied_scores(8, 20, 12, g) * randn(8, 20, g=g).sign(),
            randn(30, 20, g=g) * (randn(20, g=g) * 1.5).exp())
    for p in (0.5, 0.3):
        expect_wanda(mod.wanda_mask(W, X, p), W, X, p,
                     f"wanda_mask(8×20 weight with 12 exact zeros per row, p={p})")
    log("wanda_mask keeps the top of |W[i,c]|·‖X_c‖₂ per output row, exactly floor(p·n) pruned (10 "
        "random cases, p = 0 and p = 1 among them, and a weight with exact zeros that tie)")

    b = real_block(1)
    Xs, e = C.layer_inputs("legal"), real_energy(b)
    lines = []
    for proj in PROJECTIONS:
        W, X = C.weight(b, proj), Xs[f"model.layers.{b}.{proj}"]
        mask = mod.wanda_mask(W, X, 0.5)
        expect_wanda(mask, W, X, 0.5, f"wanda_mask(block {b} {proj}, real weights)")
        fs = xpert.foresight_scores(W, X.pow(2).sum(0), e[proj])
        out, layer = xpert.select_mask(fs, 0.5, "out"), xpert.select_mask(fs, 0.5, "layer")
        lines.append(f"  {proj:17} IoU(pruned) with ForeSight 'out' "
                     f"{pruned_iou_ref(mask, out):.4f}   with ForeSight 'layer' "
                     f"{pruned_iou_ref(mask, layer):.4f}")
    # the same layer after an earlier event folded it at 40%: its zeros tie at score 0
    W, X = C.weight(b, "mlp.down_proj"), Xs[f"model.layers.{b}.mlp.down_proj"]
    W = W * xpert.select_mask(W.abs() * X.pow(2).sum(0).sqrt()[None, :], 0.4, "out")
    expect_wanda(mod.wanda_mask(W, X, 0.5), W, X, 0.5,
                 f"wanda_mask(block {b} down_proj already 40% sparse, p=0.5)")
    log(f"{C.tiny_model()[2]}, block {b}, p=0.5, {Xs[f'model.layers.{b}.mlp.gate_proj'].shape[0]} "
        f"legal tokens (chance IoU {0.5 / 1.5:.3f}; down_proj already 40% sparse: exact "
        "count):\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 4 — PBS (our reading, docs/paper.md §5.1) vs lstsq; rank 8 vs 64

def pbs_lstsq(D, A, M, X, s, lam):
    """Row by row: min_δ ‖s·X_K A_Kᵀ δ − X D_iᵀ‖² + λ‖δ‖² (the fold's residual of row i), as one
    augmented least-squares problem. D is read on every column: at a later event it is non-zero on
    revived ones too."""
    r = A.shape[0]
    dB = torch.zeros(D.shape[0], r, dtype=F64)
    for i in range(D.shape[0]):
        K = M[i]
        lhs = torch.cat([s * X[:, K] @ A[:, K].T, math.sqrt(lam) * torch.eye(r, dtype=F64)])
        t = torch.cat([X @ D[i], torch.zeros(r, dtype=F64)])
        dB[i] = torch.linalg.lstsq(lhs, t[:, None], driver="gelsd").solution[:, 0]
    return dB


def change_ref(U, M_old, M_new):
    """What a fold takes away, entry by entry: +U where pruned now (kept before), −U where revived,
    else 0."""
    pruned_now, revived = M_old & ~M_new, ~M_old & M_new
    return (torch.where(pruned_now, U, torch.zeros_like(U))
            - torch.where(revived, U, torch.zeros_like(U)))


def random_row_mask(m, n, p, g):
    keep = torch.ones(m, n, dtype=torch.bool)
    for i in range(m):
        keep[i, torch.randperm(n, generator=g)[:n_pruned(n, p)]] = False
    return keep


def uneven_mask(m, n, g):
    """Rows with different pruned counts: row 0 prunes nothing, row 1 everything, the others 1 … n−1
    at random (as --group layer, --group in and --delta give)."""
    keep = torch.ones(m, n, dtype=torch.bool)
    keep[1] = False
    for i in range(2, m):
        keep[i,
             torch.randperm(n, generator=g)[:int(torch.randint(1, n, (1,), generator=g))]] = False
    return keep


def change_mistakes(U, M_old, M_new):
    return [(U * M_old * ~M_new,
             "R = U ⊙ M_old ⊙ (1 − M_new) alone: the weights a later event revives (pruned "
             "before, kept now) change the layer too, by −U at their positions"),
            (U * M_old * ~M_new + U * ~M_old * M_new,
             "R + Rev: a revived weight is ADDED back to the layer, so the "
             "fold changes it by −U there (D = U ⊙ M_old − U ⊙ M_new)"),
            (U * ~M_new,
             "U ⊙ (1 − M_new), the first event's R: it also counts weights that were pruned before "
             "(M_old = 0), which the network no longer computes, and misses the revived ones")]


def expect_pbs(mod, D, A, M, X, s, lam, what):
    on(what)
    dB = mod.pbs_solve(D, A, M, X.T @ X, s, lam)
    later = bool((D * M).ne(0).any())  # D is non-zero on kept columns: revived weights
    mistakes = [(pbs_lstsq(D * ~M, A, M, X, s, lam),
                 "the solution for D on the pruned columns only (R_{i,S}): at a later event D is "
                 "non-zero on revived columns too, and those are among the KEPT ones; the "
                 "right-hand side must read all of row i of D")] if later else []
    expect_close(dB, pbs_lstsq(D, A, M, X, s, lam), what, rtol=1e-6, dtype=D.dtype,
                 mistakes=mistakes)
    return dB


def check_4(mod, log):
    g = gen(4)
    for m, n in [(7, 9), (6, 12)]:
        U, Mo, Mn = randn(m, n, g=g), random_row_mask(m, n, 0.4, g), random_row_mask(m, n, 0.5, g)
        D = mod.whole_change(U, Mo, Mn)
        expect_close(D, change_ref(U, Mo, Mn), f"whole_change(random {m}×{n}, M_old, M_new)",
                     rtol=0.0, dtype=U.dtype, mistakes=change_mistakes(U, Mo, Mn))
        Mo_first = torch.ones(m, n, dtype=torch.bool)
        expect_close(mod.whole_change(U, Mo_first, Mn), change_ref(U, Mo_first, Mn),
                     f"whole_change(random {m}×{n}) at "
                     "the first event (M_old = 1): D = R", rtol=0.0, dtype=U.dtype)
    for m, n, r, N, s, lam in [(6, 10, 3, 40, 2.0, 1e-3), (5, 12, 5, 30, 0.5, 1e-2)]:
        # correlated inputs
        X = randn(N, n, g=g) @ (randn(n, n, g=g) / math.sqrt(n) + torch.eye(n, dtype=F64))
        U, A = randn(m, n, g=g), randn(r, n, g=g)
        for kind, M in [("50% per row", random_row_mask(m, n, 0.5, g)),
                        ("uneven rows: one prunes nothing, one everything", uneven_mask(m, n, g))]:
            expect_pbs(mod, U * ~M, A, M, X, s, lam,
                       f"pbs_solve(random {m}×{n}, r={r}, s={s}, λ={lam}, first event "
                       f"D = U ⊙ (1 − M), mask {kind})")
        Mo, Mn = random_row_mask(m, n, 0.4, g), uneven_mask(m, n, g)
        expect_pbs(mod, change_ref(U, Mo, Mn), A, Mn, X, s, lam,
                   f"pbs_solve(random {m}×{n}, r={r}, later event: "
                   "D = U ⊙ M_old − U ⊙ M_new, uneven rows)")
    log("whole_change = U ⊙ M_old − U ⊙ M_new (2 random layers, and M_old = 1); pbs_solve equals "
        "torch.linalg.lstsq on every row's least-squares problem (2 random layers: first events "
        "with even and uneven rows, a later event with revived weights)")
    check_4_rank(mod, log, g)
    check_4_later(mod, log, g)


def check_4_rank(mod, log, g):
    b = real_block(1)
    U = C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.down_proj"]
    X_test = C.layer_inputs("legal", 8, 8)[f"model.layers.{b}.mlp.down_proj"]  # 8 other windows
    H, s = X.T @ X, 2.0
    M = xpert.select_mask(U.abs() * X.pow(2).sum(0).sqrt()[None, :], 0.5, "out")  # Wanda mask, 50%
    A64 = randn(64, U.shape[1], g=g) / math.sqrt(3 * U.shape[1])  # kaiming-uniform-like scale
    errs = {"none": (C.rel_output_error(U * M, U, X), C.rel_output_error(U * M, U, X_test))}
    for r in (8, 64):
        # A_8 = the first 8 rows of A_64: the rank-64 adapter can do all the rank-8 one can
        A = A64[:r]
        lam = 1e-9 * s * s * torch.trace(A @ H @ A.T).item() / r
        D = U * ~M  # first event
        dB = mod.pbs_solve(D, A, M, H, s, lam)
        expect_close(dB, xpert.pbs_output(D, A, M, H, s, lam, lam_relative=False),
                     f"pbs_solve(block {b} down_proj, r={r}) vs xpert.pbs_output", rtol=1e-4,
                     atol=1e-12, dtype=F64)
        W = (U + s * dB @ A) * M
        errs[f"r={r}"] = (C.rel_output_error(W, U, X), C.rel_output_error(W, U, X_test))
    lines = [f"  {k:5}  calibration {v[0]:.4f}   held-out {v[1]:.4f}" for k, v in errs.items()]
    report = (f"{C.tiny_model()[2]}, block {b} down_proj ({U.shape[0]}×{U.shape[1]}), 50% Wanda "
              f"mask, |S_i| = {n_pruned(U.shape[1], 0.5)} pruned per row; relative output error:\n"
              + "\n".join(lines))
    cal = {k: v[0] for k, v in errs.items()}
    expect(cal["r=64"] < cal["r=8"] < cal["none"],
           "on the calibration tokens PBS must order the errors "
           "r=64 < r=8 < no PBS (each is the minimiser over a larger set):\n" + report)
    log(report)


def later_event(g):
    """Block 1 down_proj at its second event (docs/paper.md §5.1 "Later events"): event 1 folded a
    50% Wanda mask, the adapter then trained (here: a random B·A at the scale of the small kept
    weights), event 2 ranks U = W + s·B·A with the EMA of both events' Wanda² scores. Returns (U,
    M_old, M_new, A, X, s)."""
    b = real_block(1)
    W0 = C.weight(b, "mlp.down_proj")
    X = C.layer_inputs("legal")[f"model.layers.{b}.mlp.down_proj"]
    col = X.pow(2).sum(0)[None, :]
    M1 = xpert.select_mask(W0.pow(2) * col, 0.5, "out")
    s, r = 2.0, 8
    A = randn(r, W0.shape[1], g=g) / math.sqrt(3 * W0.shape[1])
    B = randn(W0.shape[0], r, g=g) * (0.5 * W0.abs().median().item()
                                      * math.sqrt(3 * W0.shape[1] / r) / s)
    U = W0 * M1 + s * B @ A  # the unmasked effective weight after event 1's fold and some training
    M2 = xpert.select_mask(0.5 * U.pow(2) * col + 0.5 * W0.pow(2) * col, 0.5, "out")
    return U, M1, M2, A, X, s


def check_4_later(mod, log, g):
    U, Mo, Mn, A, X, s = later_event(g)
    H = X.T @ X
    lam = 1e-9 * s * s * torch.trace(A @ H @ A.T).item() / A.shape[0]
    D = mod.whole_change(U, Mo, Mn)
    expect_close(D, change_ref(U, Mo, Mn), "whole_change(block 1 down_proj, second event)",
                 rtol=0.0, dtype=U.dtype, mistakes=change_mistakes(U, Mo, Mn))
    R = U * Mo * ~Mn
    dB = expect_pbs(mod, D, A, Mn, X, s, lam,
                    "pbs_solve(block 1 down_proj, second event, D = R − Rev)")
    expect_close(dB, xpert.pbs_output(D, A, Mn, H, s, lam, lam_relative=False),
                 "pbs_solve(block 1 down_proj, second "
                 "event) vs xpert.pbs_output", rtol=1e-4, atol=1e-12)
    dB_R = mod.pbs_solve(R, A, Mn, H, s, lam)
    before = U * Mo  # what the network computed until this event

    def err(dB):
        return C.rel_output_error((U + s * dB @ A) * Mn, before, X)
    errs = {"no PBS": err(torch.zeros_like(dB)), "R only": err(dB_R), "whole D": err(dB)}
    expect(errs["whole D"] < errs["no PBS"] and errs["whole D"] <= errs["R only"] * (1 + 1e-9),
           "second event: making up for the whole change D must beat no PBS and R alone (it "
           f"minimises the very error measured here): {errs}")
    log(f"{C.tiny_model()[2]}, block 1 down_proj at a second event (r={A.shape[0]}): "
        f"{int((Mo & ~Mn).sum())} weights pruned now, {int((~Mo & Mn).sum())} revived; relative "
        "output error on the calibration tokens after the fold:\n  "
        + "   ".join(f"{k} {v:.4f}" for k, v in errs.items()))


# -----------------------------------------------------------------------------
# Exercise 5 — mask IoU, chance level, domain vs general calibration (docs/paper.md §7)

def expected_iou(p, n):
    """Exact E[|P_a ∩ P_b| / |P_a ∪ P_b|] for two independent, uniformly random masks that each
    prune k = p·n of n positions: the overlap i is hypergeometric, and then the IoU is
    i / (2k − i)."""
    k = round(p * n)
    i = torch.arange(max(0, 2 * k - n), k + 1, dtype=F64)

    def lg(x):
        return torch.lgamma(torch.as_tensor(x, dtype=F64))
    log_pmf = (
        # C(k, i): which of a's pruned positions b prunes too
        lg(k + 1) - lg(i + 1) - lg(k - i + 1)
        # C(n−k, k−i): b's others, among a's kept
        + lg(n - k + 1) - lg(k - i + 1) - lg(n - 2 * k + i + 1)
        - (lg(n + 1) - lg(k + 1) - lg(n - k + 1)))  # / C(n, k)
    return (log_pmf.exp() * i / (2 * k - i)).sum().item()


def exact_chance_iou(p, n=200_000):
    """The large-matrix limit of expected_iou: E(n) = L + a/n + O(1/n²), so
    2·E(2n) − E(n) = L + O(1/n²)."""
    return 2 * expected_iou(p, 2 * n) - expected_iou(p, n)


LOW_PRECISION = {torch.float32, torch.float16, torch.bfloat16}


def as_number(v, what):
    """(float value, its precision: 'float32' or 'float64') of any number an answer returns: int,
    float, Fraction, a numpy scalar or 0-d array, a one-element tensor (torch's integer division
    gives float32)."""
    precision = "float64"
    if isinstance(v, torch.Tensor):
        expect(v.numel() == 1,
               f"{what} should return a number, got a tensor of shape {tuple(v.shape)}")
        precision = "float32" if v.dtype in LOW_PRECISION else "float64"
        v = v.detach().reshape(()).item()
    elif type(v).__module__ == "numpy":
        if getattr(v, "shape", ()) != () and getattr(v, "size", 1) == 1:
            v = v.reshape(())
        expect(getattr(v, "shape", ()) == (),
               f"{what} should return a number, got a numpy array of shape {v.shape}")
        precision = ("float32" if str(getattr(v, "dtype", "")) in ("float32", "float16")
                     else "float64")
        v = v.item()
    expect(isinstance(v, numbers.Real), f"{what} should return a number, got {type(v).__name__}")
    return float(v), precision


def check_pruned_iou(mod, a, b, what):
    v, precision = as_number(mod.pruned_iou(a, b), "pruned_iou")
    ref = pruned_iou_ref(a, b)  # computed after the answer ran
    tol = 1e-6 if precision == "float32" else 1e-12  # float32 rounds a ratio in [0, 1] to ~6e-8
    expect(abs(v - ref) <= tol,
           f"pruned_iou on {what}: {v:.6f}, a brute-force count of the PRUNED positions "
           f"(keep == False) gives {ref:.6f}")
    return v, ref, tol


def chance_steps(mod, p):
    """Is chance_iou piecewise constant around p (a count on a finite matrix, a seeded simulation),
    as a formula in p is not? Only asked of float64 answers (float32 cannot resolve 1e-9)."""
    return (as_number(mod.chance_iou(p + 1e-9), "chance_iou")[0]
            == as_number(mod.chance_iou(p), "chance_iou")[0])


def check_5(mod, log):
    g = gen(5)
    for shape in [(3, 4), (5, 7), (11,), (4, 6, 2)]:
        for pa, pb in [(0.5, 0.5), (0.3, 0.6), (0.9, 0.2)]:
            a = torch.rand(shape, generator=g) >= pa
            b = torch.rand(shape, generator=g) >= pb
            v, ref, tol = check_pruned_iou(mod, a, b, f"random masks {shape}")
            expect(abs(check_pruned_iou(mod, b, a, f"random masks {shape}, swapped")[0] - v) <= tol,
                   "pruned_iou should be symmetric")
    full, some = torch.ones(4, 5, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)
    some[1, 2] = False
    expect(abs(as_number(mod.pruned_iou(full, full), "pruned_iou")[0] - 1.0) < 1e-12,
           "pruned_iou of two masks that prune nothing should be 1.0")
    expect(abs(as_number(mod.pruned_iou(full, some), "pruned_iou")[0]) < 1e-12,
           "pruned_iou(nothing pruned, one weight pruned) should be 0.0")
    log("pruned_iou equals a brute-force count (12 random cases + edge cases)")
    check_chance_iou(mod, log)
    check_5_real(mod, log)


def check_chance_iou(mod, log):
    ps, got = (0.1, 0.25, 0.4, 0.5, 0.8), {}
    for p in ps:
        (v1, precision), v2 = (as_number(mod.chance_iou(p), "chance_iou"),
                               as_number(mod.chance_iou(p), "chance_iou")[0])
        expect(v1 == v2, f"chance_iou({p}) returned {v1:.6f}, then {v2:.6f}: the task asks for the "
               "exact formula, not a simulation")
        got[p] = (v1, precision)
    exact = {p: exact_chance_iou(p) for p in ps}  # after the answer ran
    rel = {p: abs(got[p][0] - exact[p]) / exact[p] for p in ps}
    tol = {p: 1e-6 if got[p][1] == "float32" else 1e-7 for p in ps}
    table = ", ".join(f"p={p}: {got[p][0]:.6f} vs {exact[p]:.6f}" for p in ps)
    worst = max(ps, key=lambda p: rel[p])
    expect(rel[worst] < 0.1,
           f"chance_iou({worst}) = {got[worst][0]:.6f} is far from the expected IoU of two "
           f"independent random masks with {worst:.0%} pruned (relative difference "
           f"{rel[worst]:.3g}; the grader sums the exact hypergeometric distribution of their "
           f"overlap). Yours vs exact: {table}")
    bad = [p for p in ps if rel[p] > tol[p]]
    if bad:
        stepwise = all(got[p][1] == "float64" and chance_steps(mod, p) for p in bad)
        expect(not stepwise,
               f"chance_iou({bad[0]}) = {got[bad[0]][0]:.6f} is close to, but not exactly, the "
               f"expected IoU of two random masks (relative difference {rel[bad[0]]:.2g}, "
               "tolerance 1e-7), and it does not move when p moves by 1e-9: a count on a finite "
               "matrix or a seeded simulation. The task asks for the exact formula in p, not a "
               "simulation")
        raise Fail("chance_iou is a formula in p, but not the expected IoU of two independent "
                   f"random masks: {table} (relative "
                   "differences " + ", ".join(f"{rel[p]:.2g}" for p in ps) + "; tolerance 1e-7). "
                   "Count per position: the probability of being pruned in both, and in at least "
                   "one")
    log("chance_iou equals the exact expected IoU (hypergeometric overlap, large-matrix limit) to "
        "1e-7 at p = 0.1, 0.25, 0.4, 0.5, 0.8")


def check_5_real(mod, log):
    p = 0.4
    dom, gen_, test = (C.layer_inputs("legal"), C.layer_inputs("general"),
                       C.layer_inputs("legal", 8, 8))
    model, _, desc = C.tiny_model()
    per_proj = {proj: [] for proj in PROJECTIONS}
    cost = {"legal-calibrated": 0.0, "general-calibrated": 0.0}
    for b in range(len(model.model.layers)):
        for proj in PROJECTIONS:
            key = f"model.layers.{b}.{proj}"
            W = C.weight(b, proj)
            ma = xpert.select_mask(W.abs() * dom[key].pow(2).sum(0).sqrt()[None, :], p, "out")
            mb = xpert.select_mask(W.abs() * gen_[key].pow(2).sum(0).sqrt()[None, :], p, "out")
            v, precision = as_number(mod.pruned_iou(ma, mb), "pruned_iou")
            pa, pb = (~ma).numpy().ravel(), (~mb).numpy().ravel()
            ref = (pa & pb).sum() / (pa | pb).sum()
            expect(abs(v - ref) < (1e-6 if precision == "float32" else 1e-9),
                   f"pruned_iou on {key}: {v:.6f}, expected {ref:.6f}")
            per_proj[proj].append(v)
            cost["legal-calibrated"] += (C.rel_output_error(W * ma, W, test[key])
                                         / (7 * len(model.model.layers)))
            cost["general-calibrated"] += (C.rel_output_error(W * mb, W, test[key])
                                           / (7 * len(model.model.layers)))
    general = "WikiText-2" if C.assets_dir() else "health text (WikiText-2 absent)"
    lines = [f"  {proj:17} mean IoU over blocks {sum(v) / len(v):.3f}"
             for proj, v in per_proj.items()]
    chance = as_number(mod.chance_iou(p), "chance_iou")[0]
    log(f"{desc}: Wanda masks at p={p} calibrated on legal text vs {general} (chance "
        f"{chance:.3f}):\n"
        + "\n".join(lines)
        + "\n  mean relative output error on held-out legal tokens (one-shot, each layer alone): "
        + ", ".join(f"{k} {v:.4f}" for k, v in cost.items()))


# -----------------------------------------------------------------------------
# Exercise 6 — N:M masks (docs/paper.md §4.3)

def expect_nm(mask, scores, N, M, what):
    m, n = scores.shape
    expect_mask(mask, (m, n), what)
    per = n // M
    expect_top_k(mask.reshape(m * per, M), scores.reshape(m * per, M), N,
                 what + f": every run of {M} consecutive inputs (columns k·M … k·M+{M - 1}) of a "
                        "row", "group",
                 name_of=lambda i: f"row {i // per}, group {i % per} (columns "
                                   f"{(i % per) * M}…{(i % per) * M + M - 1})",
                 rtol=0.0)


def check_6(mod, log):
    g = gen(6)
    for (N, M), (m, n) in itertools.product([(2, 4), (1, 4), (3, 4), (4, 8), (2, 8)],
                                            [(5, 16), (3, 24)]):
        scores = randn(m, n, g=g)
        expect_nm(mod.nm_mask(scores, N, M), scores, N, M, f"nm_mask(random {m}×{n}, {N}:{M})")
    # ties: integer scores, and the 2:4 groups [0, 0, 0, 1] of a weight an earlier event left mostly
    # zero
    tied = torch.tensor([[0, 0, 0, 1] * 3, [1, 0, 0, 0] * 3, [0, 2, 0, 0, 3, 3, 3, 3, 1, 1, 0, 1]],
                        dtype=F64)
    for name, scores in [("groups [0, 0, 0, 1]", tied),
                         ("integer scores 0…2", torch.randint(0, 3, (6, 16), generator=g).to(F64))]:
        for N, M in [(2, 4), (1, 4), (3, 4)]:
            expect_nm(mod.nm_mask(scores, N, M), scores, N, M, f"nm_mask({name}, tied, {N}:{M})")
    scores = randn(6, 12, g=g).abs()
    mask = mod.nm_mask(scores, 2, 4)
    for i in range(6):
        for k in range(3):
            grp = scores[i, 4 * k:4 * k + 4].tolist()
            best = max(sum(grp[t] for t in keep) for keep in itertools.combinations(range(4), 2))
            got = sum(grp[t] for t in range(4) if mask[i, 4 * k + t])
            expect(abs(got - best) < 1e-12,
                   f"2:4 row {i} group {k}: kept score {got:.6f}, but the best of the 6 "
                   f"choices keeps {best:.6f}")
    try:
        mod.nm_mask(randn(3, 10, g=g), 2, 4)
    except ValueError:
        pass
    else:
        raise Fail("nm_mask on 10 inputs with M=4 should raise ValueError")
    log("nm_mask: exactly N of the lowest pruned in every run of M consecutive inputs (5 patterns "
        "× 2 shapes, and tied integer scores); 2:4 keeps the best of the 6 choices in every group; "
        "ValueError when M does not divide n")

    b = real_block(1)
    Xs = C.layer_inputs("legal")
    lines = []
    for proj in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"):
        W, X = C.weight(b, proj), Xs[f"model.layers.{b}.{proj}"]
        score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
        nm, un = mod.nm_mask(score, 2, 4), xpert.select_mask(score, 0.5, "out")
        kept_nm, kept_un = (score * nm).sum().item(), (score * un).sum().item()
        expect(kept_nm <= kept_un * (1 + 1e-12),
               f"{proj}: 2:4 keeps more Wanda score than unstructured 50% per row — "
               "impossible for a correct 2:4 mask")
        lines.append(f"  {proj:17} Wanda score kept: 2:4 {kept_nm / score.sum().item():.4f} vs "
                     f"unstructured {kept_un / score.sum().item():.4f};  relative output error 2:4 "
                     f"{C.rel_output_error(W * nm, W, X):.4f} vs unstructured "
                     f"{C.rel_output_error(W * un, W, X):.4f}")
    log(f"{C.tiny_model()[2]}, block {b}, Wanda scores on legal tokens:\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 7 — the authors' PBS (docs/paper.md §5.2) and the fold

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
        expect_close(dB, pbs_diag_lstsq(U, A, M, gv, s, lam),
                     f"pbs_diag_solve(random {m}×{n}, r={r}, s={s}, λ={lam}) "
                     "vs the per-row minimiser (lstsq)", rtol=1e-6, dtype=U.dtype)
        expect_close(dB, xpert.pbs_diag(U * ~M, A, gv, s, lam, lam_relative=False),
                     "pbs_diag_solve vs xpert.pbs_diag", rtol=1e-6)
    # "no loop over rows": 256 rows, an uneven mask, lines of Python counted
    m, n, r = 256, 24, 4
    U, A, M = randn(m, n, g=g), randn(r, n, g=g), uneven_mask(m, n, g)
    gv = torch.rand(n, generator=g, dtype=F64) * 3 + 0.05
    dB, lines, codes = mod.traced("pbs_diag_solve", U, A, M, gv, 2.0, 1e-2)
    expect_no_loop(lines, codes, mod, "pbs_diag_solve", f"a {m}×{n} layer")
    expect_close(dB, pbs_diag_lstsq(U, A, M, gv, 2.0, 1e-2),
                 f"pbs_diag_solve(random {m}×{n}, uneven rows) vs the "
                 "per-row minimiser (lstsq)", rtol=1e-6, dtype=U.dtype)
    log("pbs_diag_solve equals the lstsq minimiser of every row's objective (3 random layers) and "
        "xpert.pbs_diag, with no loop over rows (256 rows)")

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
        expect_close(dB, pbs_diag_lstsq(U, A, M, rms, s, lam),
                     f"pbs_diag_solve(block {b} down_proj, r={r})", rtol=1e-5, atol=1e-12,
                     dtype=U.dtype)
        diag = C.rel_output_error((U + s * dB @ A) * M, U, X)
        out = C.rel_output_error((U + s * xpert.pbs_output(U * ~M, A, M, H, s) @ A) * M, U, X)
        expect(out < none,
               f"r={r}: the 'output' reading should beat no PBS on the calibration tokens")
        lines.append(f"  r={r:<3} diag (yours) {diag:.4f}   output (xpert.pbs_output) {out:.4f}")
    log(f"{C.tiny_model()[2]}, block {b} down_proj, 50% Wanda mask, relative output error on the "
        "calibration tokens after the fold:\n" + "\n".join(lines))


# -----------------------------------------------------------------------------
# Exercise 8 — the consumer table of a GQA block (docs/paper.md §4.2)

def consumers(U, gamma_mlp, gamma_next, readers, n_head, n_kv):
    """{proj: (m, Z)}: Z(y) is what the consumer of the projection's output y (m,) computes,
    linearised (softmax, SwiGLU's other factor and RMSNorm's 1/rms held fixed), as one flat vector.
    Loops over heads."""
    Uq, Uk, Uo = U["self_attn.q_proj"], U["self_attn.k_proj"], U["self_attn.o_proj"]
    hd = Uq.shape[0] // n_head
    # KV group of query head h (consecutive heads share one)
    group = [h * n_kv // n_head for h in range(n_head)]

    def rows(W, i):  # head / group i's rows
        return W[i * hd:(i + 1) * hd]

    # every head's q·k with k of every input direction e_c: q_h · U_k[rows of g(h)]
    def logits_of_q(q):
        return torch.cat([rows(q, h) @ rows(Uk, group[h]) for h in range(n_head)])

    def logits_of_k(k):  # every head's q(e_c)·k_{g(h)}
        return torch.cat([rows(k, group[h]) @ rows(Uq, h) for h in range(n_head)])

    # each head's attention output through o_proj, apart (each head mixes v its own way)
    def heads_of_v(v):
        return torch.cat([Uo[:, h * hd:(h + 1) * hd] @ rows(v, group[h]) for h in range(n_head)])

    def mlp_in(o):  # gate and up read the attention output through post_attention_layernorm's γ
        return torch.cat([U["mlp.gate_proj"] @ (gamma_mlp * o), U["mlp.up_proj"] @ (gamma_mlp * o)])

    def down(a):  # gate or up output j reaches down_proj column j (SwiGLU's other factor held at 1)
        return U["mlp.down_proj"] @ a

    # the block output, through the next norm's γ, read by the next block (or lm_head)
    def next_in(y):
        return torch.cat([R @ (gamma_next * y) for R in readers])
    read_by = {"self_attn.q_proj": logits_of_q, "self_attn.k_proj": logits_of_k,
               "self_attn.v_proj": heads_of_v, "self_attn.o_proj": mlp_in, "mlp.gate_proj": down,
               "mlp.up_proj": down, "mlp.down_proj": next_in}
    return {p: (U[p].shape[0], Z) for p, Z in read_by.items()}


def consumer_bruteforce(U, gamma_mlp, gamma_next, readers, n_head, n_kv, g):
    """{proj: e (m,)}: e_j = ‖Z(y + 1_j) − Z(y)‖² at a random y, output j moved alone (docs/paper.md
    §4.1 per output)."""
    out = {}
    for proj, (m, Z) in consumers(U, gamma_mlp, gamma_next, readers, n_head, n_kv).items():
        y = randn(m, g=g)
        Z0, e = Z(y), torch.empty(m, dtype=F64)
        for j in range(m):
            moved = y.clone()
            moved[j] += 1.0
            e[j] = (Z(moved) - Z0).pow(2).sum()
        out[proj] = e
    return out


def kv_mistakes(per_head, what, n_kv, rep, why_group):
    """The slips of a KV projection's e_j: per_head (n_head, hd) the energies its readers have per
    query head."""
    n_head = n_kv * rep
    of_group = torch.arange(n_head).view(n_kv, rep)  # the right heads of every group
    # heads g, g + n_kv, ...
    strided = torch.arange(n_kv)[:, None] + n_kv * torch.arange(rep)[None, :]

    def kv_sum(idx):
        return per_head[idx].sum(1).reshape(-1)
    return [(per_head[:n_kv].reshape(-1),
             f"the {what} of query head g only: KV head g is read by every query head of its "
             "group; sum over all n_head/n_kv of them (no repeat over the query heads of the "
             "group)"),
            (kv_sum(of_group[:, :1]),
             f"the {what} of the first query head of each group only: sum over all "
             "n_head/n_kv query heads of the group"),
            (per_head[of_group].mean(1).reshape(-1),
             f"the mean of the {what} over the group's query heads (the "
             "authors' RMS, xpert.code_factors): the table sums them"),
            (kv_sum(strided), f"the {what} of heads g, g + n_kv, …: {why_group}"),
            (kv_sum((of_group + 1) % n_head),
             f"the {what} of the group's heads shifted by one: the head index "
             f"is off by one; {why_group}")]


def consumer_mistakes(U, gamma_mlp, gamma_next, readers, n_head, n_kv):
    """{proj: [(value, 'the mistake')]}: the usual slips, so that a FAIL can name them."""
    Uq, Uk, Uo = U["self_attn.q_proj"], U["self_attn.k_proj"], U["self_attn.o_proj"]
    hd, rep = Uq.shape[0] // n_head, n_head // n_kv
    q_rows, k_rows = Uq.pow(2).sum(1).view(n_head, hd), Uk.pow(2).sum(1).view(n_kv, hd)
    o_cols = Uo.pow(2).sum(0).view(n_head, hd)
    heads = torch.arange(n_head)

    def q_reads(groups):
        return k_rows[groups].reshape(-1)
    why_group = ("query head h belongs to KV group h // (n_head/n_kv): consecutive heads share a "
                 "group, as repeat_kv lays them out")
    out = {"self_attn.q_proj": [
        (k_rows.reshape(-1),
         "one e per KV output, not one per query output: every query head of a group reads "
         "that group's k, so repeat each group's energies over its n_head/n_kv query heads"),
        (q_reads(heads % n_kv),
         f"query head h read with the k of group h % n_kv (tiled, .repeat): {why_group}"),
        (q_reads((heads // rep + 1) % n_kv),
         f"the k of the next group: the head index is off by one; {why_group}"),
        (q_reads((heads // rep - 1) % n_kv),
         f"the k of the previous group: the head index is off by one; {why_group}"),
        (q_reads(((heads + 1) // rep) % n_kv),
         f"group (h + 1) // (n_head/n_kv): the head index is off by one; "
         f"{why_group}")]}
    for proj, per_head, what in [("self_attn.k_proj", q_rows, "rows of U_q"),
                                 ("self_attn.v_proj", o_cols, "columns of U_o")]:
        out[proj] = kv_mistakes(per_head, what, n_kv, rep, why_group)
    if Uo.shape[0] == Uo.shape[1]:  # a square o_proj: its rows broadcast where its columns belong
        out["self_attn.v_proj"].append((Uo.pow(2).sum(1).view(n_kv, rep, hd).sum(1).reshape(-1),
                                        "the energies of the ROWS of U_o: output j of v reaches "
                                        "o_proj's COLUMNS h·hd + t"))
    gu = U["mlp.gate_proj"].pow(2).sum(0) + U["mlp.up_proj"].pow(2).sum(0)
    out["self_attn.o_proj"] = [(gu, "e without the norm gain γ² of post_attention_layernorm, which "
                                "scales output j before gate and up read it"),
                               (gamma_mlp * gu,
                                "γ·(…): the gain multiplies the output, so its square enters")]
    # a square MLP: the rows have the columns' size
    if U["mlp.gate_proj"].shape[0] == gamma_mlp.shape[0]:
        out["self_attn.o_proj"].append((gamma_mlp.pow(2) * (U["mlp.gate_proj"].pow(2).sum(1)
                                                             + U["mlp.up_proj"].pow(2).sum(1)),
                                        "the rows of U_gate, U_up: summing rows "
                                        "instead of columns"))
    dn = sum(R.pow(2).sum(0) for R in readers)
    out["mlp.down_proj"] = [(dn, "e without the norm gain γ² of the next norm (the next block's "
                             "input_layernorm, or the final norm), which scales output j before "
                             "the readers see it"),
                            (gamma_next * dn,
                             "γ·(…): the gain multiplies the output, so its square enters"),
                            (gamma_next.pow(2) * readers[0].pow(2).sum(0),
                             "only the first reader: the next "
                             "block's q, k AND v all read the block output")]
    # expect_close names a mistake only where the shapes agree
    for proj in ("mlp.gate_proj", "mlp.up_proj"):
        out[proj] = [(U["mlp.down_proj"].pow(2).sum(1),
                      "the rows of U_down: output j of gate/up reaches "
                      "down_proj's COLUMN j; summing rows instead of columns")]
    return out


def expect_table(mod, U, gm, gn, readers, n_head, n_kv, what, g):
    on(f"consumer_table({what})")
    e = mod.consumer_table(U, gm, gn, readers, n_head, n_kv)
    expect(isinstance(e, dict),
           f"consumer_table({what}) should return a dict {{proj: e}}, got {type(e).__name__}")
    missing = [p for p in PROJECTIONS if p not in e]
    expect(not missing,
           f"consumer_table({what}) has no entry for {missing} (keys as in model.PROJECTIONS)")
    ref = consumer_bruteforce(U, gm, gn, readers, n_head, n_kv, g)  # after the answer ran
    mistakes = consumer_mistakes(U, gm, gn, readers, n_head, n_kv)
    for p in PROJECTIONS:
        expect_close(e[p], ref[p],
                     f"consumer_table({what})[{p!r}] vs the brute-force change of its consumer's "
                     "output", rtol=1e-9, dtype=F64, mistakes=mistakes[p])
    return e, ref


def random_gqa_block(d, n_head, n_kv, inter, g):
    hd = d // n_head
    shapes = {"self_attn.q_proj": (n_head * hd, d), "self_attn.k_proj": (n_kv * hd, d),
              "self_attn.v_proj": (n_kv * hd, d), "self_attn.o_proj": (d, n_head * hd),
              "mlp.gate_proj": (inter, d), "mlp.up_proj": (inter, d), "mlp.down_proj": (d, inter)}
    # uneven columns
    U = {p: randn(*sh, g=g) * (randn(sh[1], g=g) * 0.5).exp() for p, sh in shapes.items()}
    gm, gn = (torch.rand(d, generator=g, dtype=F64) * 2 + 0.1,
              torch.rand(d, generator=g, dtype=F64) * 2 + 0.1)
    readers = [randn(n_head * hd, d, g=g), randn(n_kv * hd, d, g=g), randn(n_kv * hd, d, g=g)]
    return U, gm, gn, readers


def real_table_inputs(model, b):
    """The arguments of consumer_table for block b of the model: its unmasked weights, its γ's, its
    readers."""
    layers = model.model.layers
    U = {p: C.weight(b, p) for p in PROJECTIONS}
    gm = layers[b].post_attention_layernorm.weight.detach().double()
    if b + 1 < len(layers):
        gn = layers[b + 1].input_layernorm.weight.detach().double()
        readers = [C.weight(b + 1, p) for p in PROJECTIONS[:3]]
    else:
        gn, readers = (model.model.norm.weight.detach().double(),
                       [model.lm_head.weight.detach().double()])
    return U, gm, gn, readers


def check_8(mod, log):
    g = gen(8)
    # d, heads, kv, i
    layouts = [(12, 6, 3, 10), (12, 6, 2, 14), (16, 4, 4, 12), (8, 4, 1, 8), (12, 6, 3, 12)]
    # inter = d last: there a sum over the wrong axis broadcasts silently
    for d, n_head, n_kv, inter in layouts:
        U, gm, gn, readers = random_gqa_block(d, n_head, n_kv, inter, g)
        if n_kv == 1:  # as after the last block: one reader (lm_head) through the final norm
            readers = [randn(20, d, g=g)]
        expect_table(mod, U, gm, gn, readers, n_head, n_kv,
                     f"random block d={d}, {n_head} query heads, "
                     f"{n_kv} KV heads, intermediate {inter}", g)
    log("consumer_table equals the brute-force change of every consumer's output, output by "
        "output, on 5 random blocks (GQA with 2 and 3 query heads per KV head, MHA, MQA)")

    model, _, desc = C.tiny_model()
    cfg = model.config
    lines = []
    for b in range(len(model.model.layers)):
        e, _ = expect_table(mod, *real_table_inputs(model, b), cfg.num_attention_heads,
                            cfg.num_key_value_heads, f"block {b} of {desc}", g)
        nxt = (model.model.layers[b + 1] if b + 1 < len(model.model.layers)
               else (model.model.norm, model.lm_head))
        lib = xpert.consumer_energy(model.model.layers[b], nxt, cfg.num_attention_heads,
                                    cfg.num_key_value_heads, cfg.head_dim)
        for p in PROJECTIONS:
            expect_close(e[p], lib[p].detach().double(),
                         f"consumer_table(block {b})[{p!r}] vs xpert.consumer_energy", rtol=1e-5)
        if b == real_block(1):
            lines = [f"  {p:17} e_j from {e[p].min().item():.3g} to {e[p].max().item():.3g} "
                     f"(max/min {(e[p].max() / e[p].min()).item():.3g}×)" for p in PROJECTIONS]
    log(f"{desc} ({cfg.num_attention_heads} query heads, {cfg.num_key_value_heads} KV heads): "
        "every block's table equals the brute force and xpert.consumer_energy; block "
        f"{real_block(1)}:\n" + "\n".join(lines))
    check_8_adapted(mod, log, g)


def adapted_model(g):
    """A copy of the tiny model after one fold at 40% (random masks, W ⊙ M = W) and some adapter
    training (random B·A at the scale of the weights): the state in which a later prune event reads
    its consumers."""
    model = copy.deepcopy(C.tiny_model()[0])
    xpert.add_lora(model, rank=4)
    with torch.no_grad():
        for _, lin in xpert.lora_layers(model):
            keep = torch.rand(lin.mask.shape, generator=g) >= 0.4
            lin.weight.mul_(keep)
            lin.mask.copy_(keep)
            lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g)
                             * lin.weight.abs().mean() / 2)
    return model


def check_8_adapted(mod, log, g):
    model, b = adapted_model(g), real_block(1)
    cfg, layers = model.config, model.model.layers
    nxt = layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)
    read = {"U": lambda lin: lin.U(), "masked": lambda lin: lin.merged_weight()}
    tables = {}
    for kind, weight_of in read.items():
        U = {p: weight_of(xpert.get_sub(layers[b], p)).detach().double() for p in PROJECTIONS}
        gm = layers[b].post_attention_layernorm.weight.detach().double()
        if isinstance(nxt, tuple):
            gn, readers = nxt[0].weight.detach().double(), [nxt[1].weight.detach().double()]
        else:
            gn = nxt.input_layernorm.weight.detach().double()
            readers = [weight_of(xpert.get_sub(nxt, p)).detach().double() for p in PROJECTIONS[:3]]
        if kind == "U":
            tables[kind] = expect_table(mod, U, gm, gn, readers, cfg.num_attention_heads,
                                        cfg.num_key_value_heads,
                                        f"block {b} with adapters after a fold, unmasked U", g)[0]
        else:
            tables[kind] = mod.consumer_table(U, gm, gn, readers, cfg.num_attention_heads,
                                              cfg.num_key_value_heads)
    lib = xpert.consumer_energy(layers[b], nxt, cfg.num_attention_heads, cfg.num_key_value_heads,
                                cfg.head_dim)
    for p in PROJECTIONS:
        expect_close(tables["U"][p], lib[p].detach().double(),
                     f"consumer_table(block {b} with adapters)[{p!r}] vs "
                     "xpert.consumer_energy (which reads the unmasked U = W + s·B·A)", rtol=1e-5)
    off = {p: ((tables["masked"][p] - tables["U"][p]).abs() / tables["U"][p]).max().item()
           for p in PROJECTIONS}
    log(f"block {b} with adapters after a 40% fold: your table on U = W + s·B·A equals "
        "xpert.consumer_energy; read through (W + s·B·A) ⊙ M instead, e_j would be off by up to "
        + ", ".join(f"{100 * off[p]:.0f}% ({p.split('.')[-1]})" for p in PROJECTIONS))


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6, 7: check_7,
          8: check_8}


# -----------------------------------------------------------------------------

def load_file(path, n=0):
    """Import a .py file as a module (the answer of `--file`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(
        f"submission_ex{n}_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solution_module(n):
    """The reference solution, kept outside this package (exercises_solutions/ at the repo root)."""
    return f"exercises_solutions.{EXERCISES[n]}"


def _is_solution(module):
    name = module if isinstance(module, str) else getattr(module, "__name__", "")
    return isinstance(name, str) and (name == G.SOLUTIONS or name.startswith(G.SOLUTIONS + "."))


def _load(n, module, solutions_allowed):
    """The module to grade; its top level runs like an answer (library off, no solutions, no
    exit)."""
    G.take_hits()
    with G.answer_running(solutions_allowed):
        if module is None:
            return importlib.import_module(f"exercises.{EXERCISES[n]}")
        if isinstance(module, str) and module.endswith(".py"):
            return load_file(module, n)
        if isinstance(module, str):
            return importlib.import_module(module)
        return module


def _where(e):
    """file:line of the answer's frame where e was raised (the innermost frame outside the
    grader)."""
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return "?"
    frame = next((f for f in reversed(tb) if G.is_answer_file(f.filename)), tb[-1])
    return f"{os.path.basename(frame.filename)}:{frame.lineno}"


def describe_error(e):
    """What the student is told about an exception that left the answer."""
    if isinstance(e, SystemExit):
        how = "os._exit() / os.abort()" if isinstance(e, G._Exit) else "exit() / sys.exit()"
        return (f"your code called {how} (SystemExit, at {_where(e)}): an answer returns its "
                "result; ending the program would stop the grader, so it counts as a FAIL")
    if not isinstance(e, Exception):
        return (f"your code raised {type(e).__name__} (at {_where(e)}), a BaseException that is "
                "not an Exception: an answer returns its result")
    where = f"; on {CASE['now']}" if CASE["now"] else ""
    return f"your code raised {type(e).__name__}: {e}  (at {_where(e)}{where})"


def check(n, module=None, verbose=True):
    """Run the graded checks of exercise n against `module`: a module (or any object with the
    functions), a dotted name, a path to a .py file, or None for the student file
    exercises/exN_*.py. Prints PASS / FAIL and the reason; returns True when everything passed. Only
    KeyboardInterrupt (Ctrl-C) gets through."""
    name = EXERCISES[n]
    say = print if verbose else (lambda *a, **k: None)
    allowed = _is_solution(module)
    try:
        module = _load(n, module, allowed)
        hits = G.take_hits()
        if hits:
            raise LibraryCall(G.shortcut_message("the file, when it is imported,", hits[0]))
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: B036  (exit() at import is a FAIL too)
        hits = G.take_hits()
        if isinstance(e, LibraryCall) or hits:
            why = str(e) if isinstance(e, LibraryCall) else G.shortcut_message("the file", hits[0])
        elif isinstance(e, SystemExit):
            why = ("it calls exit() / sys.exit() / os._exit() when it is imported (SystemExit, at "
                   f"{_where(e)}): an answer file only defines its functions; ending the program "
                   "would stop the grader")
        else:
            why = f"{type(e).__name__}: {e}"
        say(f"exercise {n} ({name}): FAIL — the file does not import: {why}")
        return False
    where = (getattr(module, "__file__", None) or getattr(module, "__name__", None)
             or type(module).__name__)
    if isinstance(where, str) and os.path.isabs(where):
        where = os.path.relpath(where, C.ROOT) if where.startswith(C.ROOT + os.sep) else where
    say(f"exercise {n} ({name}) — grading {where}")
    torch.manual_seed(0)
    on(None)
    threads, dtype, grad = (torch.get_num_threads(), torch.get_default_dtype(),
                            torch.is_grad_enabled())
    # the checks multiply many tiny matrices: one thread is ~1000× faster than a contended thread
    # pool there
    torch.set_num_threads(1)
    try:
        CHECKS[n](Submission(module, allowed), lambda msg: say("  " + msg.replace("\n", "\n  ")))
    except KeyboardInterrupt:
        raise
    except NotImplementedError as e:
        say(f"exercise {n}: FAIL — not implemented yet ({e or 'NotImplementedError'})")
        return False
    except Fail as e:
        say(f"exercise {n}: FAIL — {e}")
        return False
    # a bug in the submission (or exit()): report it, never crash the grader
    except BaseException as e:  # noqa: B036
        say(f"exercise {n}: FAIL — {describe_error(e)}")
        return False
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
    say(f"exercise {n}: PASS")
    return True


USAGE = ("usage: python -m exercises.check N|all [--solution | --file PATH]   (N in {ns}; --file "
         "grades PATH, a .py file with the exercise's functions, instead of exercises/exN_*.py)")


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
    if len(args) != 1 or not (args[0] == "all"
                              or (args[0].isdigit() and int(args[0]) in EXERCISES)) \
            or (path and (solution or args[0] == "all")):
        print(usage, file=sys.stderr)
        return 2
    ns = sorted(EXERCISES) if args[0] == "all" else [int(args[0])]
    results = {}
    for n in ns:
        module = solution_module(n) if solution else (os.path.abspath(path) if path else None)
        results[n] = check(n, module)
    if len(ns) > 1:
        print("summary: "
              + "  ".join(f"{n}:{'PASS' if ok else 'FAIL'}" for n, ok in results.items()))
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    # run as a script or with -m this module is __main__: an answer that imports exercises.check
    # must get this module (whose reference functions are switched off while it runs), not a fresh
    # copy
    sys.modules.setdefault("exercises.check", sys.modules[__name__])
    sys.exit(main())
