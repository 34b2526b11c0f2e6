"""Data parallel: `torchrun --nproc_per_node 2 train.py` (DDP over the adapters, gloo on the CPU)
against the plain one-process run with the same global batch and seed, on stories260K.

The two runs must give the same losses and weights to float tolerance and IDENTICAL masks at every
prune event (dumped by a test-only hook); a rank that selects another mask stops the run with one
line and exit 2, leaving nothing on disk; a killed data-parallel run resumes to the same result.
The hooks live in a sitecustomize.py in the test's tmp dir (PYTHONPATH): train.py has none.
"""
import json
import os
import re
import resource
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TINY = ["--model", os.path.join(ROOT, "assets", "models", "stories260K"), "--domain", "legal",
        "--max-docs", "200", "--steps", "12", "--seq-len", "64", "--batch-size", "4",
        "--calib-samples", "4", "--eval-windows", "2", "--pubmedqa-n", "0",
        "--events", "0.3,0.6,1.0", "--lr", "5e-3"]  # events at steps 4, 7, 12 (final)

# Test-only hooks, active only in train.py and only when their variable is set:
#   XPERT_TEST_DUMP=dir   after every prune event, rank r saves the masks to dir/r<r>-event<k>.pt
#   XPERT_TEST_FLIP=1     rank 1 flips one entry of the first mask it selects (a disagreement)
#   XPERT_TEST_DIE=step   rank 0 dies (os._exit, as a SIGKILL) after a checkpoint at >= step
SITE = r'''
import os, sys
if sys.argv and sys.argv[0].endswith("train.py"):
    rank = os.environ.get("RANK", "0")
    if os.environ.get("XPERT_TEST_DUMP"):
        import torch, xpert
        _event = xpert.prune_event
        def prune_event(model, *a, **k):
            state = _event(model, *a, **k)
            masks = {n: lin.mask.clone() for n, lin in xpert.lora_layers(model)}
            torch.save(masks, os.path.join(os.environ["XPERT_TEST_DUMP"],
                                           f"r{rank}-event{state['events']}.pt"))
            return state
        xpert.prune_event = prune_event
    if os.environ.get("XPERT_TEST_FLIP") and rank == "1":
        import xpert
        _select, flipped = xpert.select_mask, []
        def select_mask(*a, **k):
            keep = _select(*a, **k)
            if not flipped:
                keep.view(-1)[0] ^= True
                flipped.append(1)
            return keep
        xpert.select_mask = select_mask
    if os.environ.get("XPERT_TEST_DIE") and rank == "0":
        import fileio.runs as runs
        _save = runs.save_checkpoint
        def save_checkpoint(work, model, opt, state, extra, rng=None):
            _save(work, model, opt, state, extra, rng)
            if extra["step"] >= int(os.environ["XPERT_TEST_DIE"]):
                os._exit(9)
        runs.save_checkpoint = save_checkpoint
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("site")
    (d / "sitecustomize.py").write_text(SITE)
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def environ(site, cache, **hooks):
    """A clean environment (no torchrun variables of our own, no other hooks) plus these."""
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("XPERT_TEST")}
    env.update(XPERT_CACHE=str(cache), PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **hooks)
    return env


def cpu_seconds(cmd, env, timeout=300):
    """Run cmd -> (CompletedProcess, user + system CPU seconds of it and its children)."""
    t0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    t1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime)


def torchrun(args, env):
    """The torchrun command (the module torchrun runs), 2 processes on this machine."""
    return cpu_seconds([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "train.py", *args], env)


def lines(stderr):
    """stderr without progress bars and torchrun's own warnings: what a user reads from us."""
    return [l for l in stderr.replace("\r", "\n").splitlines()
            if l.strip() and not re.search(r"\d+%\||it/s\]|s/it\]", l)]


def weights(out):
    from fileio.hf import load_state_dict
    from model import PROJECTIONS
    sd = load_state_dict(str(out))
    return {k: v for k, v in sd.items() if any(k.endswith(p + ".weight") for p in PROJECTIONS)}


def assert_same_run(a, b):
    """Two finished runs: losses and weights to float tolerance, masks identical; -> numbers."""
    ja, jb = (json.load(open(os.path.join(p, "run.json"))) for p in (a, b))
    assert len(ja["losses"]) == len(jb["losses"]) == 12
    dloss = max(abs(x - y) for x, y in zip(ja["losses"], jb["losses"]))
    assert dloss <= 2e-5, (ja["losses"], jb["losses"])
    assert [t["changed"] for t in ja["timings"]] == [t["changed"] for t in jb["timings"]]
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and len(wa) == 35  # 5 blocks × 7 projections
    for k in wa:
        assert torch.equal(wa[k] == 0, wb[k] == 0), f"{k}: the saved zero patterns differ"
        assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), (k, (wa[k] - wb[k]).abs().max())
    dw = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    ppl = [j["metrics"]["domain_test_ppl"]["value"] for j in (ja, jb)]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-5)
    return dloss, dw, ppl


@pytest.fixture(scope="module")
def one(site, cache, tmp_path_factory):
    """The plain one-process run (no torchrun, no process group), masks dumped at every event."""
    d = tmp_path_factory.mktemp("one")
    (d / "masks").mkdir()
    env = environ(site, cache, XPERT_TEST_DUMP=str(d / "masks"))
    r, _ = cpu_seconds([sys.executable, "train.py", *TINY, "--out", str(d / "out")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data parallel" not in r.stdout and "processes" not in json.load(
        open(d / "out" / "run.json")), "a plain run must not be a data-parallel one"
    return d


def test_two_processes_equal_one_process(one, site, cache, tmp_path):
    (tmp_path / "masks").mkdir()
    env = environ(site, cache, XPERT_TEST_DUMP=str(tmp_path / "masks"))
    r, cpu = torchrun([*TINY, "--out", str(tmp_path / "out")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data parallel: 2 processes (gloo), each 2 sequences of every batch and 2 " \
           "calibration windows" in r.stdout
    assert r.stdout.count("prune event 1 at step 4") == 1, "rank 0 alone logs"
    assert json.load(open(tmp_path / "out" / "run.json"))["processes"] == 2
    for k in (1, 2, 3):  # every event: both ranks hold exactly the one-process run's masks
        ref = torch.load(one / "masks" / f"r0-event{k}.pt")
        assert len(ref) == 35
        for rank in (0, 1):
            got = torch.load(tmp_path / "masks" / f"r{rank}-event{k}.pt")
            bad = [n for n in ref if not torch.equal(ref[n], got[n])]
            assert not bad, f"event {k}, rank {rank}: masks differ in {bad}"
    dloss, dw, ppl = assert_same_run(one / "out", tmp_path / "out")
    print(f"\n2-process torchrun: {cpu:.1f} s CPU; max |loss diff| {dloss:.1e}, max |weight diff| "
          f"{dw:.1e}, domain ppl {ppl[0]:.6f} vs {ppl[1]:.6f}; masks identical at 3 events")


def test_rank_disagreement_stops_with_one_line_and_nothing_on_disk(site, cache, tmp_path):
    """The two ranks started as torchrun starts them (env:// rendezvous), so that each one's exit
    code and stderr can be read; under torchrun the same line comes before torchrun's report."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    procs = []
    for rank in (0, 1):
        env = environ(site, cache, XPERT_TEST_FLIP="1", RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "train.py", *TINY, "--out", str(out)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    (_, err0), (_, err1) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [2, 2], (err0[-2000:], err1[-2000:])
    assert lines(err0) == ["error: the 2 processes disagree on 1 of 35 masks after prune event 1; "
                           "stopped"], err0[-2000:]
    assert lines(err1) == [], "one line in all: rank 0 speaks"
    assert sorted(os.listdir(tmp_path)) == [], "no output, no .partial, no lock left"


def test_killed_data_parallel_run_resumes_to_the_same_result(one, site, cache, tmp_path):
    out = tmp_path / "out"
    r, cpu1 = torchrun([*TINY, "--out", str(out)], environ(site, cache, XPERT_TEST_DIE="7"))
    assert r.returncode != 0 and not out.exists(), r.stderr[-2000:]
    ck = torch.load(str(out) + ".partial/ckpt.pt", weights_only=False)
    assert (ck["step"], ck["events_done"]) == (7, 2)  # killed after the second event's checkpoint
    r, cpu2 = torchrun([*TINY, "--out", str(out), "--resume"], environ(site, cache))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("resumed from") == 1
    dloss, dw, _ = assert_same_run(one / "out", out)
    print(f"\nkilled + resumed 2-process run: {cpu1 + cpu2:.1f} s CPU; max |loss diff| "
          f"{dloss:.1e}, max |weight diff| {dw:.1e}")


@pytest.mark.parametrize("flag,value", [("--batch-size", "3"), ("--calib-samples", "5")])
def test_shares_must_divide(flag, value, site, cache, tmp_path):
    """Refused before the process group forms: one process with torchrun's variables shows it."""
    env = environ(site, cache, RANK="0", LOCAL_RANK="0", WORLD_SIZE="2")
    r, _ = cpu_seconds([sys.executable, "train.py", *TINY, flag, value,
                        "--out", str(tmp_path / "out")], env)
    assert r.returncode == 2
    assert lines(r.stderr) == [f"error: {flag} {value} must be divisible by the 2 processes "
                               "(each takes an equal share)"], r.stderr
    assert os.listdir(tmp_path) == []
