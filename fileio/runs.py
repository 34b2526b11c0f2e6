"""Run folders of train.py: option checks, the log, checkpoints that write only what changed, a
lock, and the publish that renames out/<run>.partial to out/<run> only when everything is in it.

Layout while a run is live:
  out/<run>.partial/{train.log, ckpt.pt, event-<k>.pt}  and  out/.<run>.lock
  ckpt.pt       adapters, optimizer, RNG, step, losses (small: written every --ckpt-every steps)
  event-<k>.pt  what prune event k changed: the folded base weights, masks and EMA scores (once
                per event)
After the final save: out/<run>/{config.json, model.safetensors, tokenizer files, run.json,
train.log}."""
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import resource
import shutil
import sys

import torch

from corpora import DataError
from fileio import paths
from fileio.hf import TOKENIZER_FILES, ModelError, publish_dir
from model import PROJECTIONS


class UsageError(Exception):
    """A problem with the command line or the run folder, reported as one line (exit 2)."""


class Log:
    """print() that also appends to the run's train.log."""

    def __init__(self):
        self.file = None

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        if self.file:
            self.file.write(s + "\n")
            self.file.flush()


def peak_memory_mb(device):
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -----------------------------------------------------------------------------
# options: every check before anything touches the disk


class NotGiven(float):
    """A default argparse keeps as it is (a typed value becomes a plain float): check_options tells
    an explicit --sparsity 0.4 from the default 0.4."""


def check_options(args, domains):
    if (args.domain is None) == (args.data is None):
        raise UsageError("give exactly one of --domain {legal,health} or --data PATH")
    if args.domain is not None and args.domain not in domains:
        raise UsageError(f"unknown domain {args.domain!r} (choose from: {', '.join(domains)})")
    # --sparsity, --nm's N < M, --group, --delta, --ema, --pbs, --pbs-lambda: xpert.PruneConfig
    # checks them, once (train.resolve builds it right after this)
    if args.nm is not None:
        try:
            n, m = (int(v) for v in args.nm.split(":"))
        except ValueError:
            raise UsageError(f"--nm must look like N:M (e.g. 2:4), got {args.nm!r}")
        if not isinstance(args.sparsity, NotGiven) and args.sparsity != n / m:  # typed, dropped
            raise UsageError(f"--nm {n}:{m} prunes {n / m:g} of every weight group, not --sparsity "
                             f"{args.sparsity:g}: give one of the two")
        args.nm, args.sparsity = (n, m), n / m
    args.sparsity = float(args.sparsity)
    try:
        args.events = sorted(float(f) for f in str(args.events).split(","))
    except ValueError:
        raise UsageError(f"--events must be comma-separated fractions, got {args.events!r}")
    if not args.events or any(not 0 < f <= 1 for f in args.events) or args.events[-1] != 1.0:
        raise UsageError("--events fractions must be in (0, 1] and end with the final event 1.0")
    for name in ("steps", "batch_size", "seq_len", "rank", "calib_samples"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("eval_windows", "pubmedqa_n", "ckpt_every"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 0")
    if args.seq_len < 2:  # a window predicts tokens 2..T from those before it: 1 predicts nothing
        raise UsageError(f"--seq-len must be at least 2, got {args.seq_len}")
    if not 0 <= args.seed < 2**64:  # what both numpy's and torch's generators accept
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    checks = [("dropout", 0 <= args.dropout < 1, "in [0, 1)"),
              ("warmup", 0 <= args.warmup < 1, "in [0, 1)"),
              ("lr", 0 < args.lr < math.inf, "positive"),
              ("alpha", 0 < args.alpha < math.inf, "positive"),
              ("max_docs", args.max_docs is None or args.max_docs >= 4,
               "at least 4 (one document per split)"),
              ("max_chars", args.max_chars is None or args.max_chars >= 1, "at least 1")]
    for name, ok, what in checks:  # comparisons with nan are False: a nan option fails here too
        if not ok:
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, got "
                             f"{getattr(args, name)}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"--data-dir {args.data_dir}: no such folder (the benchmark assets)")
    check_assets_env(UsageError)
    try:
        args.device, args.dtype = paths.device_dtype(args.device, args.dtype)
    except ValueError as e:
        raise UsageError(f"--device/--dtype: {e}")
    args.data_dir = args.data_dir or paths.assets_dir()
    if args.data is not None:
        # run.json must point at it from anywhere (eval.py reads it)
        args.data = os.path.abspath(args.data)
    if args.out is None:
        tag = args.domain or os.path.splitext(os.path.basename(args.data.rstrip("/")))[0]
        sp = f"-nm{args.nm[0]}{args.nm[1]}" if args.nm else ("" if args.method == "lora"
                                                             else f"-s{args.sparsity:g}")
        args.out = os.path.join("out", f"{tag}-{args.method}{sp}")
    if not args.out.strip():
        raise UsageError("--out is empty: give the run's folder, e.g. --out out/my-run")
    args.out = os.path.normpath(args.out)  # "run/." must not give a "run/..partial" work folder
    if os.path.abspath(args.out) == "/":
        raise UsageError("--out / is not a run folder")
    check_out_apart(args.out, args.model)
    return args


def check_assets_env(error):
    """$XPERT_ASSETS naming no folder is a missing --data-dir: an error, not "skipped" lines."""
    env = os.environ.get("XPERT_ASSETS")
    if env and not os.path.isdir(env):
        raise error(f"XPERT_ASSETS={env}: no such folder (the benchmark assets); point it at "
                    "one or unset it")


def _inside(a, b):
    """Whether path a is b or lies inside it (real paths: links and '..' resolved)."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def check_out_apart(out, model):
    """--out is replaced as a whole when the run is published: it may not be (or hold) the folder
    this command runs in, nor be, hold or lie inside the model folder the run reads."""
    if _inside(os.getcwd(), out):
        raise UsageError(f"--out {out} is the folder this command runs in (or holds it): "
                         "publishing the run would replace it; give a new folder, e.g. "
                         "--out out/run")
    if model is None:  # the default model, converted into the cache (fileio/gguf_convert.py)
        from fileio.gguf_convert import DEFAULT_MODEL
        model = paths.cache_dir(DEFAULT_MODEL)
    for o in (out, out + ".partial"):
        inside, holds = _inside(o, model), _inside(model, o)
        if inside or holds:
            how = "is" if inside and holds else "lies inside" if inside else "holds"
            raise UsageError(f"--out {o} {how} the --model folder {model}: the run would write "
                             "over the model it reads; give another --out")


def check_eval_options(args):
    """eval.py's command line, checked before any model loads."""
    if not args.paths:
        raise ModelError("give a model folder (or runs with --compare / --mask-overlap)")
    for path in args.paths:
        if not os.path.isdir(path):
            raise ModelError(f"not a folder: {path}")
    if args.mask_overlap and len(args.paths) < 2:
        raise ModelError("--mask-overlap needs at least two runs to compare")
    if args.compare or args.mask_overlap:
        return  # the options below do not apply to reading runs
    if args.prune and not (0 <= args.sparsity < 1):
        raise ModelError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    lows = {"seq_len": 2, "windows": 0, "pubmedqa_n": 0, "batch_size": 1, "calib_samples": 0}
    for name, low in lows.items():
        v = getattr(args, name)
        if v is not None and v < low:  # None: the run's own value
            raise ModelError(f"--{name.replace('_', '-')} must be at least {low}, got {v}")
    if args.prune in ("wanda", "sparsegpt") and args.calib_samples < 1:
        raise ModelError(f"--prune {args.prune} scores weights on calibration activations: "
                         "--calib-samples must be at least 1 (--prune magnitude needs none)")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise ModelError(f"--data-dir {args.data_dir}: no such folder")
    if args.data_dir is None:
        check_assets_env(ModelError)
    if args.out:
        check_eval_out(args.out, args.paths)


EVAL_FILES = ("run.json", "config.json", "model.safetensors", "train.log", *TOKENIZER_FILES)


def check_eval_out(out, folders):
    """eval.py --out: never a file of a folder being evaluated, never someone else's file, and
    writable now (not after the whole evaluation)."""
    name = os.path.basename(out)
    for folder in folders:
        if _inside(out, folder) and (os.path.exists(out) or name in EVAL_FILES):
            raise ModelError(f"--out {out} would overwrite {name} of {folder}, which is being "
                             "evaluated; write the metrics elsewhere, e.g. --out metrics.json")
    if os.path.isdir(out):
        raise ModelError(f"--out {out} is a folder; give a file name, e.g. "
                         f"{os.path.join(out, 'metrics.json')}")
    if os.path.exists(out) and os.path.getsize(out) and not _is_metrics_file(out):
        raise ModelError(f"--out {out} exists and is not an eval.py metrics file; choose another "
                         "name or move it")
    existed = os.path.exists(out)
    open(out, "a").close()
    if not existed:
        os.remove(out)


def _is_metrics_file(path):
    """eval.py's own --out, {folder: {"metrics": ..., ...}}: replacing one loses nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        return isinstance(j, dict) and all(isinstance(v, dict) and "metrics" in v
                                           for v in j.values())
    except (OSError, ValueError):
        return False


def write_json(path, obj):
    """json.dump via a temporary file: a full disk leaves the old file (or none), not half."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"{e.strerror or e}; nothing was written (a file that was "
                                   "there is kept)", path)
        raise


def eta_minutes(args, fwd_tok_s, n_events, n_calib, method):
    """A rough ETA of training from the measured forward speed: a step costs ~3 forwards of its
    tokens (~6 once masked LoRA forms its m×n adapter product), a prune event ~3 forwards of the
    calibration set (capture, scores, PBS). The final evaluation costs what the base's did (the
    caller adds it)."""
    tok = args.batch_size * args.seq_len
    frac_masked = 1.0 if method.prune_first else (1 - min(args.events) if method.events else 0.0)
    train = args.steps * tok * (3 + 3 * frac_masked)
    events = n_events * 3 * n_calib * args.seq_len + (2 * n_calib * args.seq_len
                                                      if method.prune_after else 0)
    return (train + events) / fwd_tok_s / 60


def check_fits(model, tok, args):
    """What would only fail after training (or silently mislead): checked before the first step."""
    if tok.vocab_size > model.config.vocab_size:
        raise ModelError(f"{model.source_dir}: the tokenizer has {tok.vocab_size} tokens, the "
                         f"embedding only {model.config.vocab_size}")
    if args.nm and any(blk.get_submodule(p).weight.shape[1] % args.nm[1]
                       for blk in model.model.layers for p in PROJECTIONS):
        dims = sorted({blk.get_submodule(p).weight.shape[1] for blk in model.model.layers
                       for p in PROJECTIONS})
        raise UsageError(f"--nm {args.nm[0]}:{args.nm[1]}: every adapted matrix's input size must "
                         f"be a multiple of {args.nm[1]}; this model has {dims}")


def diverged(loss, step, work, dtype):
    """The one-line error for a non-finite training loss (the last good checkpoint is kept)."""
    kept = os.path.join(work, "ckpt.pt")
    where = f"the last good checkpoint is kept in {kept} (--resume accepts a lower --lr)" \
        if os.path.exists(kept) else "no checkpoint was written yet"
    hint = ("fp16 overflows easily: try --dtype bfloat16 or float32" if dtype == torch.float16
            else "try a lower --lr")
    return DataError(f"loss became {loss} at step {step}; stopped, {where}; {hint}")


def warn_context(model, seq_len):
    if seq_len > model.config.max_position_embeddings:
        print(f"warning: --seq-len {seq_len} is beyond the model's context "
              f"({model.config.max_position_embeddings} positions): its numbers mean little "
              "there", file=sys.stderr)


# -----------------------------------------------------------------------------
# checkpoints

def rng_state():
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _save(obj, path):
    try:
        torch.save(obj, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic: a kill mid-write leaves the previous file intact
    except BaseException as e:
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        if isinstance(e, (OSError, RuntimeError)):  # torch.save: a full disk is a RuntimeError
            raise write_error(path, e) from e
        raise


def write_error(path, e):
    """A failed checkpoint write as one OSError line: the room left, what is kept, what to do."""
    work = os.path.dirname(path)
    try:
        free = f"{shutil.disk_usage(work).free / 2**20:.1f} MB free on its disk"
    except OSError:
        free = "free space unknown"
    reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write failed"
    kept = "the previous checkpoint is kept: make room, then continue with --resume" \
        if os.path.exists(os.path.join(work, "ckpt.pt")) else \
        "no checkpoint was kept: make room, then run again"
    return OSError(getattr(e, "errno", None) or errno.EIO, f"{reason} ({free}); {kept}", path)


MODEL_FILES = re.compile(r"config\.json|.+\.safetensors(\.index\.json)?|"
                         r"pytorch_model.*\.bin(\.index\.json)?|"
                         r"tokenizer(\.json|\.model|_config\.json)")
_hashes = {}  # (file, size, mtime) -> sha256: each file hashed once per process, not per checkpoint


def model_files(folder):
    """{file name: sha256} of the files a model folder's weights, config and tokenizer come from
    (None: no folder). Recorded in the checkpoint like the corpus fingerprint: a resume on edited
    weights would mix two models (the old run's folded projections, the new embeddings)."""
    if folder is None or not os.path.isdir(folder):
        return None
    out = {}
    for name in sorted(os.listdir(folder)):
        f = os.path.join(folder, name)
        if not MODEL_FILES.fullmatch(name) or not os.path.isfile(f):
            continue
        st = os.stat(f)
        key = (os.path.realpath(f), st.st_size, st.st_mtime_ns)
        if key not in _hashes:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            _hashes[key] = h.hexdigest()
        out[name] = _hashes[key]
    return out


def save_checkpoint(work, model, opt, ema_state, extra, rng=None):
    """ckpt.pt: adapters + optimizer + RNG + extra (step, events_done, ...). The base weights, masks
    and EMA change only at prune events, so they go to event-<k>.pt once per event, not into every
    checkpoint."""
    k = extra["events_done"]
    event_file = os.path.join(work, f"event-{k}.pt")
    if k and not os.path.exists(event_file):
        sd = model.state_dict()
        _save({"events_done": k, "state": ema_state,
               "tensors": {n: v for n, v in sd.items() if n.endswith(".mask") or
                           (n.endswith(".weight") and n.replace(".weight", ".mask") in sd)}},
              event_file)
    cpu_rng, cuda_rng = rng or rng_state()
    _save({"model": {n: v for n, v in model.state_dict().items() if "lora_" in n},
           "opt": opt.state_dict(), "rng": cpu_rng, "cuda_rng": cuda_rng,
           "model_files": model_files(getattr(model, "source_dir", None)), **extra},
          os.path.join(work, "ckpt.pt"))
    for f in os.listdir(work):  # older event files: the checkpoint now points at event k
        if f.startswith("event-") and f != f"event-{k}.pt":
            os.remove(os.path.join(work, f))


def load_checkpoint(work, model, device, args, corpus, log):
    """The checkpoint and its event file loaded into model -> the checkpoint dict (with 'state'). A
    resumed run must be the run that was interrupted, or its result means nothing: same options (the
    learning rate may change, e.g. lower after a NaN) and the same corpus."""
    path = os.path.join(work, "ckpt.pt")
    try:
        ck = torch.load(path, map_location=device, weights_only=False)
        ev = {"state": None, "tensors": {}}
        if ck["events_done"]:
            ev = torch.load(os.path.join(work, f"event-{ck['events_done']}.pt"),
                            map_location=device, weights_only=False)
    except Exception as e:  # truncated, or not ours
        raise UsageError(f"--resume: cannot read the checkpoint in {work} ({type(e).__name__}); "
                         "start again with --overwrite")
    # where the run folder lives is no part of the computation: a moved folder resumes
    free = ("resume", "overwrite", "ckpt_every", "lr", "out")
    changed = sorted(k for k, v in ck["args"].items() if k not in free and args.get(k) != v)
    if changed:
        raise UsageError("--resume with different options than the interrupted run: "
                         f"{', '.join(changed)}")
    if ck["corpus"] != corpus:
        raise UsageError("--resume: the corpus changed since the interrupted run (its splits would "
                         "differ)")
    check_model_files(ck.get("model_files"), getattr(model, "source_dir", None))
    res = model.load_state_dict({**ck["model"], **ev["tensors"]}, strict=False)
    bad = [k for k in res.missing_keys if "lora_" in k] + list(res.unexpected_keys)
    if bad:
        raise UsageError(f"--resume: {path} does not match this model (e.g. {bad[0]})")
    torch.set_rng_state(ck["rng"])
    if ck["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"])
    # an event file newer than the checkpoint is from the killed attempt: the resumed run redoes
    # that event (perhaps at another --lr), and save_checkpoint must not take the stale file for it
    for f in os.listdir(work):
        if f.startswith("event-") and f != f"event-{ck['events_done']}.pt":
            os.remove(os.path.join(work, f))
    log(f"resumed from {path} at step {ck['step']} ({ck['events_done']} prune events done)")
    if ck["args"]["lr"] != args["lr"]:
        log(f"resume: learning rate changed from {ck['args']['lr']:g} to {args['lr']:g} (allowed: "
            "the rest must match)")
    return dict(ck, state=ev["state"])


def check_model_files(recorded, folder):
    """Refuse a resume whose model folder's files are not those the interrupted run started from."""
    if recorded is None:  # a checkpoint from before the fingerprint: nothing to compare with
        return
    now = model_files(folder) or {}
    diff = sorted(n for n in set(recorded) | set(now) if recorded.get(n) != now.get(n))
    if diff:
        how = {n: "removed" if n not in now else "added" if n not in recorded else "changed"
               for n in diff}
        what = ", ".join(f"{n} {how[n]}" for n in diff[:3])
        raise UsageError(f"--resume: the model files in {folder} are not those the interrupted run "
                         f"started from ({what}); put the original files back, or start again with "
                         "--overwrite")


def interrupted(out):
    """The one line train.py prints on Ctrl-C: what was kept and how to continue."""
    ck = os.path.join(out + ".partial", "ckpt.pt") if out else None
    if not ck or not os.path.exists(ck):
        return "interrupted before the first checkpoint: nothing was kept; run the command again"
    try:
        step = torch.load(ck, map_location="cpu", weights_only=False)["step"]
    except Exception:
        step = "?"
    return (f"interrupted at step {step} (the last checkpoint, kept in {out}.partial); "
            "continue with --resume")


# -----------------------------------------------------------------------------
# the run folder: one live run per --out (a lock), published only when complete

def resumable(out):
    """Whether --resume can continue the run at out: its out.partial holds a checkpoint or the
    finished result."""
    return any(os.path.exists(os.path.join(out + ".partial", f)) for f in ("ckpt.pt", "run.json"))


# what train.py writes into a run folder (and its .partial): --overwrite may delete these alone
RUN_FILES = {"config.json", "model.safetensors", "run.json", "run.json.tmp", "train.log", "ckpt.pt",
             "ckpt.pt.tmp", "expert", *TOKENIZER_FILES}
RUN_PATTERN = re.compile(r"event-\d+\.pt(\.tmp)?|\.(tmp|old)-.+")


def not_ours(path, run):
    """None if path is what train.py made (run=True: a published run with its run.json; False: a
    .partial), else what is there instead, in words."""
    if os.path.islink(path):
        return "is a symbolic link"
    if not os.path.isdir(path):
        return "is a file"
    names = os.listdir(path)
    other = sorted(n for n in names if n not in RUN_FILES and not RUN_PATTERN.fullmatch(n))
    if other:
        return (f"holds {len(other)} file(s) train.py did not write ({', '.join(other[:3])}"
                f"{', ...' if len(other) > 3 else ''})")
    if run:
        try:
            with open(os.path.join(path, "run.json"), encoding="utf-8") as f:
                j = json.load(f)
            assert isinstance(j, dict) and isinstance(j.get("config"), dict)
        except (OSError, ValueError, AssertionError):
            return "has no train.py run.json"
    return None


class RunFolder:
    """with RunFolder(out, resume, overwrite) as rf: ... work in rf.work; rf.publish() at the end.
    Leaving with an error deletes a folder this run created unless it holds a checkpoint worth
    resuming."""

    def __init__(self, out, resume=False, overwrite=False):
        self.out, self.work, self.resume, self.overwrite = out, out + ".partial", resume, overwrite
        self.lock_file = os.path.join(os.path.dirname(os.path.abspath(out)),
                                      f".{os.path.basename(out)}.lock")
        self.created, self.made_dirs, self.lock = False, [], None

    def __enter__(self):
        parent = os.path.dirname(os.path.abspath(self.out))
        d = parent
        # the parents we create: removed again if we leave nothing in them
        while not os.path.exists(d):
            self.made_dirs.append(d)
            d = os.path.dirname(d)
        try:
            os.makedirs(parent, exist_ok=True)
            self._lock()
            self._check()
            if not self.resume:
                shutil.rmtree(self.work, ignore_errors=True)
            os.makedirs(self.work, exist_ok=True)
        except BaseException as e:
            self._unlock()
            if isinstance(e, OSError):
                raise UsageError(f"--out {self.out}: cannot write there ({e.strerror or e})")
            raise
        self.created = not self.resume
        return self

    def _lock(self):
        """flock on out/.<run>.lock; after locking, the file must still be the one on disk (a run
        that finished in between removed it), else try again."""
        while True:
            self.lock = open(self.lock_file, "a")
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.lock.close()
                self.lock = None
                raise UsageError(f"another run is writing {self.out} right now (lock "
                                 f"{self.lock_file}); wait for it or choose another --out")
            try:
                if os.fstat(self.lock.fileno()).st_ino == os.stat(self.lock_file).st_ino:
                    return
            except FileNotFoundError:
                pass
            self.lock.close()

    def _check(self):
        # --overwrite replaces only what train.py made: a published run, a .partial of its files
        for path, run in ((self.out, True), (self.work, False)):
            why = not_ours(path, run) if os.path.lexists(path) and (run or self.overwrite) else None
            if why:
                raise UsageError(f"{path} {why}: it is not a train.py run, and --overwrite "
                                 "replaces only one; choose another --out (nothing was changed)")
        if os.path.lexists(self.out) and not self.overwrite:
            raise UsageError(f"output folder {self.out} exists; pass --overwrite to replace it")
        if self.resume and not resumable(self.out):
            raise UsageError(f"--resume: no checkpoint at {os.path.join(self.work, 'ckpt.pt')}")
        if not self.resume and os.path.exists(self.work) and not self.overwrite:
            raise UsageError(f"an interrupted run is in {self.work}; pass --resume to continue it "
                             "or --overwrite to restart")

    @property
    def finished(self):
        """A .partial that already holds the whole result (killed between its last write and the
        publish)."""
        return all(os.path.exists(os.path.join(self.work, f))
                   for f in ("run.json", "config.json", "model.safetensors"))

    def publish(self):
        """Rename the finished work folder into place first, then drop what only a resume needed."""
        for f in os.listdir(self.work):
            # a save interrupted on an earlier try
            if f.startswith(".tmp-") or f.startswith(".old-"):
                shutil.rmtree(os.path.join(self.work, f), ignore_errors=True)
        # from here the folder is a finished expert: never delete it on an error
        self.created = False
        why = not_ours(self.out, True) if os.path.lexists(self.out) else None
        if why:  # files the user put at --out while the run trained are not replaced either
            raise UsageError(f"{self.out} {why}: the finished run is kept in {self.work}; move "
                             "those files, then publish it with --resume")
        publish_dir(self.work, self.out)
        for f in os.listdir(self.out):
            if f == "ckpt.pt" or f.startswith("event-") or f.endswith(".tmp"):
                os.remove(os.path.join(self.out, f))

    def finish(self, model, result, log, summary):
        """Write the expert (a Hugging Face folder) and run.json into the work folder, log the
        summary line, then publish. run.json is renamed into place last: its presence marks the run
        finished (`finished`)."""
        # atomic inside; moved up beside the log
        model.save_pretrained(os.path.join(self.work, "expert"))
        for name in os.listdir(os.path.join(self.work, "expert")):
            os.replace(os.path.join(self.work, "expert", name), os.path.join(self.work, name))
        os.rmdir(os.path.join(self.work, "expert"))
        with open(os.path.join(self.work, "run.json.tmp"), "w") as f:
            json.dump(result, f, indent=2)
        log(summary)
        if log.file:
            log.file.close()
        os.replace(os.path.join(self.work, "run.json.tmp"), os.path.join(self.work, "run.json"))
        self.publish()  # --overwrite: the old folder is replaced only now, atomically

    def _unlock(self):
        if getattr(self, "lock", None) is not None:
            try:
                # before unlocking: a waiting run then sees a fresh file (see _lock)
                os.remove(self.lock_file)
            except OSError:
                pass
            self.lock.close()
            self.lock = None
        if not os.path.exists(self.work) and not os.path.exists(self.out):
            for d in self.made_dirs:  # deepest first; rmdir refuses a folder that is not empty
                try:
                    os.rmdir(d)
                except OSError:
                    break

    def __exit__(self, exc_type, exc, tb):
        if (exc_type is not None and self.created
                and not os.path.exists(os.path.join(self.work, "ckpt.pt"))):
            # nothing worth keeping: leave nothing behind
            shutil.rmtree(self.work, ignore_errors=True)
        self._unlock()
        return False
