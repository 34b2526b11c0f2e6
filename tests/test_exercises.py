"""The exercise grader (exercises/check.py) is itself tested: for every exercise it must PASS the
reference solution, FAIL the shipped stub (NotImplementedError is a FAIL, not a crash of the grader)
and FAIL plausible wrong answers — so a check can never be vacuous. See EXERCISES.md."""
import math
import os
import re
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exercises import check as K  # noqa: E402
from exercises_solutions import (ex1_foresight as s1, ex2_grouping as s2,  # noqa: E402
                                 ex3_wanda as s3, ex4_pbs as s4, ex5_iou as s5, ex6_nm as s6,
                                 ex7_pbs_diag as s7, ex8_consumers as s8)

SOLUTIONS = {1: s1, 2: s2, 3: s3, 4: s4, 5: s5, 6: s6, 7: s7, 8: s8}


def like(solution, **overrides):
    """A submission: the reference solution with some functions replaced by wrong ones."""
    ns = {k: getattr(solution, k) for k in dir(solution) if not k.startswith("_")}
    ns.update(overrides)
    return types.SimpleNamespace(**ns)


def _keep_lowest_k(scores, k, dim):
    idx = scores.argsort(dim=dim).narrow(dim, 0, k)
    return torch.ones(scores.shape, dtype=torch.bool).scatter_(dim, idx, False)


# -------------------------------------------------------------------------- plausible wrong answers

# |U|·‖X_c‖·e: Wanda's powers instead of the squared output change
def wrong_1_wanda_like(X, U, U2):
    return U.abs() * X.pow(2).sum(0).sqrt()[None, :] * U2.pow(2).sum(0)[:, None]


def wrong_1_norm_not_squared(X, U, U2):  # U²·‖X_c‖·e
    return U.pow(2) * X.pow(2).sum(0).sqrt()[None, :] * U2.pow(2).sum(0)[:, None]


def wrong_1_consumer_rows(X, U, U2):  # e from the rows of U2 (wrong axis)
    return U.pow(2) * X.pow(2).sum(0)[None, :] * U2.pow(2).sum(1)[:, None]


def wrong_1_bruteforce_not_squared(X, U, consumer):  # ‖ΔZ‖_F instead of ‖ΔZ‖²_F
    return s1.foresight_bruteforce(X, U, consumer).sqrt()


def wrong_2_in_axis(scores, sparsity, group):  # 'in' pruned along rows
    return s2.group_mask(scores, sparsity, "out" if group == "in" else group)


def wrong_2_highest(scores, sparsity, group):  # prunes the highest scores
    return s2.group_mask(-scores, sparsity, group)


# floor(p·size) without the guard: 0.7·90 -> 62
def wrong_2_floor_off_by_one(scores, sparsity, group):
    m, n = scores.shape
    if group == "out":
        return _keep_lowest_k(scores, int(math.floor(sparsity * n)), 1)
    return s2.group_mask(scores, sparsity, group)


def wrong_3_energy(W, X, sparsity):  # |W|·‖X_c‖² (the squared norm)
    return _keep_lowest_k(W.abs() * X.pow(2).sum(0)[None, :],
                          int(math.floor(sparsity * W.shape[1] + 1e-6)), 1)


def wrong_3_per_column(W, X, sparsity):  # right score, pruned per input column
    return _keep_lowest_k(W.abs() * X.pow(2).sum(0).sqrt()[None, :],
                          int(math.floor(sparsity * W.shape[0] + 1e-6)), 0)


def wrong_3_magnitude(W, X, sparsity):  # forgets the activations: plain |W| per row
    return _keep_lowest_k(W.abs(), int(math.floor(sparsity * W.shape[1] + 1e-6)), 1)


def wrong_4_scale(D, A, M, H, s, lam):  # s instead of s² on the left-hand side
    r = A.shape[0]
    dB = torch.zeros(D.shape[0], r, dtype=D.dtype)
    for i in range(D.shape[0]):
        K = M[i]
        G = s * A[:, K] @ H[K][:, K] @ A[:, K].T + lam * torch.eye(r, dtype=D.dtype)
        dB[i] = torch.linalg.solve(G, s * A[:, K] @ H[K] @ D[i])
    return dB


def wrong_4_unmasked_A(D, A, M, H, s, lam):  # A H Aᵀ over all columns instead of the kept ones
    G = s * s * A @ H @ A.T + lam * torch.eye(A.shape[0], dtype=D.dtype)
    rhs = s * (D @ H @ A.T)  # (m, r)
    return torch.linalg.solve(G, rhs.T).T


def wrong_4_sign(D, A, M, H, s, lam):
    return -s4.pbs_solve(D, A, M, H, s, lam)


def wrong_4_change_sign(U, M_old, M_new):  # U ⊙ M_new − U ⊙ M_old
    return -s4.whole_change(U, M_old, M_new)


def wrong_5_kept_iou(a, b):  # IoU of the kept positions
    return s5.pruned_iou(~a, ~b)


def wrong_5_empty_zero(a, b):  # eval.py's inter / max(1, union): 0 when nothing is pruned
    pa, pb = ~a, ~b
    return (pa & pb).sum().item() / max(1, (pa | pb).sum().item())


def wrong_5_chance_square(p):  # P(pruned in both) instead of the IoU
    return p * p


def wrong_6_highest(scores, N, M):
    return s6.nm_mask(-scores, N, M)


def wrong_6_strided(scores, N, M):  # groups {c, c + n/M, c + 2n/M, ...} instead of consecutive runs
    m, n = scores.shape
    if n % M:
        raise ValueError("n % M")
    g = scores.reshape(m, M, n // M)
    idx = g.argsort(dim=1)[:, :N, :]
    return torch.ones(g.shape, dtype=torch.bool).scatter_(1, idx, False).reshape(m, n)


def wrong_6_keep_n(scores, N, M):  # keeps N (prunes M − N): the same as the truth for 2:4 only
    return s6.nm_mask(scores, M - N, M)


def wrong_7_no_g(U, A, M, g, s, lam):  # forgets the activation weighting D = diag(g)
    return s7.pbs_diag_solve(U, A, M, torch.ones_like(g), s, lam)


def wrong_7_sign(U, A, M, g, s, lam):
    return -s7.pbs_diag_solve(U, A, M, g, s, lam)


# moves the kept weights instead of the pruned ones (Ũ = U ⊙ M)
def wrong_7_kept_columns(U, A, M, g, s, lam):
    return s7.pbs_diag_solve(U, A, ~M, g, s, lam)


WRONG = {
    1: [like(s1, foresight_closed_form=wrong_1_wanda_like),
        like(s1, foresight_closed_form=wrong_1_norm_not_squared),
        like(s1, foresight_closed_form=wrong_1_consumer_rows),
        like(s1, foresight_bruteforce=wrong_1_bruteforce_not_squared)],
    2: [like(s2, group_mask=wrong_2_in_axis), like(s2, group_mask=wrong_2_highest),
        like(s2, group_mask=wrong_2_floor_off_by_one),
        like(s2, groups_where_e_is_inert=lambda: {"out", "in"}),
        like(s2, groups_where_e_is_inert=lambda: set())],
    3: [like(s3, wanda_mask=wrong_3_energy), like(s3, wanda_mask=wrong_3_per_column),
        like(s3, wanda_mask=wrong_3_magnitude)],
    4: [like(s4, pbs_solve=wrong_4_scale), like(s4, pbs_solve=wrong_4_unmasked_A),
        like(s4, pbs_solve=wrong_4_sign), like(s4, whole_change=wrong_4_change_sign)],
    5: [like(s5, pruned_iou=wrong_5_kept_iou), like(s5, pruned_iou=wrong_5_empty_zero),
        like(s5, chance_iou=wrong_5_chance_square)],
    6: [like(s6, nm_mask=wrong_6_highest), like(s6, nm_mask=wrong_6_strided),
        like(s6, nm_mask=wrong_6_keep_n)],
    7: [like(s7, pbs_diag_solve=wrong_7_no_g), like(s7, pbs_diag_solve=wrong_7_sign),
        like(s7, pbs_diag_solve=wrong_7_kept_columns)],
    8: [like(s8, consumer_table=lambda U, gm, gn, readers, n_head, n_kv: {
        # a factor 2 off
        p: v * 2 for p, v in s8.consumer_table(U, gm, gn, readers, n_head, n_kv).items()})],
}


# ----------------------------------------------------------------------------- tests

def test_every_exercise_has_a_student_file_a_solution_and_a_section():
    text = open(os.path.join(ROOT, "EXERCISES.md"), encoding="utf-8").read()
    for n, name in K.EXERCISES.items():
        assert os.path.exists(os.path.join(ROOT, "exercises", name + ".py"))
        assert os.path.exists(os.path.join(ROOT, "exercises_solutions", name + ".py"))
        assert f"exercises/{name}.py" in text and f"python -m exercises.check {n}" in text
    assert len(K.EXERCISES) >= 8


def expected_pass_block(n):
    """The lines of exercise n's **Expected PASS** block in EXERCISES.md."""
    text = open(os.path.join(ROOT, "EXERCISES.md"), encoding="utf-8").read()
    for body in re.findall(r"\*\*Expected PASS\*\*\s*```text\n(.*?)```", text, re.S):
        if body.startswith(f"exercise {n} "):
            return body.splitlines()
    raise AssertionError(f"EXERCISES.md has no Expected PASS block for exercise {n}")


def shown_in(line, out_lines):
    """Does `line` of an Expected PASS block appear in the grader's output? '…' stands for any
    number."""
    parts = [p for p in line.split("…") if p]
    for o in out_lines:
        pos = 0
        for part in parts:
            pos = o.find(part, pos)
            if pos < 0:
                break
            pos += len(part)
        else:
            return True
    return False


@pytest.mark.parametrize("n", sorted(K.EXERCISES))
def test_reference_solution_passes_and_prints_the_expected_pass_block(n, capsys):
    ok = K.check(n, f"exercises_solutions.{K.EXERCISES[n]}")
    out = capsys.readouterr().out
    assert ok, out
    assert out.strip().splitlines()[-1] == f"exercise {n}: PASS"
    # the student file's line
    lines = out.replace("grading exercises_solutions/", "grading exercises/").splitlines()
    for line in expected_pass_block(n):
        if line.strip().startswith("…"):  # "… (one line per projection)"
            continue
        assert shown_in(line, lines), (f"EXERCISES.md's Expected PASS line differs from the "
                                       f"grader:\n{line}\n\n{out}")


@pytest.mark.parametrize("n", sorted(K.EXERCISES))
def test_shipped_stub_fails_without_crashing(n, capsys):
    path = os.path.join(ROOT, "exercises", K.EXERCISES[n] + ".py")
    if "raise NotImplementedError" not in open(path, encoding="utf-8").read():
        pytest.skip(f"{path} has been edited (solved?): the stub test only applies to the shipped "
                    "file")
    assert K.check(n) is False  # the student file, as shipped
    out = capsys.readouterr().out
    assert "FAIL" in out and "not implemented" in out


@pytest.mark.parametrize("n,i", [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n]))])
def test_plausible_wrong_answer_fails(n, i, capsys):
    assert K.check(n, WRONG[n][i]) is False
    out = capsys.readouterr().out
    assert "FAIL" in out and "PASS" not in out.splitlines()[-1]


def test_grader_reports_a_crashing_submission_as_fail(capsys):
    def boom(*a):
        raise IndexError("index 99 is out of bounds")
    assert K.check(6, like(s6, nm_mask=boom)) is False
    assert "your code raised IndexError" in capsys.readouterr().out


def test_cli_exit_codes():
    env = dict(os.environ, PYTHONPATH=ROOT)
    ok = subprocess.run([sys.executable, "-m", "exercises.check", "5", "--solution"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "exercise 5: PASS" in ok.stdout, ok.stdout + ok.stderr
    bad = subprocess.run([sys.executable, os.path.join("exercises", "check.py"), "9"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_cli_grades_a_file_without_touching_the_reference(tmp_path, capsys, monkeypatch):
    """`--file PATH` grades any file: a wrapper written the way a student would (import at the top)
    fails and is named; a copy of the reference passes; exercises_solutions/ is never imported
    without --solution."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    wrapper = tmp_path / "my_ex7.py"
    wrapper.write_text("from xpert import pbs_diag\n\n\ndef pbs_diag_solve(U, A, M, g, s, lam):\n"
                       "    return pbs_diag(U * ~M, A, g, s, lam, lam_relative=False)\n")
    bad = subprocess.run([sys.executable, "-m", "exercises.check", "7", "--file", str(wrapper)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "calls xpert.pbs_diag" in bad.stdout, bad.stdout + bad.stderr
    good = tmp_path / "copy_ex7.py"
    good.write_text(open(os.path.join(ROOT, "exercises_solutions", "ex7_pbs_diag.py"),
                         encoding="utf-8").read()
                    + "\nimport sys\nassert 'exercises_solutions' not in sys.modules\n")
    # in-process from here (restored after)
    monkeypatch.delitem(sys.modules, "exercises_solutions", raising=False)
    assert K.main(["7", "--file", str(good)]) == 0
    assert "exercise 7: PASS" in capsys.readouterr().out
    assert K.main(["all", "--file", str(good)]) == 2 and "--file" in capsys.readouterr().err
