"""docs/walkthrough.py — one prune event step by step on the committed stories260K — runs, states
the exact sparsity after the fold and after merge_lora, and writes its figures (issue 14)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("walkthrough_scores.png", "walkthrough_mask_rows.png", "walkthrough_mask_iou.png")


def test_walkthrough_runs_prints_exact_sparsity_and_writes_figures(tmp_path):
    pytest.importorskip("matplotlib")
    r = subprocess.run([sys.executable, os.path.join("docs", "walkthrough.py"), "--out",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"exact sparsity: (\d+)/(\d+) projections have exactly floor\(p·m·n\) zeros "
                  r"after the fold, (\d+)/(\d+) after merge_lora", r.stdout)
    assert m and m.group(1) == m.group(2) == m.group(3) == m.group(4) == "35", r.stdout
    # merge keeps the function: the fold already applied everything
    assert "max |Δlogits| = 0.0e+00" in r.stdout
    for step in ("[2] capture", "[3] ForeSight scores", "[4] mask", "[5] update",
                 "[7] the whole event"):
        assert step in r.stdout
    for name in FIGURES:
        path = tmp_path / name
        assert path.exists() and 5_000 < path.stat().st_size < 200_000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_figures_are_small_pngs():
    for name in FIGURES:
        path = os.path.join(ROOT, "docs", "figures", name)
        assert os.path.exists(path), f"{path}: run python docs/walkthrough.py"
        assert os.path.getsize(path) < 200_000
