"""The grader holds against a whole class (issue 22): exit() in an answer is a FAIL with a non-zero
exit code and `check all` goes on; every exercise checks its inputs unchanged after each call;
importing the reference solutions or calling the grader's own references fails, also from a file
graded by the CLI; and the correct but unusual answers a class writes (torch's float32 division, a
Fraction, numpy) pass."""
import importlib
import os
import subprocess
import sys
import textwrap
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

SOLUTIONS = {1: s1, 2: s2, 3: s3, 4: s4, 5: s5, 6: s6, 7: s7, 8: s8}
ENV = dict(os.environ, PYTHONPATH=ROOT)


def like(solution, **overrides):
    ns = {k: getattr(solution, k) for k in dir(solution) if not k.startswith("_")}
    ns.update(overrides)
    return types.SimpleNamespace(**ns)


def last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def grade_file(tmp_path, n, source, name="answer.py", tail=""):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source) + tail)
    return subprocess.run([sys.executable, "-m", "exercises.check", str(n), "--file", str(path)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


IOU_OK = """
def chance_iou(p):
    return p / (2 - p)
"""


# ----------------------------------------------------------------------------- exit() is a FAIL

@pytest.mark.parametrize("body,named", [
    ("import sys\n\ndef pruned_iou(a, b):\n    sys.exit()\n", "exit() / sys.exit()"),
    ("def pruned_iou(a, b):\n    exit(0)\n", "exit() / sys.exit()"),
    ("def pruned_iou(a, b):\n    raise SystemExit(3)\n", "exit() / sys.exit()"),
    ("import os\n\ndef pruned_iou(a, b):\n    os._exit(0)\n", "os._exit()"),
    ("exit()\n\ndef pruned_iou(a, b):\n    return 1.0\n", "does not import: it calls exit()"),
    ("class Stop(BaseException):\n    pass\n\ndef pruned_iou(a, b):\n    raise Stop()\n",
     "BaseException"),
])
def test_exit_in_an_answer_is_a_fail_with_a_nonzero_exit_code(tmp_path, body, named):
    r = grade_file(tmp_path, 5, body + IOU_OK)
    last = r.stdout.strip().splitlines()[-1]
    assert (r.returncode == 1 and last.startswith("exercise 5") and "FAIL" in last
            and named in last), r.stdout + r.stderr


def test_check_all_grades_the_rest_after_an_exit(monkeypatch, capsys):
    """`check all` with exercise 3's answer calling exit(): its FAIL line, then exercises 4…8 are
    graded (5 passes)."""
    quitter = types.ModuleType("exercises.ex3_wanda")
    quitter.wanda_mask = lambda W, X, sparsity: sys.exit(0)
    good = types.ModuleType("exercises.ex5_iou")
    good.pruned_iou, good.chance_iou = s5.pruned_iou, s5.chance_iou
    monkeypatch.setitem(sys.modules, "exercises.ex3_wanda", quitter)
    monkeypatch.setitem(sys.modules, "exercises.ex5_iou", good)
    assert K.main(["all"]) == 1
    out = capsys.readouterr().out
    assert "exercise 3: FAIL — your code called exit()" in out and "exercise 5: PASS" in out
    assert "summary: " + "  ".join(f"{n}:{'PASS' if n == 5 else 'FAIL'}"
                                   for n in sorted(K.EXERCISES)) in out


# ----------------------------------------------------------------- inputs unchanged, every exercise

def _poke(t):
    """Change one entry of tensor t in place."""
    i = (0,) * t.dim()
    if t.dtype == torch.bool:
        t[i] = ~t[i]
    else:
        t[i] = t[i] + 1.0


def mutating(fn, arg):
    """fn, then an in-place change of its argument number `arg` (a dict: its first tensor)."""
    def wrapped(*args):
        out = fn(*args)
        target = args[arg]
        _poke(next(iter(target.values())) if isinstance(target, dict) else target)
        return out
    return wrapped


MUTATING = {1: ("foresight_closed_form", 0, "X"), 2: ("group_mask", 0, "scores"),
            3: ("wanda_mask", 1, "X"), 4: ("pbs_solve", 1, "A"), 5: ("pruned_iou", 0, "keep_a"),
            6: ("nm_mask", 0, "scores"), 7: ("pbs_diag_solve", 3, "g"),
            8: ("consumer_table", 0, "U['self_attn.q_proj']")}


@pytest.mark.parametrize("n", sorted(MUTATING))
def test_every_exercise_checks_its_inputs_unchanged(n, capsys):
    name, arg, label = MUTATING[n]
    fn = getattr(SOLUTIONS[n], name)
    sig = __import__("inspect").signature(fn)
    wrapped = mutating(fn, arg)
    wrapped.__signature__ = sig  # the grader names the input by the answer's own parameter name
    assert K.check(n, like(SOLUTIONS[n], **{name: wrapped})) is False
    last = last_line(capsys)
    assert f"{name}() changed its input {label} in place" in last, last


# ----------------------------------------------------------------------------- shortcuts

def test_importing_the_solutions_fails_at_the_top_and_inside_a_function(tmp_path):
    top = grade_file(tmp_path, 5,
                     "from exercises_solutions.ex5_iou import pruned_iou, chance_iou\n", "top.py")
    assert (top.returncode == 1 and "does not import" in top.stdout
            and "exercises_solutions" in top.stdout), top.stdout
    inside = grade_file(tmp_path, 5, """
        def pruned_iou(a, b):
            try:
                from exercises_solutions.ex5_iou import pruned_iou as ref
            except ImportError:  # hides the refusal: still a FAIL
                return 0.5
            return ref(a, b)
        """, "inside.py", IOU_OK)
    assert (inside.returncode == 1
            and "pruned_iou() imports exercises_solutions" in inside.stdout), inside.stdout


def test_the_graders_references_are_off_also_under_the_cli(tmp_path):
    """Run as `python -m exercises.check`, the grader is __main__: `import exercises.check` must
    still get the module whose references are switched off, not a fresh copy."""
    r = grade_file(tmp_path, 5, """
        import exercises.check as K

        def pruned_iou(a, b):
            return K.pruned_iou_ref(a, b)
        """, tail=IOU_OK)
    assert (r.returncode == 1
            and "calls exercises.check.pruned_iou_ref" in r.stdout), r.stdout + r.stderr
    r = grade_file(tmp_path, 5, """
        from exercises.check import exact_chance_iou
        TABLE = {p: exact_chance_iou(p) for p in (0.1, 0.25, 0.4, 0.5, 0.8)}  # precomputed at import

        def pruned_iou(a, b):
            return 1.0

        def chance_iou(p):
            return TABLE[p]
        """, "table.py")
    assert (r.returncode == 1 and "does not import" in r.stdout
            and "exact_chance_iou" in r.stdout), r.stdout


def test_everything_is_restored_after_a_shortcut(capsys):
    def sneaky(scores, N, M):
        import exercises_solutions.ex6_nm  # noqa: F401  refused
    assert K.check(6, like(s6, nm_mask=sneaky)) is False
    assert "imports exercises_solutions" in last_line(capsys)
    assert ("exercises_solutions.ex6_nm" in sys.modules
            and importlib.import_module("exercises_solutions.ex6_nm") is s6)
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert xpert._prune_groups(scores, 2).tolist() == [[True, False, True, False]]
    assert K.pruned_iou_ref(torch.tensor([True, False]), torch.tensor([False, False])) == 0.5
    assert os._exit.__module__ == "posix" and torch.get_default_dtype() == torch.float32


# ---------------------------------------------------------------------- correct but unusual answers

def ex5_torch_division(a, b):  # the most natural torch answer: integer tensors divided give float32
    pa, pb = ~a, ~b
    union = (pa | pb).sum()
    return torch.tensor(1.0) if union == 0 else (pa & pb).sum() / union


def ex5_fraction(a, b):
    from fractions import Fraction
    pa, pb = ~a, ~b
    union = int((pa | pb).sum())
    return Fraction(1) if union == 0 else Fraction(int((pa & pb).sum()), union)


def ex5_chance_fraction(p):
    from fractions import Fraction
    return Fraction(p) / (2 - Fraction(p))


def ex5_chance_float32(p):
    p = torch.tensor(p, dtype=torch.float32)
    return p / (2 - p)


# scores.numpy(): the real-layer scores must not require grad
def ex2_numpy(scores, sparsity, group):
    import math

    import numpy as np
    a = scores.numpy()
    if group not in ("out", "in", "layer"):
        raise ValueError(group)
    view = {"out": a, "in": a.T, "layer": a.reshape(1, -1)}[group]
    k = int(math.floor(sparsity * view.shape[1] + 1e-6))
    keep = np.ones(view.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(view, axis=1, kind="stable")[:, :k], False, axis=1)
    keep = {"out": keep, "in": keep.T, "layer": keep.reshape(a.shape)}[group]
    return torch.from_numpy(np.ascontiguousarray(keep))


UNUSUAL = {
    "5-torch-division-float32": (5, like(s5, pruned_iou=ex5_torch_division,
                                         chance_iou=ex5_chance_float32)),
    "5-fraction": (5, like(s5, pruned_iou=ex5_fraction, chance_iou=ex5_chance_fraction)),
    "2-numpy": (2, like(s2, group_mask=ex2_numpy)),
}


@pytest.mark.parametrize("key", sorted(UNUSUAL))
def test_correct_but_unusual_answer_passes(key, capsys):
    n, answer = UNUSUAL[key]
    ok = K.check(n, answer)
    out = capsys.readouterr().out
    assert ok, out
