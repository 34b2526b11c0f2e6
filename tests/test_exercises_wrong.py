"""Plausible wrong answers the graders used to let through (issue 14), each of which must now FAIL with a
message that names the mistake: threshold masks under ties, wrappers around the library the grader checks
against, a Monte-Carlo chance_iou, e_j from the rows of U2, a "brute force" that is the closed form in
disguise. Together with tests/test_exercises.py (the reference passes, the stub fails, older wrong answers
fail) every exercise is proven three ways."""
import functools
import math
import os
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import xpert  # noqa: E402
from exercises import check as K  # noqa: E402
from exercises_solutions import (ex1_foresight as s1, ex2_grouping as s2, ex3_wanda as s3, ex4_pbs as s4,  # noqa: E402
                                 ex5_iou as s5, ex6_nm as s6, ex7_pbs_diag as s7)
from xpert import foresight_scores as imported_foresight_scores  # noqa: E402  (bound before any check runs)


def like(solution, **overrides):
    """A submission: the reference solution with some functions replaced by wrong ones."""
    ns = {k: getattr(solution, k) for k in dir(solution) if not k.startswith("_")}
    ns.update(overrides)
    return types.SimpleNamespace(**ns)


def n_pruned(size, p):
    return int(math.floor(p * size + 1e-6))


def threshold_keep(view, k):
    """The tempting one-liner: keep what scores above the k-th lowest value of each row of `view`."""
    if k == 0:
        return torch.ones(view.shape, dtype=torch.bool)
    return view > view.kthvalue(k, dim=1, keepdim=True).values


# ----------------------------------------------------------------------------- exercise 1

def wrong_1_rows_of_U2(X, U, U2):  # e_j = Σ_j U2[k, j]²: only runs when k = m, and is then silently wrong
    return U.pow(2) * X.pow(2).sum(0)[None, :] * U2.pow(2).sum(1)[:, None]


def wrong_1_bruteforce_is_closed_form(X, U, consumer):  # "brute force": probe the consumer's matrix, use the formula
    U2 = consumer(torch.eye(U.shape[0], dtype=U.dtype)).T
    return s1.foresight_closed_form(X, U, U2)


def wrong_1_wrapper(X, U, U2):
    return xpert.foresight_scores(U, X.pow(2).sum(0), U2.pow(2).sum(0))


def wrong_1_wrapper_imported(X, U, U2):  # `from xpert import foresight_scores` at the top of the file
    return imported_foresight_scores(U, X.pow(2).sum(0), U2.pow(2).sum(0))


def wrong_1_wanda_powers(X, U, U2):
    return U.abs() * X.pow(2).sum(0).sqrt()[None, :] * U2.pow(2).sum(0)[:, None]


def wrong_1_bruteforce_not_squared(X, U, consumer):
    return s1.foresight_bruteforce(X, U, consumer).sqrt()


# ----------------------------------------------------------------------------- exercise 2

def wrong_2_threshold(scores, sparsity, group):
    if group not in ("out", "in", "layer"):
        raise ValueError(group)
    view = {"out": scores, "in": scores.t(), "layer": scores.reshape(1, -1)}[group]
    keep = threshold_keep(view, n_pruned(view.shape[1], sparsity))
    return {"out": keep, "in": keep.t(), "layer": keep.reshape(scores.shape)}[group]


def wrong_2_wrapper(scores, sparsity, group):
    return xpert.select_mask(scores, sparsity, group)


# ----------------------------------------------------------------------------- exercise 3

def wrong_3_threshold(W, X, sparsity):
    score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
    return threshold_keep(score, n_pruned(W.shape[1], sparsity))


def wrong_3_wrapper(W, X, sparsity):  # Wanda's score by hand, the selection from the library
    return xpert.select_mask(W.abs() * X.pow(2).sum(0).sqrt()[None, :], sparsity, "out")


def wrong_3_wrapper_scores(W, X, sparsity):  # the selection by hand, the score from the library (e = 1)
    score = xpert.foresight_scores(W, X.pow(2).sum(0), torch.ones(W.shape[0], dtype=W.dtype)).sqrt()
    k = n_pruned(W.shape[1], sparsity)
    return torch.ones(W.shape, dtype=torch.bool).scatter_(1, score.argsort(1)[:, :k], False)


# ----------------------------------------------------------------------------- exercise 4

def wrong_4_wrapper(U, A, M, H, s, lam):
    return xpert.pbs_output(U, A, M, H, s, lam, lam_relative=False)


wrong_4_partial = functools.partial(xpert.pbs_output, lam_relative=False)  # bound when this file is imported


# ----------------------------------------------------------------------------- exercise 5

def wrong_5_monte_carlo(p, size=100_000):  # a simulation, unseeded: a different value every call
    k = n_pruned(size, p)
    a, b = torch.ones(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)
    a[torch.randperm(size)[:k]] = False
    b[torch.randperm(size)[:k]] = False
    return ((~a & ~b).sum() / (~a | ~b).sum()).item()


def wrong_5_monte_carlo_seeded(p, size=200_000):  # the same, seeded: deterministic, still not the formula
    g = torch.Generator().manual_seed(0)
    k = n_pruned(size, p)
    a, b = torch.ones(size, dtype=torch.bool), torch.ones(size, dtype=torch.bool)
    a[torch.randperm(size, generator=g)[:k]] = False
    b[torch.randperm(size, generator=g)[:k]] = False
    return ((~a & ~b).sum() / (~a | ~b).sum()).item()


def wrong_5_both(p):  # P(pruned in both masks), not the IoU
    return p * p


# ----------------------------------------------------------------------------- exercise 6

def wrong_6_threshold(scores, N, M):
    m, n = scores.shape
    if n % M:
        raise ValueError("n % M")
    return threshold_keep(scores.reshape(-1, M), N).reshape(m, n)


def wrong_6_wrapper(scores, N, M):
    if scores.shape[1] % M:
        raise ValueError("n % M")
    return xpert.select_mask(scores, N / M, nm=(N, M))


# ----------------------------------------------------------------------------- exercise 7

def wrong_7_wrapper(U, A, M, g, s, lam):
    return xpert.pbs_diag(U, A, M, g, s, lam, lam_relative=False)


def wrong_7_wrapper_with_fallback(U, A, M, g, s, lam):  # calls the library and hides the failure
    try:
        return xpert.pbs_diag(U, A, M, g, s, lam, lam_relative=False)
    except Exception:
        return s7.pbs_diag_solve(U, A, M, g, s, lam)


# (exercise, wrong answer, a distinctive part of the FAIL message that names the mistake)
WRONG = {
    "1-rows-of-U2": (1, like(s1, foresight_closed_form=wrong_1_rows_of_U2), "rows of U2"),
    "1-bruteforce-is-closed-form": (1, like(s1, foresight_bruteforce=wrong_1_bruteforce_is_closed_form),
                                    "non-linear consumer"),
    "1-wrapper": (1, like(s1, foresight_closed_form=wrong_1_wrapper), "calls xpert.foresight_scores"),
    "1-wrapper-imported": (1, like(s1, foresight_closed_form=wrong_1_wrapper_imported), "calls xpert.foresight_scores"),
    "1-wanda-powers": (1, like(s1, foresight_closed_form=wrong_1_wanda_powers), "Wanda's powers"),
    "1-bruteforce-not-squared": (1, like(s1, foresight_bruteforce=wrong_1_bruteforce_not_squared), "not its square"),
    "2-threshold-ties": (2, like(s2, group_mask=wrong_2_threshold), "tied at the cut"),
    "2-wrapper": (2, like(s2, group_mask=wrong_2_wrapper), "calls xpert.select_mask"),
    "3-threshold-ties": (3, like(s3, wanda_mask=wrong_3_threshold), "tied at the cut"),
    "3-wrapper": (3, like(s3, wanda_mask=wrong_3_wrapper), "calls xpert.select_mask"),
    "3-wrapper-scores": (3, like(s3, wanda_mask=wrong_3_wrapper_scores), "calls xpert.foresight_scores"),
    "4-wrapper": (4, like(s4, pbs_solve=wrong_4_wrapper), "calls xpert.pbs_output"),
    "4-wrapper-partial": (4, like(s4, pbs_solve=wrong_4_partial), "calls xpert.pbs_output"),
    "5-monte-carlo": (5, like(s5, chance_iou=wrong_5_monte_carlo), "not a simulation"),
    "5-monte-carlo-seeded": (5, like(s5, chance_iou=wrong_5_monte_carlo_seeded), "not a simulation"),
    "5-pruned-in-both": (5, like(s5, chance_iou=wrong_5_both), "far from the expected IoU"),
    "6-threshold-ties": (6, like(s6, nm_mask=wrong_6_threshold), "tied at the cut"),
    "6-wrapper": (6, like(s6, nm_mask=wrong_6_wrapper), "calls xpert.select_mask"),
    "7-wrapper": (7, like(s7, pbs_diag_solve=wrong_7_wrapper), "calls xpert.pbs_diag"),
    "7-wrapper-with-fallback": (7, like(s7, pbs_diag_solve=wrong_7_wrapper_with_fallback), "calls xpert.pbs_diag"),
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


def test_issue_numbers_of_the_tie_case(capsys):
    """The case of the issue: 8 rows with 12 exact zeros each at p = 0.5 — a threshold prunes 96, not 80."""
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
    assert torch.allclose(xpert.foresight_scores(U, X.pow(2).sum(0), torch.ones(3)), U.pow(2) * X.pow(2).sum(0))


def test_ex2_wrong_claim_does_not_print_the_table_it_asks_for(capsys):
    assert K.check(2, like(s2, groups_where_e_is_inert=lambda: {"out", "in"})) is False
    out = capsys.readouterr().out
    assert "FAIL" in out and "flips" not in out and "random e_j" not in out
