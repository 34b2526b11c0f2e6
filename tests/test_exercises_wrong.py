"""Plausible wrong answers the graders used to let through, each of which must now FAIL with a
message that names the mistake. Issue 14: threshold masks under ties, wrappers around the library
the grader checks against, a Monte-Carlo chance_iou, e_j from the rows of U2, a "brute force" that
is the closed form in disguise. Issue 22: answers that change their inputs in place, call a private
xpert helper or the grader's own references, loop where the task says "no loop", miss the p = 0 /
uneven-row edges, return float32, compensate R alone at a later event, and the usual slips of the
consumer table (exercise 8). Together with tests/test_exercises.py (the reference passes, the stub
fails, older wrong answers fail) and tests/test_exercises_guard.py (exit(), imports, correct but
unusual answers) every exercise is proven."""
import functools
import math
import sys as _sys
import os
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import xpert  # noqa: E402
from exercises import check as K  # noqa: E402
from exercises_solutions import (ex1_foresight as s1, ex2_grouping as s2,  # noqa: E402
                                 ex3_wanda as s3, ex4_pbs as s4, ex5_iou as s5, ex6_nm as s6,
                                 ex7_pbs_diag as s7, ex8_consumers as s8)
# (bound before any check runs)
from xpert import foresight_scores as imported_foresight_scores  # noqa: E402


def like(solution, **overrides):
    """A submission: the reference solution with some functions replaced by wrong ones."""
    ns = {k: getattr(solution, k) for k in dir(solution) if not k.startswith("_")}
    ns.update(overrides)
    return types.SimpleNamespace(**ns)


def n_pruned(size, p):
    return int(math.floor(p * size + 1e-6))


def threshold_keep(view, k):
    """The tempting one-liner: keep what scores above the k-th lowest value of each row of
    `view`."""
    if k == 0:
        return torch.ones(view.shape, dtype=torch.bool)
    return view > view.kthvalue(k, dim=1, keepdim=True).values


# ----------------------------------------------------------------------------- exercise 1

# e_j = Σ_j U2[k, j]²: only runs when k = m, and is then silently wrong
def wrong_1_rows_of_U2(X, U, U2):
    return U.pow(2) * X.pow(2).sum(0)[None, :] * U2.pow(2).sum(1)[:, None]


# "brute force": probe the consumer's matrix, use the formula
def wrong_1_bruteforce_is_closed_form(X, U, consumer):
    U2 = consumer(torch.eye(U.shape[0], dtype=U.dtype)).T
    return s1.foresight_closed_form(X, U, U2)


def wrong_1_wrapper(X, U, U2):
    return xpert.foresight_scores(U, X.pow(2).sum(0), U2.pow(2).sum(0))


# `from xpert import foresight_scores` at the top of the file
def wrong_1_wrapper_imported(X, U, U2):
    return imported_foresight_scores(U, X.pow(2).sum(0), U2.pow(2).sum(0))


def wrong_1_wanda_powers(X, U, U2):
    return U.abs() * X.pow(2).sum(0).sqrt()[None, :] * U2.pow(2).sum(0)[:, None]


def wrong_1_bruteforce_not_squared(X, U, consumer):
    return s1.foresight_bruteforce(X, U, consumer).sqrt()


# "closed form": the brute force with the linear consumer
def wrong_1_closed_form_is_bruteforce(X, U, U2):
    return s1.foresight_bruteforce(X, U, lambda Y: Y @ U2.T)


def wrong_1_closed_form_row_loop(X, U, U2):  # right values, one Python step per output row
    E = X.pow(2).sum(0)
    out = torch.empty_like(U)
    for j in range(U.shape[0]):
        out[j] = U[j].pow(2) * E * U2[:, j].pow(2).sum()
    return out


# the grader's precomputed answer from its frames, else a guess
def wrong_1_reads_the_reference(X, U, consumer):
    frame = _sys._getframe(1)
    while frame is not None:
        ref = frame.f_locals.get("ref")
        if isinstance(ref, torch.Tensor) and ref.shape == U.shape:
            return ref.clone()
        frame = frame.f_back
    # nothing to read: the closed form in disguise
    return wrong_1_bruteforce_is_closed_form(X, U, consumer)


def wrong_1_calls_grader_bruteforce(X, U, consumer):  # the grader's own brute force
    return K.bruteforce_dz(X, U, consumer)


# ----------------------------------------------------------------------------- exercise 2

def wrong_2_threshold(scores, sparsity, group):
    if group not in ("out", "in", "layer"):
        raise ValueError(group)
    view = {"out": scores, "in": scores.t(), "layer": scores.reshape(1, -1)}[group]
    keep = threshold_keep(view, n_pruned(view.shape[1], sparsity))
    return {"out": keep, "in": keep.t(), "layer": keep.reshape(scores.shape)}[group]


def wrong_2_wrapper(scores, sparsity, group):
    return xpert.select_mask(scores, sparsity, group)


# xpert's private selection helper, not on the old list
def wrong_2_private_helper(scores, sparsity, group):
    if group not in ("out", "in", "layer"):
        raise ValueError(group)
    view = {"out": scores, "in": scores.t(), "layer": scores.reshape(1, -1)}[group]
    keep = xpert._prune_bounded(view, view.shape[0] * n_pruned(view.shape[1], sparsity), sparsity,
                                1e-9)
    return {"out": keep, "in": keep.t(), "layer": keep.reshape(scores.shape)}[group]


# `scores /= scores.max()`: the EMA state is gone
def wrong_2_normalises_in_place(scores, sparsity, group):
    scores /= scores.abs().max() + 1.0
    return s2.group_mask(scores, sparsity, group)


# ----------------------------------------------------------------------------- exercise 3

def wrong_3_threshold(W, X, sparsity):
    score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
    return threshold_keep(score, n_pruned(W.shape[1], sparsity))


def wrong_3_wrapper(W, X, sparsity):  # Wanda's score by hand, the selection from the library
    return xpert.select_mask(W.abs() * X.pow(2).sum(0).sqrt()[None, :], sparsity, "out")


# the k lowest as the tail of a descending sort: [-0:] is everything
def wrong_3_desc_tail(W, X, sparsity):
    score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
    k = n_pruned(W.shape[1], sparsity)
    return torch.ones(W.shape, dtype=torch.bool).scatter_(
        1, score.argsort(1, descending=True)[:, -k:], False)


def wrong_3_abs_in_place(W, X, sparsity):  # W.abs_(): the layer's signs are gone
    return s3.wanda_mask(W.abs_(), X, sparsity)


# the selection by hand, the score from the library (e = 1)
def wrong_3_wrapper_scores(W, X, sparsity):
    score = xpert.foresight_scores(W, X.pow(2).sum(0), torch.ones(W.shape[0], dtype=W.dtype)).sqrt()
    k = n_pruned(W.shape[1], sparsity)
    return torch.ones(W.shape, dtype=torch.bool).scatter_(1, score.argsort(1)[:, :k], False)


# ----------------------------------------------------------------------------- exercise 4

def wrong_4_wrapper(D, A, M, H, s, lam):
    return xpert.pbs_output(D, A, M, H, s, lam, lam_relative=False)


# the first-event system s·A_K H_{K,S} D_{i,S}ᵀ at every event
def wrong_4_pruned_columns_only(D, A, M, H, s, lam):
    r = A.shape[0]
    dB = torch.zeros(D.shape[0], r, dtype=D.dtype)
    for i in range(D.shape[0]):
        K, S = M[i], ~M[i]
        G = s * s * A[:, K] @ H[K][:, K] @ A[:, K].T + lam * torch.eye(r, dtype=D.dtype)
        dB[i] = torch.linalg.solve(G, s * A[:, K] @ H[K][:, S] @ D[i, S])
    return dB


# vectorised, assuming every row keeps the same number of weights
def wrong_4_equal_counts(D, A, M, H, s, lam):
    m, n = D.shape
    r = A.shape[0]
    K = M.nonzero()[:, 1].view(m, -1)  # (m, |K|): only if all rows keep as many
    A_K = A[:, K].permute(1, 0, 2)  # (m, r, |K|)
    H_KK = H[K[:, :, None], K[:, None, :]]  # (m, |K|, |K|)
    G = s * s * A_K @ H_KK @ A_K.transpose(1, 2) + lam * torch.eye(r, dtype=D.dtype)
    rhs = s * A_K @ (H[K] @ D[:, :, None])  # (m, r, 1)
    return torch.linalg.solve(G, rhs)[..., 0]


def wrong_4_float32(D, A, M, H, s, lam):  # solved in float32 to save memory, never converted back
    return s4.pbs_solve(D.float(), A.float(), M, H.float(), s, lam)


def wrong_4_ridge_in_place(D, A, M, H, s, lam):  # adds the ridge to the caller's H
    H.diagonal().add_(lam)
    return s4.pbs_solve(D, A, M, H, s, 0.0)


def wrong_4_change_wrapper(U, M_old, M_new):  # the prune event's own D
    return xpert.MaskChange(U, M_old, M_new).whole_change()


def wrong_4_change_R_only(U, M_old, M_new):  # forgets the revived weights
    return U * M_old * ~M_new


def wrong_4_change_first_event(U, M_old, M_new):  # the first event's R at every event
    return U * ~M_new


def wrong_4_change_plus_revived(U, M_old, M_new):  # R + Rev
    return U * M_old * ~M_new + U * ~M_old * M_new


# bound when this file is imported
wrong_4_partial = functools.partial(xpert.pbs_output, lam_relative=False)


# ----------------------------------------------------------------------------- exercise 5

def wrong_5_monte_carlo(p, size=100_000):  # a simulation, unseeded: a different value every call
    k = n_pruned(size, p)
    a, b = torch.ones(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)
    a[torch.randperm(size)[:k]] = False
    b[torch.randperm(size)[:k]] = False
    return ((~a & ~b).sum() / (~a | ~b).sum()).item()


# the same, seeded: deterministic, still not the formula
def wrong_5_monte_carlo_seeded(p, size=200_000):
    g = torch.Generator().manual_seed(0)
    k = n_pruned(size, p)
    a, b = torch.ones(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)
    a[torch.randperm(size, generator=g)[:k]] = False
    b[torch.randperm(size, generator=g)[:k]] = False
    return ((~a & ~b).sum() / (~a | ~b).sum()).item()


def wrong_5_both(p):  # P(pruned in both masks), not the IoU
    return p * p


def wrong_5_half(p):  # a fixed formula, wrong: p/2 (must not be told it is a simulation)
    return p / 2


# the right ratio with an "avoid division by zero" epsilon: close, still a formula
def wrong_5_epsilon(p):
    return p * p / (2 * p - p * p + 1e-6)


def wrong_5_grader_reference(p):
    return K.exact_chance_iou(p)


# ----------------------------------------------------------------------------- exercise 6

def wrong_6_threshold(scores, N, M):
    m, n = scores.shape
    if n % M:
        raise ValueError("n % M")
    return threshold_keep(scores.reshape(-1, M), N).reshape(m, n)


# xpert's private bounded-groups helper does N:M by accident
def wrong_6_private_helper(scores, N, M):
    m, n = scores.shape
    if n % M:
        raise ValueError("n % M")
    G = scores.reshape(-1, M)
    return xpert._prune_bounded(G, G.shape[0] * N, N / M, 1e-9).reshape(m, n)


def wrong_6_wrapper(scores, N, M):
    if scores.shape[1] % M:
        raise ValueError("n % M")
    return xpert.select_mask(scores, N / M, nm=(N, M))


# ----------------------------------------------------------------------------- exercise 7

def wrong_7_wrapper(U, A, M, g, s, lam):
    return xpert.pbs_diag(U * ~M, A, g, s, lam, lam_relative=False)


def wrong_7_row_loop(U, A, M, g, s, lam):  # right values, one solve per row
    dB = torch.empty(U.shape[0], A.shape[0], dtype=U.dtype)
    for i in range(U.shape[0]):
        dB[i] = s7.pbs_diag_solve(U[i:i + 1], A, M[i:i + 1], g, s, lam)[0]
    return dB


def wrong_7_float32(U, A, M, g, s, lam):
    return s7.pbs_diag_solve(U, A, M, g, s, lam).float()


def wrong_7_grader_reference(U, A, M, g, s, lam):
    return K.pbs_diag_lstsq(U, A, M, g, s, lam)


def wrong_7_wrapper_with_fallback(U, A, M, g, s, lam):  # calls the library and hides the failure
    try:
        return xpert.pbs_diag(U * ~M, A, g, s, lam, lam_relative=False)
    except Exception:
        return s7.pbs_diag_solve(U, A, M, g, s, lam)


# ----------------------------------------------------------------------------- exercise 8

def wrong_8(slip):
    """The reference table with one of the usual slips in one entry."""
    def consumer_table(U, gm, gn, readers, n_head, n_kv):
        e = dict(s8.consumer_table(U, gm, gn, readers, n_head, n_kv))
        Uq, Uk, Uo = U["self_attn.q_proj"], U["self_attn.k_proj"], U["self_attn.o_proj"]
        hd, rep = Uq.shape[0] // n_head, n_head // n_kv
        q_rows, k_rows = Uq.pow(2).sum(1).view(n_head, hd), Uk.pow(2).sum(1).view(n_kv, hd)
        heads = torch.arange(n_head)
        if slip == "k-no-repeat":  # KV head g read by query head g only
            e["self_attn.k_proj"] = q_rows[:n_kv].reshape(-1)
        elif slip == "q-no-repeat":  # one energy per KV output
            e["self_attn.q_proj"] = k_rows.reshape(-1)
        elif slip == "q-tiled":  # k_rows.repeat: head h reads group h % n_kv
            e["self_attn.q_proj"] = k_rows.repeat(rep, 1).reshape(-1)
        elif slip == "q-off-by-one":  # group (h + 1) // rep
            e["self_attn.q_proj"] = k_rows[((heads + 1) // rep) % n_kv].reshape(-1)
        elif slip == "v-rows":  # rows of U_o instead of its columns
            e["self_attn.v_proj"] = Uo.pow(2).sum(1).view(n_kv, rep, hd).sum(1).reshape(-1)
        elif slip == "o-no-gamma":
            e["self_attn.o_proj"] = (U["mlp.gate_proj"].pow(2).sum(0)
                                     + U["mlp.up_proj"].pow(2).sum(0))
        elif slip == "down-no-gamma":
            e["mlp.down_proj"] = sum(R.pow(2).sum(0) for R in readers)
        elif slip == "k-mean":  # the authors' RMS over the group
            e["self_attn.k_proj"] = q_rows.view(n_kv, rep, hd).mean(1).reshape(-1)
        elif slip == "gate-rows":  # rows of U_down
            e["mlp.gate_proj"] = e["mlp.up_proj"] = U["mlp.down_proj"].pow(2).sum(1)
        elif slip == "in-place":  # squares o_proj in place to save memory
            U["self_attn.o_proj"].pow_(2)
        return e
    return types.SimpleNamespace(consumer_table=consumer_table)


# dresses the tensors up as modules for the library
def wrong_8_wrapper(U, gm, gn, readers, n_head, n_kv):
    def lin(W):
        return types.SimpleNamespace(weight=W)
    block = types.SimpleNamespace(
        self_attn=types.SimpleNamespace(**{p.split(".")[1]: lin(U[p]) for p in U
                                           if p.startswith("self_attn")}),
        mlp=types.SimpleNamespace(**{p.split(".")[1]: lin(U[p]) for p in U
                                     if p.startswith("mlp")}),
        post_attention_layernorm=lin(gm))
    if len(readers) == 1:
        nxt = (lin(gn), lin(readers[0]))
    else:
        nxt = types.SimpleNamespace(input_layernorm=lin(gn), self_attn=types.SimpleNamespace(
            q_proj=lin(readers[0]), k_proj=lin(readers[1]), v_proj=lin(readers[2])))
    e = xpert.consumer_energy(block, nxt, n_head, n_kv, U["self_attn.q_proj"].shape[0] // n_head)
    return {p: v.double() for p, v in e.items()}


# (exercise, wrong answer, a distinctive part of the FAIL message that names the mistake)
WRONG = {
    "1-rows-of-U2": (1, like(s1, foresight_closed_form=wrong_1_rows_of_U2), "rows of U2"),
    "1-bruteforce-is-closed-form": (
        1, like(s1, foresight_bruteforce=wrong_1_bruteforce_is_closed_form), "non-linear consumer"),
    "1-wrapper": (1, like(s1, foresight_closed_form=wrong_1_wrapper),
                  "calls xpert.foresight_scores"),
    "1-wrapper-imported": (1, like(s1, foresight_closed_form=wrong_1_wrapper_imported),
                           "calls xpert.foresight_scores"),
    "1-wanda-powers": (1, like(s1, foresight_closed_form=wrong_1_wanda_powers), "Wanda's powers"),
    "1-bruteforce-not-squared": (1, like(s1, foresight_bruteforce=wrong_1_bruteforce_not_squared),
                                 "not its square"),
    "1-closed-form-is-bruteforce": (
        1, like(s1, foresight_closed_form=wrong_1_closed_form_is_bruteforce),
        "calls your foresight_bruteforce"),
    "1-closed-form-row-loop": (1, like(s1, foresight_closed_form=wrong_1_closed_form_row_loop),
                               "lines of Python"),
    "1-reads-the-reference": (1, like(s1, foresight_bruteforce=wrong_1_reads_the_reference),
                              "differs from the independent computation"),
    "1-calls-grader-bruteforce": (1, like(s1, foresight_bruteforce=wrong_1_calls_grader_bruteforce),
                                  "calls exercises.check.bruteforce_dz"),
    "2-threshold-ties": (2, like(s2, group_mask=wrong_2_threshold), "tied at the cut"),
    "2-wrapper": (2, like(s2, group_mask=wrong_2_wrapper), "calls xpert.select_mask"),
    "2-private-helper": (2, like(s2, group_mask=wrong_2_private_helper),
                         "calls xpert._prune_bounded"),
    "2-normalises-in-place": (2, like(s2, group_mask=wrong_2_normalises_in_place),
                              "changed its input scores in place"),
    "2-claims-in-is-inert": (2, like(s2, groups_where_e_is_inert=lambda: {"out", "in"}),
                             "Counterexample"),
    "2-claims-nothing-is-inert": (2, like(s2, groups_where_e_is_inert=lambda: set()),
                                  "leaves out a group"),
    "3-threshold-ties": (3, like(s3, wanda_mask=wrong_3_threshold), "tied at the cut"),
    "3-wrapper": (3, like(s3, wanda_mask=wrong_3_wrapper), "calls xpert.select_mask"),
    "3-wrapper-scores": (3, like(s3, wanda_mask=wrong_3_wrapper_scores),
                         "calls xpert.foresight_scores"),
    "3-p0-prunes-everything": (3, like(s3, wanda_mask=wrong_3_desc_tail), "p=0.0"),
    "3-abs-in-place": (3, like(s3, wanda_mask=wrong_3_abs_in_place),
                       "changed its input W in place"),
    "4-wrapper": (4, like(s4, pbs_solve=wrong_4_wrapper), "calls xpert.pbs_output"),
    "4-wrapper-partial": (4, like(s4, pbs_solve=wrong_4_partial), "calls xpert.pbs_output"),
    "4-pruned-columns-only": (4, like(s4, pbs_solve=wrong_4_pruned_columns_only),
                              "revived columns"),
    "4-equal-counts": (4, like(s4, pbs_solve=wrong_4_equal_counts), "uneven rows"),
    "4-float32": (4, like(s4, pbs_solve=wrong_4_float32), "returned dtype torch.float32"),
    "4-ridge-in-place": (4, like(s4, pbs_solve=wrong_4_ridge_in_place),
                         "changed its input H in place"),
    "4-change-wrapper": (4, like(s4, whole_change=wrong_4_change_wrapper),
                         "calls xpert.MaskChange.whole_change"),
    "4-change-R-only": (4, like(s4, whole_change=wrong_4_change_R_only),
                        "R = U ⊙ M_old ⊙ (1 − M_new) alone"),
    "4-change-first-event": (4, like(s4, whole_change=wrong_4_change_first_event),
                             "the first event's R"),
    "4-change-plus-revived": (4, like(s4, whole_change=wrong_4_change_plus_revived), "R + Rev"),
    "5-monte-carlo": (5, like(s5, chance_iou=wrong_5_monte_carlo), "not a simulation"),
    "5-monte-carlo-seeded": (5, like(s5, chance_iou=wrong_5_monte_carlo_seeded),
                             "not a simulation"),
    "5-pruned-in-both": (5, like(s5, chance_iou=wrong_5_both), "far from the expected IoU"),
    "5-half": (5, like(s5, chance_iou=wrong_5_half), "far from the expected IoU"),
    "5-epsilon": (5, like(s5, chance_iou=wrong_5_epsilon),
                  "a formula in p, but not the expected IoU"),
    "5-grader-reference": (5, like(s5, chance_iou=wrong_5_grader_reference),
                           "calls exercises.check.exact_chance_iou"),
    "6-threshold-ties": (6, like(s6, nm_mask=wrong_6_threshold), "tied at the cut"),
    "6-wrapper": (6, like(s6, nm_mask=wrong_6_wrapper), "calls xpert.select_mask"),
    "6-private-helper": (6, like(s6, nm_mask=wrong_6_private_helper), "calls xpert._prune_bounded"),
    "7-wrapper": (7, like(s7, pbs_diag_solve=wrong_7_wrapper), "calls xpert.pbs_diag"),
    "7-wrapper-with-fallback": (7, like(s7, pbs_diag_solve=wrong_7_wrapper_with_fallback),
                                "calls xpert.pbs_diag"),
    "7-row-loop": (7, like(s7, pbs_diag_solve=wrong_7_row_loop), "lines of Python"),
    "7-float32": (7, like(s7, pbs_diag_solve=wrong_7_float32), "returned dtype torch.float32"),
    "7-grader-reference": (7, like(s7, pbs_diag_solve=wrong_7_grader_reference),
                           "calls exercises.check.pbs_diag_lstsq"),
    "8-k-no-repeat": (8, wrong_8("k-no-repeat"), "no repeat over the query heads"),
    "8-q-no-repeat": (8, wrong_8("q-no-repeat"), "repeat each group's energies"),
    "8-q-tiled": (8, wrong_8("q-tiled"), "h % n_kv"),
    "8-q-off-by-one": (8, wrong_8("q-off-by-one"), "off by one"),
    "8-v-rows-not-columns": (8, wrong_8("v-rows"), "ROWS of U_o"),
    "8-o-no-gamma": (8, wrong_8("o-no-gamma"), "without the norm gain γ²"),
    "8-down-no-gamma": (8, wrong_8("down-no-gamma"), "without the norm gain γ²"),
    "8-k-mean-not-sum": (8, wrong_8("k-mean"), "the mean of the rows of U_q"),
    "8-gate-rows-not-columns": (8, wrong_8("gate-rows"), "summing rows instead of columns"),
    "8-wrapper": (8, types.SimpleNamespace(consumer_table=wrong_8_wrapper),
                  "calls xpert.consumer_energy"),
    "8-in-place": (8, wrong_8("in-place"), "changed its input U['self_attn.o_proj'] in place"),
}


@pytest.mark.parametrize("key", sorted(WRONG))
def test_wrong_answer_fails_and_names_the_mistake(key, capsys):
    n, answer, named = WRONG[key]
    assert K.check(n, answer) is False
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"exercise {n}: FAIL"), out
    assert named in last, f"the FAIL message should name the mistake ({named!r}):\n{out}"


def test_every_exercise_has_a_named_wrong_answer_here():
    assert {n for n, _, _ in WRONG.values()} == set(K.EXERCISES)


def test_a_fixed_wrong_formula_is_not_told_it_is_a_simulation(capsys):
    """p/2 and p²/(2p − p² + ε) are formulas: the FAIL says so, and lists the values against the
    exact ones."""
    for answer in (wrong_5_half, wrong_5_epsilon):
        assert K.check(5, like(s5, chance_iou=answer)) is False
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert "simulation" not in last and "Monte-Carlo" not in last and "p=0.1: " in last, last


def test_issue_numbers_of_the_tie_case(capsys):
    """The case of the issue: 8 rows with 12 exact zeros each at p = 0.5 — a threshold prunes 96,
    not 80."""
    assert K.check(2, like(s2, group_mask=wrong_2_threshold)) is False
    assert "in all 96 pruned instead of 80" in capsys.readouterr().out


def test_library_is_restored_after_a_wrapper_failed(capsys):
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    before = xpert.select_mask(scores, 0.5, "out")
    assert K.check(6, like(s6, nm_mask=wrong_6_wrapper)) is False
    capsys.readouterr()
    assert torch.equal(xpert.select_mask(scores, 0.5, "out"), before)
    assert not hasattr(xpert, "_exercises_library_called")
    U, X = torch.randn(3, 4), torch.randn(5, 4)
    assert torch.allclose(xpert.foresight_scores(U, X.pow(2).sum(0), torch.ones(3)),
                          U.pow(2) * X.pow(2).sum(0))


def test_ex2_wrong_claim_does_not_print_the_table_it_asks_for(capsys):
    """A wrong claim gets a counterexample for the group it wrongly calls inert, and nothing about
    the others."""
    assert K.check(2, like(s2, groups_where_e_is_inert=lambda: {"out", "in"})) is False
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert "FAIL" in last and "group 'in'" in last and "flips" in last
    assert ("weights whose keep/prune flips" not in out and "'out'" not in last
            and "'layer'" not in last)
    assert K.check(2, like(s2, groups_where_e_is_inert=lambda: set())) is False
    out = capsys.readouterr().out
    assert "flips" not in out and "'out'" not in out.strip().splitlines()[-1]
