"""End to end: the real `train.py` / `eval.py` commands, as subprocesses, on a tiny real model.

Every --method runs in seconds; the output folder reloads with our loader and with transformers
(identical logits), is exactly p-sparse, and eval.py reads it. A run killed by a real SIGKILL
resumes to the same result as an uninterrupted one. Every bad input is one line, exit code 2,
nothing on disk.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

TINY = ["--domain", "legal", "--max-docs", "60", "--steps", "6", "--batch-size", "2", "--seq-len",
        "64", "--calib-samples", "4", "--eval-windows", "3", "--pubmedqa-n", "3", "--events",
        "0.5,1.0", "--sparsity", "0.5", "--rank", "4", "--ckpt-every", "2"]


def messages(stderr):
    """stderr without tqdm's progress bars (a cold token cache draws one before the error): what a
    user reads."""
    return [l for l in stderr.replace("\r", "\n").splitlines() if l.strip()
            and not re.search(r"\d+%\|", l)]


def run(args, cache, timeout=300):
    env = dict(os.environ, XPERT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def adapted(sd):
    from model import PROJECTIONS
    return {k: v for k, v in sd.items() if ".layers." in k
            and any(k.endswith(p + ".weight") for p in PROJECTIONS)}


@pytest.mark.parametrize("method,extra", [(m, []) for m in ("xpert", "foresight", "lora",
                                                            "lora-magnitude", "lora-wanda",
                                                            "lora-sparsegpt", "wanda-lora")]
                         + [("xpert", ["--pbs", "sparsegpt"])])  # the SparseGPT-update variant
def test_every_method_end_to_end(method, extra, tiny_model_dir, cache, tmp_path):
    out = tmp_path / method
    r = run(["train.py", "--model", tiny_model_dir, "--method", method, "--out", str(out), *TINY,
             *extra], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not os.path.exists(str(out) + ".partial"), "the work folder must be renamed into place"
    runj = json.load(open(out / "run.json"))
    assert runj["config"]["method"] == method
    assert runj["config"]["pbs"] == (extra[1] if extra else "output")
    assert ("domain_test_ppl" in runj["metrics"]
            and runj["metrics"]["domain_test_ppl"]["windows"] == 3)
    assert os.path.exists(out / "train.log") and os.path.exists(out / "config.json")
    assert not os.path.exists(out / "ckpt.pt")

    from fileio.hf import load_state_dict
    from model import LLaMA
    sd = adapted(load_state_dict(str(out)))
    for k, w in sd.items():
        zeros = int((w == 0).sum())
        if method == "lora":
            assert zeros == 0, k  # the dense reference stays dense
        else:
            assert zeros == w.numel() // 2, (
                f"{k}: {zeros} zeros of {w.numel()}, expected exactly 50%")
    sparsity = runj["sparsity"]["overall"]
    assert sparsity == pytest.approx(0.0 if method == "lora" else 0.5, abs=1e-9)

    # the saved folder is a standard HF folder: transformers and our loader give the same logits
    from transformers import AutoModelForCausalLM
    ours = LLaMA.from_pretrained(str(out))
    theirs = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 17))
    with torch.no_grad():
        a, b = ours(x), theirs(x).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    hf = dict(theirs.named_parameters())
    assert all(torch.equal(hf[k] == 0, w == 0) for k, w in sd.items()), (
        "transformers sees the same zeros")

    # eval.py reads it back: same domain test perplexity as train.py measured, plus the saved
    # sparsity
    r = run(["eval.py", str(out), "--seq-len", "64", "--windows", "3", "--pubmedqa-n", "3",
             "--out", str(tmp_path / "m.json")], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.load(open(tmp_path / "m.json"))[str(out)]
    assert (ev["metrics"]["domain_test_ppl"]["value"]
            == pytest.approx(runj["metrics"]["domain_test_ppl"]["value"], rel=1e-4))
    assert ev["sparsity"] == pytest.approx(sparsity, abs=1e-9)


def test_compare_table(tiny_model_dir, cache, tmp_path):
    runs = []
    for method in ("lora", "xpert"):
        out = tmp_path / method
        r = run(["train.py", "--model", tiny_model_dir, "--method", method, "--out", str(out),
                 *TINY], cache)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(str(out))
    r = run(["eval.py", "--compare", *runs], cache)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("| ")]
    assert len(lines) == 3  # header + two runs
    lora_row = next(l for l in lines if "| lora |" in l)
    assert "(100.0%)" in lora_row  # the reference is 100% of itself
    j = [json.load(open(os.path.join(p, "run.json"))) for p in runs]
    rel = j[0]["metrics"]["domain_test_ppl"]["value"] / j[1]["metrics"]["domain_test_ppl"]["value"]
    assert f"({100 * rel:.1f}%)" in next(l for l in lines if "| xpert |" in l)


def test_resume_after_sigkill_matches_uninterrupted(tiny_model_dir, cache, tmp_path):
    args = ["train.py", "--model", tiny_model_dir, "--method", "xpert", *TINY, "--steps", "40",
            "--ckpt-every", "1", "--events", "0.3,0.6,1.0"]
    full = tmp_path / "full"
    r = run([*args, "--out", str(full)], cache)
    assert r.returncode == 0, r.stderr[-3000:]

    killed = tmp_path / "killed"
    env = dict(os.environ, XPERT_CACHE=str(cache))
    p = subprocess.Popen([sys.executable, *args, "--out", str(killed)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = str(killed) + ".partial/ckpt.pt"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(ckpt):
            try:
                step = torch.load(ckpt, weights_only=False)["step"]
            except Exception:
                step = 0  # caught between write and rename of an older file: try again
            if step >= 16:  # past the first prune event (step 12), before the second (step 24)
                break
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed; make it longer"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(killed), (
        "a killed run must not leave a finished-looking output folder")
    assert 16 <= step < 40

    # not the run that was killed
    r = run([*args, "--out", str(killed), "--resume", "--seed", "1"], cache)
    assert (r.returncode == 2 and "different options" in r.stderr
            and "seed" in r.stderr), r.stderr[-2000:]
    assert os.path.exists(ckpt), "a refused resume must keep the checkpoint"

    r = run([*args, "--out", str(killed), "--resume"], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a = json.load(open(full / "run.json"))
    b = json.load(open(killed / "run.json"))
    assert a["losses"] == b["losses"]
    assert (a["metrics"]["domain_test_ppl"]["value"]
            == pytest.approx(b["metrics"]["domain_test_ppl"]["value"], rel=1e-6))
    from fileio.hf import load_state_dict
    wa, wb = adapted(load_state_dict(str(full))), adapted(load_state_dict(str(killed)))
    for k in wa:
        assert torch.equal(wa[k] == 0, wb[k] == 0), f"{k}: masks differ after resume"
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


BAD = [
    (["--domain", "finance"], "unknown domain"),
    (["--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--sparsity", "-0.1"], "--sparsity"),
    (["--nm", "4:2"], "--nm"),
    (["--nm", "two:four"], "--nm"),
    (["--seq-len", "100000"], "split"),
    (["--calib-samples", "100000"], "calib"),
    (["--dropout", "1.5"], "--dropout"),
    (["--lr", "0"], "--lr"),
    (["--ema", "0"], "--ema"),
    (["--eval-windows", "-1"], "--eval-windows"),
    (["--max-docs", "2"], "--max-docs"),
    (["--device", "cuda:7"], "--device"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_one_line_exit_2_nothing_on_disk(extra, needle, tiny_model_dir, cache, tmp_path):
    out = tmp_path / "run"
    args = ["train.py", "--model", tiny_model_dir, *TINY, "--out", str(out)]
    if "--domain" in extra or "--data" in extra:  # replace the default --domain legal
        i = args.index("--domain")
        del args[i:i + 2]
    r = run([*args, *extra], cache)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    err = messages(r.stderr)
    assert len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert needle in err[0]
    assert "Traceback" not in r.stderr
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".partial")


def test_nan_loss_before_any_checkpoint_leaves_nothing(tiny_model_dir, cache, tmp_path):
    out = tmp_path / "nan"  # lr 1e30: the first Adam step already sends the adapter to ±1e30
    r = run(["train.py", "--model", tiny_model_dir, *TINY, "--method", "lora", "--lr", "1e30",
             "--warmup", "0", "--ckpt-every", "1", "--out", str(out)], cache)
    assert r.returncode == 2, r.stderr[-2000:]
    # the rest is the progress bar
    err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert (len(err) == 1 and "loss became" in err[0]
            and "no checkpoint was written yet" in err[0]), r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".partial")


def test_nan_loss_keeps_the_last_good_checkpoint(tiny_model_dir, cache, tmp_path, monkeypatch,
                                                 capsys):
    # the loss turns NaN at the 4th training step (steps 0-2 were finite): the run must stop with
    # one line, and the checkpoint it keeps must be the state of step 2 — the last one whose loss
    # was finite — not the weights that the update after it produced
    import train
    from model import LLaMA
    monkeypatch.setenv("XPERT_CACHE", str(cache))
    forward, calls = LLaMA.forward, []

    def poisoned(self, idx, targets=None, **kw):
        if targets is None or not self.training:
            return forward(self, idx, targets=targets, **kw)
        logits, loss = forward(self, idx, targets=targets, **kw)
        calls.append(loss.item())
        return logits, (loss * float("nan") if len(calls) == 4 else loss)
    monkeypatch.setattr(LLaMA, "__call__", poisoned)
    out = tmp_path / "nan2"
    code = train.main(["--model", tiny_model_dir, *TINY, "--method", "lora", "--ckpt-every", "1",
                       "--out", str(out)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error:")]
    assert (code == 2 and len(err) == 1 and "loss became nan at step 3" in err[0]
            and "kept" in err[0]), err
    ck = torch.load(str(out) + ".partial/ckpt.pt", weights_only=False)
    assert (ck["step"] == 2 and len(ck["losses"]) == 2
            and ck["losses"] == [round(v, 5) for v in calls[:2]])
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not os.path.exists(out)


@pytest.mark.parametrize("content,needle", [("", "empty"), ("one short document", "document"),
                                            ('{"text": "a"}\n{"nope": 1}\n', "text")],
                         ids=["empty", "one-doc", "bad-jsonl"])
def test_bad_corpus_one_line_exit_2_nothing_on_disk(content, needle, tiny_model_dir, cache,
                                                    tmp_path):
    corpus = tmp_path / ("c.jsonl" if content.startswith("{") else "c.txt")
    corpus.write_text(content)
    out = tmp_path / "run"
    args = [a for a in TINY if a not in ("--domain", "legal")]
    r = run(["train.py", "--model", tiny_model_dir, *args, "--data", str(corpus), "--out",
             str(out)], cache)
    assert r.returncode == 2, r.stderr[-2000:]
    err = messages(r.stderr)
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert not os.path.exists(out) and not os.path.exists(str(out) + ".partial")


def test_bad_model_folders(cache, tmp_path):
    non_llama = tmp_path / "gpt2"
    non_llama.mkdir()
    (non_llama / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    for folder, needle in ((tmp_path / "missing", "not found"), (non_llama, "gpt2")):
        out = tmp_path / "o"
        r = run(["train.py", "--model", str(folder), "--domain", "legal", "--out", str(out)], cache)
        assert r.returncode == 2 and needle in r.stderr and len(messages(r.stderr)) == 1, r.stderr
        assert not os.path.exists(out) and not os.path.exists(str(out) + ".partial")


def test_existing_output_needs_overwrite(tiny_model_dir, cache, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run(["train.py", "--model", tiny_model_dir, *TINY, "--out", str(out)], cache)
    assert (r.returncode == 2 and "--overwrite" in r.stderr
            and len(messages(r.stderr)) == 1), r.stderr
    assert (out / "keep.txt").read_text() == "mine" and not os.path.exists(str(out) + ".partial")


def test_help_lists_every_option_with_default():
    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0
    for opt in ("--domain", "--data", "--model", "--method", "--sparsity", "--nm", "--group",
                "--pbs", "--rank", "--alpha", "--dropout", "--lr", "--steps", "--batch-size",
                "--seq-len", "--events", "--ema", "--calib", "--calib-samples", "--device",
                "--dtype", "--seed", "--out", "--resume", "--overwrite"):
        assert opt in r.stdout, opt
    assert "(default: 0.4)" in r.stdout and "(default: xpert)" in r.stdout
    import train  # every option of DEFAULTS shows its default in --help
    text = " ".join(r.stdout.split())
    for k, v in train.DEFAULTS.items():
        if v is not None and not isinstance(v, bool):
            assert f"(default: {v})" in text, k


def test_mask_overlap_matches_direct_iou_and_refuses_bad_pairs(tiny_model_dir, cache, tmp_path):
    from model import LLaMA, PROJECTIONS
    g = torch.Generator().manual_seed(0)
    folders, masks = [], []
    for i in range(2):  # two "runs" with known, exactly 50%-sparse random masks
        m = LLaMA.from_pretrained(tiny_model_dir)
        mk = {}
        for b, block in enumerate(m.model.layers):
            for p in PROJECTIONS:
                W = block.get_submodule(p).weight
                prune = torch.zeros(W.numel(), dtype=torch.bool)
                prune[torch.randperm(W.numel(), generator=g)[:W.numel() // 2]] = True
                # (no exact zeros in a real checkpoint, but be sure)
                prune = prune.view_as(W) | (W == 0)
                with torch.no_grad():
                    W[prune] = 0
                mk[(b, p)] = prune
        m.save_pretrained(str(tmp_path / f"run{i}"), tokenizer_dir=tiny_model_dir)
        folders.append(str(tmp_path / f"run{i}"))
        masks.append(mk)
    png = tmp_path / "iou.png"
    r = run(["eval.py", "--mask-overlap", *folders, "--png", str(png)], cache)
    assert r.returncode == 0, r.stderr[-2000:]
    # the heatmap is optional: written when matplotlib is installed, a one-line note when it is not
    try:
        import matplotlib  # noqa: F401
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"heatmap: {png}" in r.stdout
    except ImportError:
        assert not png.exists() and "matplotlib is not installed" in r.stdout
    rows = [l for l in r.stdout.splitlines() if l.startswith("| ")
            and l.split("|")[1].strip().isdigit()]
    assert len(rows) == len({b for b, _ in masks[0]})
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        b = int(cells[0])
        for j, p in enumerate(PROJECTIONS):
            a, c = masks[0][(b, p)], masks[1][(b, p)]
            iou = (a & c).sum().item() / (a | c).sum().item()  # the direct computation
            assert abs(float(cells[1 + j]) - iou) < 6e-4, (b, p)
    summary = [l for l in r.stdout.splitlines() if l.startswith("| run0 vs run1 |")]
    direct = [(masks[0][k] & masks[1][k]).sum().item() / (masks[0][k] | masks[1][k]).sum().item()
              for k in masks[0]]
    assert (len(summary) == 1
            and abs(float(summary[0].split("|")[2]) - sum(direct) / len(direct)) < 6e-4)
    # refusals: one run, a dense folder, another sparsity
    dense = tiny_model_dir
    m = LLaMA.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for block in m.model.layers:
            for p in PROJECTIONS:
                W = block.get_submodule(p).weight
                W[:, : W.shape[1] // 4] = 0
    m.save_pretrained(str(tmp_path / "quarter"), tokenizer_dir=tiny_model_dir)
    for paths, needle in (([folders[0]], "two runs"), ([folders[0], dense], "no pruned weights"),
                          ([folders[0], str(tmp_path / "quarter")], "differs")):
        r = run(["eval.py", "--mask-overlap", *paths], cache)
        assert r.returncode == 2 and needle in r.stderr and len(messages(r.stderr)) == 1, r.stderr


def test_grid_record_and_tables_relative_to_the_matching_dense_run(tmp_path, monkeypatch):
    # bench/grid.py: results/grid.json holds one record per cell, each relative to the dense lora
    # run of its domain and seed (docs/paper.md §7: dense ppl / ppl, acc / dense acc), recomputed
    # when the reference lands late; the RESULTS tables come from the record alone; a recorded cell
    # is not run again
    from bench import grid
    monkeypatch.setattr(grid, "RECORD", str(tmp_path / "results" / "grid.json"))

    def cell(name, label, method, ppl, seed=0, acc=None, changed=()):
        metrics = {"domain_test_ppl": {"value": ppl, "split": "health test", "seq_len": 256,
                                       "windows": 16},
                   "wikitext2_ppl": {"value": 2 * ppl},
                   "pubmedqa_abstracts_ppl": {"value": 3 * ppl}}
        if acc is not None:
            metrics["pubmedqa_acc"] = {"value": acc}
        os.makedirs(tmp_path / name)
        json.dump({"config": {"domain": "health", "method": method, "sparsity": 0.4, "seed": seed},
                   "metrics": metrics, "base": {"domain_test_ppl": {"value": 20.0}},
                   "sparsity": {"overall": 0.4}, "timings": [{"event": "wanda (before LoRA)"}]
                   + [{"changed": c} for c in changed], "wall_time_s": 1, "train_time_s": 1,
                   "peak_memory_mb": 1}, open(tmp_path / name / "run.json", "w"))
        recs = grid.load_record()
        grid.save_record(recs + [grid.record_of(name, label, ["--domain", "health"],
                                                str(tmp_path / name), "abc")])
    # before its reference: filled in later
    cell("xp0", "xpert-eq2-early", "xpert", 12.5, acc=0.4, changed=(7, 0))
    cell("lora0", "lora", "lora", 10.0, acc=0.5)
    cell("lora1", "lora", "lora", 20.0, seed=1, acc=0.5)
    cell("xp1", "xpert-eq2-early", "xpert", 20.0, seed=1, acc=0.5, changed=(5, 1))
    cell("wl0", "wanda-lora", "wanda-lora", 11.0, acc=0.5)
    recs = {r["cell"]: r for r in grid.load_record()}
    assert (recs["xp0"]["relative_to_lora"]["domain_test_ppl"] == 0.8
            and recs["xp0"]["relative_to_lora"]["pubmedqa_acc"] == 0.8)
    assert (recs["xp1"]["relative_to_lora"]["domain_test_ppl"] == 1.0
            and recs["xp0"]["changed_per_event"] == [7, 0])
    assert recs["xp0"]["metric_context"]["domain_test_ppl"] == {"split": "health test",
                                                                "seq_len": 256, "windows": 16}
    assert (recs["xp0"]["command"] == "python train.py --domain health"
            and recs["lora0"]["sparsity"] == 0.0)
    md = grid.tables(list(recs.values()))
    row = next(l for l in md.splitlines() if "| xpert-eq2-early |" in l)
    assert ("| 2 | 16.250 ± 3.750 (90.0%) |" in row
            and row.rstrip(" |").endswith("7 / 0; 5 / 1 | 20.000 ± 0.000"))
    # the mean of the three ppl ratios per seed (0.8 and 1.0), not the accuracy
    assert "| 90.0% ± 10.0% |" in row
    verdict = next(l for l in md.splitlines()
                   if l.startswith("| health | 0.4 | xpert-eq2-early, 2 seeds"))
    # wanda-lora's 10/11 is ahead; no lora-wanda cell
    assert "(90.0%) | 90.9% | – | -0.9 points | – |" in verdict
    # another budget: no dense run of it yet, no relative
    cell("xp48", "xpert-eq2-early+steps48", "xpert", 8.0)
    assert all(v is None for v in
               {r["cell"]: r for r in grid.load_record()}["xp48"]["relative_to_lora"].values())
    cell("lora48", "lora+steps48", "lora", 4.0)
    assert {r["cell"]: r for r in grid.load_record()}["xp48"]["relative_to_lora"][
        "domain_test_ppl"] == 0.5
    assert [c[0] for c in grid.cells(["legal"], [0.4], [0], {"lora", "xpert-eq2-early"},
                                     ["--steps", "48"])] == \
        ["legal-lora+steps48-seed0", "legal-xpert-eq2-early-s0.4+steps48-seed0"]
    assert "--steps 24" not in " ".join(grid.cells(["legal"], [0.4], [0], {"lora"},
                                                   ["--steps", "48"])[0][2])
    ran = []
    monkeypatch.setattr(grid.subprocess, "run", lambda *a, **k: ran.append(a)
                        or grid.subprocess.CompletedProcess(a, 0, "x\n"))
    grid.run_cells([("xp0", "xpert-eq2-early", [])], str(tmp_path))
    # only the commit lookup; the cell is recorded
    assert ran == [(["git", "rev-parse", "--short", "HEAD"],)]


def test_grid_resumes_a_killed_cell_only_from_a_checkpoint(tmp_path, monkeypatch):
    # a cell killed after its first checkpoint (or after its result, before the publish) continues
    # (--resume); one killed before it (a .partial with only train.log, as a killed grid leaves
    # behind) starts again (--overwrite) instead of failing on --resume
    from bench import grid
    monkeypatch.setattr(grid, "RECORD", str(tmp_path / "results" / "grid.json"))
    monkeypatch.setattr(grid, "record_of", lambda name, label, *a: {
        "cell": name, "label": label, "domain": "legal", "seed": 0, "sparsity": 0.0, "metrics": {}})
    for name, files in (("a", ["train.log", "ckpt.pt"]), ("b", ["train.log"]), ("c", []),
                        ("d", ["run.json"])):
        if files:
            os.makedirs(tmp_path / f"{name}.partial")
        for f in files:
            open(tmp_path / f"{name}.partial" / f, "w").close()
    ran = []
    monkeypatch.setattr(grid.subprocess, "run", lambda cmd, **k: ran.append(cmd)
                        or grid.subprocess.CompletedProcess(cmd, 0, "x\n"))
    grid.run_cells([(n, "lora", ["--domain", "legal"]) for n in "abcd"], str(tmp_path))
    tails = [c[-3:] for c in ran if "train.py" in " ".join(c)]
    assert tails == [["--out", str(tmp_path / "a"), "--resume"],
                     ["--out", str(tmp_path / "b"), "--overwrite"],
                     ["legal", "--out", str(tmp_path / "c")],
                     ["--out", str(tmp_path / "d"), "--resume"]]


def test_results_and_readme_tables_are_generated_from_the_records():
    # the committed numbers are data (results/*.json); RESULTS.md and README.md show exactly what
    # bench/results.py computes from them, so prose tables and data cannot drift apart
    from bench import grid, results
    records = grid.load_record()
    assert records and all(r["command"].startswith("python train.py ") for r in records)
    # measured on the weights
    assert all(abs(r["measured_sparsity"] - r["sparsity"]) < 1e-3 for r in records)
    made = results.blocks(*results.records())
    assert {name for _, name, _ in made} >= {"results/grid.json", "results/genre", "results/budget",
                                             "results/default-runs.json", "results/headline"}
    for path, name, render in made:
        text = open(path, encoding="utf-8").read()
        block = text.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]
        assert block == render() + "\n", f"{path}: {name} is not what bench/results.py makes"


def test_eval_prune_oneshot_matches_direct_computation(tiny_model_dir, cache, tmp_path,
                                                       monkeypatch):
    # eval.py --prune: the folder pruned one-shot (no training) then measured — checked against the
    # same steps done by hand with the library
    out = tmp_path / "m.json"
    r = run(["eval.py", tiny_model_dir, "--domain", "legal", "--prune", "wanda", "--sparsity",
             "0.5", "--calib-samples", "4", "--seq-len", "64", "--windows", "3", "--out", str(out)],
            cache)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.load(open(out))[tiny_model_dir]
    import data
    import eval as evaluation
    import xpert
    from model import LLaMA, Tokenizer
    monkeypatch.setenv("XPERT_CACHE", str(cache))
    m = LLaMA.from_pretrained(tiny_model_dir)
    splits = data.prepare(domain="legal", tokenizer=Tokenizer(tiny_model_dir),
                          options=data.SplitOptions(seed=0), progress=False)
    dense = evaluation.perplexity(m, data.windows(splits.test, 64, 3), progress=False)[0]
    xpert.prune_oneshot(m, data.calib_windows(splits.calib, 4, 64, 0), "wanda", 0.5)
    ppl = evaluation.perplexity(m, data.windows(splits.test, 64, 3), progress=False)[0]
    assert (got["sparsity"] == xpert.sparsity_report(m)["overall"]
            and abs(got["sparsity"] - 0.5) < 1e-3)
    assert abs(got["metrics"]["domain_test_ppl"]["value"] - ppl) < 1e-6 * ppl and ppl != dense
    assert "pruned one-shot with wanda at 0.5" in r.stdout
