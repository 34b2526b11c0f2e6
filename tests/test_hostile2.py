"""Issue 23: nothing of the user's is ever deleted or silently mixed (the second hostile pass).

One test per reported case, black box wherever a command reaches it: the real `train.py` /
`eval.py` / `model.py` on stories260K, as subprocesses. Faults are real where the machine allows
(a real SIGINT to a real run, a small tmpfs mounted as root for a full disk, a model file edited
between a kill and the resume, a corpus appended to between training and evaluation) and injected
at the write otherwise. Every refusal is exit code 2 and one line `error: ...` naming what it
found; every data-loss case hashes the user's files before and after. Every test here fails on the
code the issue was filed against.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from types import SimpleNamespace

import pytest

from test_hostile import (COMPUTE, FAST, MODEL, ROOT, Bg, assert_nothing_on_disk,
                          assert_one_line_error, copy_model, corpus_text, filling_disk, messages,
                          run, short, st_save_tensors, st_tensors, wait_for)

pytestmark = pytest.mark.skipif(MODEL is None, reason="stories260K not found")


# -----------------------------------------------------------------------------
# helpers

def sha(file):
    with open(file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree_hash(path):
    """{relative path: sha256 (or 'dir')} of everything under path (a file: {'.': sha256})."""
    path = str(path)
    if os.path.isfile(path):
        return {".": sha(path)}
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in files:
            out[os.path.relpath(os.path.join(root, f), path)] = sha(os.path.join(root, f))
    return out


def user_folder(d):
    """A folder of the user's own files (not a run)."""
    os.makedirs(d / "sub")
    (d / "notes.txt").write_text("my notes\n")
    (d / "results.csv").write_text("a,b\n1,2\n")
    (d / "sub" / "data.bin").write_bytes(os.urandom(1000))
    return d


def train_args(out, *extra, model=MODEL):
    return ["train.py", "--model", model, *FAST, "--method", "lora", "--steps", "2", *extra,
            "--out", str(out)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def legal_run(cache, tmp_path_factory):
    """A finished lora run on the legal domain."""
    out = tmp_path_factory.mktemp("legal") / "legal-lora"
    r = run(train_args(out), cache)
    assert r.returncode == 0, short(r)
    return out


def tmpfs(path, size):
    """Mount a tmpfs of `size` at path (root only); False where this machine does not allow it."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a folder on a real tmpfs of that size; pytest.skip where mounting is not
    allowed (the injected variant of the same case runs everywhere)."""
    mounted = []

    def mount(size, name="disk"):
        d = tmp_path / name
        if not tmpfs(d, size):
            pytest.skip("cannot mount a tmpfs here (needs root): the injected variant covers it")
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(folder):
    """Fill the filesystem of folder until nothing more fits."""
    with open(os.path.join(folder, "filler"), "wb") as f:
        while shutil.disk_usage(folder).free > 0:
            try:
                f.write(b"\0" * min(shutil.disk_usage(folder).free, 1 << 20))
                f.flush()
            except OSError:
                break


# -----------------------------------------------------------------------------
# 1. data loss: --overwrite replaces only what train.py made

def test_overwrite_refuses_a_user_folder_and_replaces_a_run(legal_run, cache, tmp_path):
    out = user_folder(tmp_path / "mine")
    before = tree_hash(out)
    r = run(train_args(out, "--overwrite"), cache, stop_on=COMPUTE)
    assert_one_line_error(r, "notes.txt|results.csv|did not write", "--out|overwrite", scrub=[out])
    assert tree_hash(out) == before, "the user's folder was changed"
    assert not os.path.exists(str(out) + ".partial")
    run_copy = tmp_path / "run"  # what --overwrite is for still works: a train.py run is replaced
    shutil.copytree(legal_run, run_copy)
    r = run(train_args(run_copy, "--overwrite", "--seed", "1"), cache)
    assert r.returncode == 0, short(r)
    assert json.load(open(run_copy / "run.json"))["config"]["seed"] == 1


def test_overwrite_refuses_a_plain_file(cache, tmp_path):
    out = tmp_path / "results.csv"
    out.write_text("a,b\n1,2\n")
    before = tree_hash(out)
    r = run(train_args(out, "--overwrite"), cache, stop_on=COMPUTE)
    assert_one_line_error(r, "is a file|not a (train.py )?run", scrub=[out])
    assert os.path.isfile(out) and tree_hash(out) == before
    assert not os.path.exists(str(out) + ".partial")


def test_overwrite_refuses_a_foreign_partial(cache, tmp_path):
    """A folder named like a work folder but holding the user's files is not ours to delete."""
    out = tmp_path / "run"
    partial = user_folder(tmp_path / "run.partial")
    before = tree_hash(partial)
    r = run(train_args(out, "--overwrite"), cache, stop_on=COMPUTE)
    assert_one_line_error(r, "notes.txt|results.csv|did not write", scrub=[out])
    assert tree_hash(partial) == before and not os.path.exists(out)


def test_files_put_at_out_during_the_run_are_not_replaced(cache, tmp_path, monkeypatch, capsys):
    """--out is checked again at the publish: what the user put there meanwhile stays, and the
    finished run waits in .partial for a --resume."""
    import train
    from fileio import runs
    monkeypatch.setenv("XPERT_CACHE", str(cache))
    out = tmp_path / "run"
    real_finish = runs.RunFolder.finish

    def user_writes_meanwhile(self, *a, **k):
        user_folder(out)
        return real_finish(self, *a, **k)

    monkeypatch.setattr(runs.RunFolder, "finish", user_writes_meanwhile)
    rc = train.main(train_args(out)[1:])
    err = messages(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "notes.txt" in err[0] and "--resume" in err[0], err
    assert (out / "notes.txt").read_text() == "my notes\n" and not os.path.exists(out / "run.json")
    assert os.path.exists(os.path.join(str(out) + ".partial", "run.json")), "the run must be kept"


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_out_never_overlaps_the_model_folder(where, cache, tmp_path):
    model = copy_model(tmp_path / "parent" / "model")
    out = {"same": model, "inside": os.path.join(model, "expert"),
           "holds": str(tmp_path / "parent")}[where]
    before = tree_hash(tmp_path / "parent")
    r = run(train_args(out, "--overwrite", model=model), cache, stop_on=COMPUTE)
    assert_one_line_error(r, "--model|model folder", "--out", scrub=[out, model])
    assert tree_hash(tmp_path / "parent") == before, "the model folder was changed"
    assert not os.path.exists(out + ".partial")


def test_out_dot_refused_cleanly(cache, tmp_path):
    here = user_folder(tmp_path / "work")
    before = tree_hash(here)
    r = run([os.path.join(ROOT, "train.py"), *train_args(".", "--overwrite")[1:]], cache, cwd=here,
            stop_on=COMPUTE)
    assert_one_line_error(r, r"--out \.", "runs in|current|this folder")
    assert tree_hash(here) == before, "the folder the command ran in was changed"
    assert sorted(os.listdir(tmp_path)) == ["work"], "a ..partial or .old-* folder was left behind"


# -----------------------------------------------------------------------------
# 2. silent mixes

@pytest.fixture(scope="module")
def killed(cache, tmp_path_factory):
    """A lora run on its own copy of stories260K, SIGKILLed after its first checkpoint; restore()
    puts the interrupted .partial and the original model files back."""
    base = tmp_path_factory.mktemp("killed23")
    model = copy_model(base / "model")
    out = base / "run"
    partial = str(out) + ".partial"
    args = ["train.py", "--model", model, *FAST, "--method", "lora", "--steps", "20",
            "--ckpt-every", "2", "--out", str(out)]
    p = Bg(args, cache)
    wait_for(lambda: os.path.exists(os.path.join(partial, "ckpt.pt")), p, 600, "a checkpoint")
    p.kill()
    assert not os.path.exists(out)
    snap, model_snap = base / "snapshot", base / "model-snapshot"
    shutil.copytree(partial, snap, ignore=shutil.ignore_patterns("*.tmp"))
    shutil.copytree(model, model_snap)

    def restore():
        for d in (out, partial, model):
            shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(snap, partial)
        shutil.copytree(model_snap, model)

    return SimpleNamespace(args=args, out=out, partial=partial, model=model, base=base,
                           restore=restore)


def test_resume_refuses_edited_model_files(killed, cache):
    killed.restore()
    f = os.path.join(killed.model, "model.safetensors")
    t = st_tensors(f)
    t["model.embed_tokens.weight"][:10] *= 1.5  # same path, same shapes, other weights
    st_save_tensors(f, t)
    r = run([*killed.args, "--resume"], cache, stop_on=r"train lora")
    assert_one_line_error(r, "model", "model.safetensors", "chang|not those|differ",
                          scrub=[killed.model])
    assert os.path.exists(os.path.join(killed.partial, "ckpt.pt")), "a refusal keeps the checkpoint"
    assert not os.path.exists(killed.out)


def test_eval_refuses_a_corpus_appended_to_after_training(cache, tmp_path):
    corpus = tmp_path / "mycorpus.txt"
    corpus.write_text(corpus_text())
    out = tmp_path / "run"
    r = run(["train.py", "--model", MODEL, "--data", str(corpus), "--seq-len", "64",
             "--calib-samples", "4", "--eval-windows", "2", "--method", "lora", "--steps", "2",
             "--out", str(out)], cache)
    assert r.returncode == 0, short(r)
    r = run(["eval.py", str(out)], cache)  # the unchanged corpus: its test split is held out
    assert r.returncode == 0 and "domain_test_ppl" in r.stdout, short(r)
    with open(corpus, "a") as f:
        f.write("\nOne more paragraph, appended after training, which reshuffles the splits.\n")
    before = tree_hash(out)
    r = run(["eval.py", str(out)], cache, stop_on=r"domain_test_ppl +ppl")
    assert_one_line_error(r, "corpus", "chang", scrub=[corpus, out])
    assert tree_hash(out) == before


@pytest.mark.parametrize("sparsity", ["0.9", "0.4"])  # 0.4: the default's value, but typed
def test_nm_with_an_explicit_other_sparsity_refused(sparsity, cache, tmp_path):
    out = tmp_path / "run"
    r = run(train_args(out, "--nm", "2:4", "--sparsity", sparsity), cache, stop_on=COMPUTE)
    assert_one_line_error(r, "--nm", f"--sparsity|{sparsity}")
    assert_nothing_on_disk(out)


def test_eval_out_never_the_runs_own_files(legal_run, cache, tmp_path):
    run_copy = tmp_path / "run"
    shutil.copytree(legal_run, run_copy)
    before = tree_hash(run_copy)
    r = run(["eval.py", str(run_copy), "--out", str(run_copy / "run.json")], cache,
            stop_on=COMPUTE)
    assert_one_line_error(r, "run.json", "--out", scrub=[run_copy])
    assert tree_hash(run_copy) == before, "the run's own record was overwritten"


def test_compare_of_different_domains_refused(legal_run, cache, tmp_path):
    health = tmp_path / "health-lora"  # the record of a health run: --compare reads run.json only
    shutil.copytree(legal_run, health)
    j = json.load(open(health / "run.json"))
    j["config"]["domain"] = "health"
    json.dump(j, open(health / "run.json", "w"))
    r = run(["eval.py", "--compare", str(legal_run), str(health)], cache)
    assert_one_line_error(r, "--compare", "legal", "health", "domain|corpora")


def test_eval_prune_without_calibration_refused(legal_run, cache):
    r = run(["eval.py", str(legal_run), "--prune", "wanda", "--calib-samples", "0"], cache,
            stop_on=COMPUTE)
    assert_one_line_error(r, "--calib-samples", "wanda|calibration")


@pytest.mark.parametrize("cmd", ["train", "eval"])
def test_missing_xpert_assets_is_an_error(cmd, legal_run, cache, tmp_path, monkeypatch):
    assert not os.path.exists("/nonexistent")
    monkeypatch.setenv("XPERT_ASSETS", "/nonexistent")
    out = tmp_path / "run"
    r = run(train_args(out) if cmd == "train" else ["eval.py", str(legal_run)], cache,
            stop_on=COMPUTE)
    assert_one_line_error(r, "XPERT_ASSETS", "no such folder|not found|missing")
    assert_nothing_on_disk(out)


# -----------------------------------------------------------------------------
# 3. one line instead of a traceback

def test_jsonl_lone_surrogate_one_line(cache, tmp_path):
    corpus = tmp_path / "c.jsonl"
    lines = [json.dumps({"text": p}) for p in corpus_text().split("\n\n")]
    lines[7] = '{"text": "a smile \\ud83d cut in half by JavaScript slicing"}'
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    r = run(["train.py", "--model", MODEL, "--data", str(corpus), "--seq-len", "64", "--method",
             "lora", "--steps", "2", "--out", str(out)], cache, stop_on=COMPUTE)
    assert_one_line_error(r, "line 8", "surrogate|ud83d", scrub=[corpus])
    assert_nothing_on_disk(out)


@pytest.mark.parametrize("args", [["train", "--seq-len", "1"], ["train", "--seed", "-1"],
                                  ["train", "--seed", str(10**20)], ["eval", "--seq-len", "1"],
                                  ["eval", "--windows", "-1"], ["eval", "--batch-size", "0"]],
                         ids=lambda a: " ".join(a))
def test_out_of_range_numbers_one_line(args, legal_run, cache, tmp_path):
    out = tmp_path / "run"
    cmd = train_args(out, *args[1:]) if args[0] == "train" else \
        ["eval.py", str(legal_run), *args[1:]]
    r = run(cmd, cache, stop_on=COMPUTE)
    assert_one_line_error(r, re.escape(args[1]))
    assert_nothing_on_disk(out)


BAD_CONFIGS = {  # config.json values of the wrong JSON type or range -> what the message names
    "rope factor string": ({"rope_scaling": {"type": "linear", "factor": "2"}}, "factor"),
    "rope factor zero": ({"rope_scaling": {"type": "linear", "factor": 0}}, "factor"),
    "rope factor negative": ({"rope_scaling": {"rope_type": "linear", "factor": -2.0}}, "factor"),
    "sliding_window string": ({"sliding_window": "4096"}, "sliding_window"),
    "eos -1": ({"eos_token_id": -1}, "eos_token_id"),
    "eos beyond vocab": ({"eos_token_id": 600}, "eos_token_id"),
    "eos list beyond vocab": ({"eos_token_id": [2, 512]}, "eos_token_id"),
}


@pytest.mark.parametrize("kind", BAD_CONFIGS)
def test_config_of_wrong_types_one_line(kind, cache, tmp_path):
    model = copy_model(tmp_path / "model")
    cfg = json.load(open(os.path.join(model, "config.json")))
    cfg.update(BAD_CONFIGS[kind][0])
    json.dump(cfg, open(os.path.join(model, "config.json"), "w"))
    out = tmp_path / "run"
    r = run(train_args(out, model=model), cache, stop_on=COMPUTE)
    msg = assert_one_line_error(r, "config.json", BAD_CONFIGS[kind][1], scrub=[model])
    assert "--lr" not in msg, "the config is at fault, not the learning rate"
    assert_nothing_on_disk(out)


def test_prompt_of_invalid_utf8_one_line(cache):
    r = run(["model.py", "--model", MODEL, "--prompt", b"Once upon \xff\xfe a time",
             "--max-new-tokens", "2"], cache)
    assert_one_line_error(r, "--prompt", "UTF-8")


TINY_LONG = ["train.py", "--preset", "tiny", "--domain", "legal", "--steps", "400"]


def test_ctrl_c_one_line_and_resumable(cache, tmp_path):
    out = tmp_path / "run"
    partial = str(out) + ".partial"
    args = [*TINY_LONG, "--ckpt-every", "2", "--out", str(out)]
    p = Bg(args, cache)
    wait_for(lambda: os.path.exists(os.path.join(partial, "ckpt.pt")), p, 300, "a checkpoint")
    p.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    r = p.result(timeout=60)
    assert "Traceback" not in r.stderr and "KeyboardInterrupt" not in r.stderr, short(r)
    msgs = messages(r.stderr)
    assert r.returncode == 130, short(r)
    assert len(msgs) == 1, msgs[-3:]
    assert re.fullmatch(r"interrupted at step \d+ .*continue with --resume", msgs[0]), msgs
    step = int(re.search(r"step (\d+)", msgs[0]).group(1))
    import torch
    assert torch.load(os.path.join(partial, "ckpt.pt"), weights_only=False)["step"] == step
    r = run([*args, "--resume"], cache, stop_on=r"resumed from .* at step \d+")
    assert r.stopped and f"at step {step} " in r.stdout, short(r)


def test_ctrl_c_before_any_checkpoint_leaves_nothing(cache, tmp_path):
    out = tmp_path / "run"
    log = os.path.join(str(out) + ".partial", "train.log")
    p = Bg([*TINY_LONG, "--events", "1.0", "--ckpt-every", "0", "--out", str(out)], cache)
    wait_for(lambda: os.path.exists(log) and "plan:" in open(log).read(), p, 300, "the plan line")
    p.proc.send_signal(signal.SIGINT)  # no checkpoint before the end of training
    r = p.result(timeout=60)
    assert r.returncode == 130 and "Traceback" not in r.stderr, short(r)
    msgs = messages(r.stderr)
    assert len(msgs) == 1 and msgs[0].startswith("interrupted"), msgs[-3:]
    assert "run the command again" in msgs[0], msgs
    assert_nothing_on_disk(out)


def _assert_checkpoint_write_refused(rc, err, partial):
    assert rc == 2, err[-3:]
    assert len(err) == 1 and err[0].startswith("error: ") and "ckpt.pt" in err[0], err
    assert re.search(r"free|full|space", err[0]) and "--resume" in err[0], err
    assert os.path.exists(os.path.join(partial, "ckpt.pt")), "the last good checkpoint must be kept"
    assert not [f for f in os.listdir(partial) if f.endswith(".tmp")], "a half .tmp was left"


def test_full_disk_checkpoint_runtime_error_injected(cache, tmp_path, monkeypatch, capsys):
    """torch.save reports a full disk as RuntimeError (inline_container.cc), not OSError."""
    import torch
    import train
    monkeypatch.setenv("XPERT_CACHE", str(cache))
    calls = []
    full_disk = filling_disk(calls, b"PK\3\4" + b"\0" * 4092, lambda f: RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 64"))
    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    rc = train.main(train_args(out, "--steps", "5", "--ckpt-every", "1")[1:])
    assert len(calls) >= 2, "the fault was never injected"
    _assert_checkpoint_write_refused(rc, messages(capsys.readouterr().err), str(out) + ".partial")


def test_full_disk_checkpoint_real_tmpfs(small_disk, cache):
    """A real full disk: the run writes on a small tmpfs, filled up after its first checkpoint."""
    disk = small_disk("8m")
    out = disk / "run"
    partial = str(out) + ".partial"
    args = train_args(out, "--steps", "400", "--ckpt-every", "1")
    p = Bg(args, cache)
    wait_for(lambda: os.path.exists(os.path.join(partial, "ckpt.pt")), p, 300, "a checkpoint")
    fill(disk)
    r = p.result(timeout=120)
    _assert_checkpoint_write_refused(r.returncode, messages(r.stderr), partial)
    assert "Traceback" not in r.stderr, short(r)
    os.remove(disk / "filler")  # room again: the kept checkpoint resumes
    r = run([*args, "--resume"], cache, stop_on=r"train lora: +\d+%.*\b\d+/400")
    assert r.stopped or r.returncode == 0, short(r)


# -----------------------------------------------------------------------------
# 4. refusals that sent the user the wrong way

def test_legacy_pytorch_model_bin_loads(cache, tmp_path):
    import torch
    from fileio.hf import read_safetensors
    model = copy_model(tmp_path / "model")
    st = os.path.join(model, "model.safetensors")
    sd = {k: v.clone() for k, v in read_safetensors(st).items()}
    torch.save(sd, os.path.join(model, "pytorch_model.bin"), _use_new_zipfile_serialization=False)
    os.remove(st)
    gen = ["--prompt", "Once upon a time", "--max-new-tokens", "8", "--temperature", "0"]
    r_legacy = run(["model.py", "--model", model, *gen], cache)
    r_ref = run(["model.py", "--model", MODEL, *gen], cache)
    assert r_legacy.returncode == 0, short(r_legacy)
    assert r_legacy.stdout == r_ref.stdout and r_ref.returncode == 0


def test_moved_run_folder_resumes(killed, cache):
    killed.restore()
    moved = killed.base / "elsewhere" / "run"
    os.makedirs(moved.parent)
    shutil.move(killed.partial, str(moved) + ".partial")
    args = [a if a != str(killed.out) else str(moved) for a in killed.args]
    r = run([*args, "--resume"], cache)
    assert r.returncode == 0, short(r)
    assert os.path.exists(moved / "run.json") and not os.path.exists(str(moved) + ".partial")
    assert json.load(open(moved / "run.json"))["config"]["out"] == str(moved)


def test_empty_out_message(cache, tmp_path):
    r = run(train_args(""), cache, cwd=ROOT, stop_on=COMPUTE)
    msg = assert_one_line_error(r, "--out", "empty")
    assert "--out /" not in msg


def _assert_cache_write_refused(msg, folder):
    assert re.search(r"train\.bin", msg), msg
    assert "cache" in msg.lower() and re.search(r"XPERT_CACHE|room|space|free", msg), msg
    left = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if ".tmp" in f]
    assert not left, f"half-written files left in the cache: {left}"


def test_full_cache_disk_real_tmpfs(small_disk, tmp_path):
    cache = small_disk("256k", "cache")
    out = tmp_path / "run"
    r = run(train_args(out), cache, stop_on=COMPUTE)
    msg = assert_one_line_error(r, "cache")
    _assert_cache_write_refused(msg, cache)
    assert_nothing_on_disk(out)


def test_full_cache_disk_injected(tmp_path):
    """numpy's tofile on a full disk: 'N requested and M written', after M bytes of a .tmp<pid>."""
    import numpy as np
    from corpora import DataError
    from fileio import token_cache

    class FullDisk(np.ndarray):
        def tofile(self, f):
            with open(f, "wb") as fh:
                fh.write(b"\0" * 8192)
            raise OSError(f"{self.nbytes} requested and 8192 written")

    arrays = {s: np.arange(5000, dtype=np.uint16) for s in ("val", "test", "calib")}
    arrays["train"] = np.arange(400_000, dtype=np.uint16).view(FullDisk)
    folder = tmp_path / "cache" / "data" / "x-key"
    with pytest.raises(DataError) as e:
        token_cache.save(str(folder), arrays, {"counts": {}})
    assert len(str(e.value).splitlines()) == 1
    _assert_cache_write_refused(str(e.value), tmp_path / "cache")
    assert not os.path.exists(folder) or os.listdir(folder) == [], os.listdir(folder)


def _assert_no_metrics_file(rc, err, out):
    assert rc == 2, err[-3:]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not os.path.exists(out), "an empty or half-written metrics file was left"
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp" in f]


def test_eval_out_full_disk_injected(legal_run, cache, tmp_path, monkeypatch, capsys):
    import eval as evaluation
    monkeypatch.setenv("XPERT_CACHE", str(cache))

    def full_disk(obj, f, *a, **k):
        f.write("{")  # the first bytes fit, then the disk is full
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", full_disk)
    out = tmp_path / "metrics.json"
    rc = evaluation.main([str(legal_run), "--out", str(out)])
    monkeypatch.undo()
    _assert_no_metrics_file(rc, messages(capsys.readouterr().err), str(out))


def test_eval_out_full_disk_real_tmpfs(small_disk, legal_run, cache):
    disk = small_disk("1m")
    fill(disk)
    out = disk / "metrics.json"
    r = run(["eval.py", str(legal_run), "--out", str(out)], cache)
    _assert_no_metrics_file(r.returncode, messages(r.stderr), str(out))
