"""
Speed of model.py against transformers' LlamaForCausalLM on the default model \
(SmolLM2-135M-Instruct),
CPU float32: first-use GGUF conversion, plain load, forward tokens/s, one full training step, and
one LoRA training step against transformers + peft (when peft is installed).
Not a test: transformers is only the yardstick here (pip install transformers).

Runs alternate between the two models so both see the same machine load. The ratio is given for the
best run (the cost of the work itself: other processes only ever add time) and for the median run.

    python bench_model.py --batch 4 --seq 256 --reps 5
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import model as M
from fileio import gguf_convert as G


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--reps", type=int, default=5,
                   help="timed repetitions of each measurement (interleaved)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    rows = []  # (what, ours runs, transformers runs, unit)
    # first use: GGUF -> Hugging Face folder, into a throwaway folder so the real cache is untouched
    with tempfile.TemporaryDirectory() as tmp:
        conv = timed(lambda: G.convert_gguf(G.default_gguf_file(), os.path.join(tmp, "m")))
    rows.append(("first-use GGUF conversion", [conv], None, "s"))

    path = G.default_model_dir()
    load_ours, load_hf = [], []
    for _ in range(3):  # interleaved, so both see the same page cache and machine load
        load_ours.append(timed(lambda: M.LLaMA.from_pretrained(path)))
        load_hf.append(timed(
            lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)))
    rows.append(("load (from_pretrained)", load_ours, load_hf, "s"))

    ours = M.LLaMA.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, ours.config.vocab_size, (args.batch, args.seq), generator=g)  # (B, T)
    ntok = idx.numel()

    def fwd_ours():
        with torch.no_grad():
            ours(idx)

    def fwd_hf():
        with torch.no_grad():
            hf(idx, use_cache=False)

    def train(m, is_hf):
        # the same work for both: all logits, the same next-token loss, backward, grads cleared
        def step():
            logits = m(idx, use_cache=False).logits if is_hf else m(idx)  # (B, T, vocab)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                   idx[:, 1:].reshape(-1))
            loss.backward()
            m.zero_grad(set_to_none=True)
        return step

    def interleaved(what, a, b, reps, unit):
        """One warm-up each (allocator, kernels), then `reps` timed runs of each, in the order a b,
        b a, a b, ... (whichever runs second after the other can find caches warm or the allocator
        fragmented: alternating cancels that)."""
        a(), b()
        ta, tb = [], []
        for i in range(reps):
            for f, out in (((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))):
                out.append(timed(f))
        rows.append((what, ta, tb, unit))

    for m in (ours, hf):
        m.eval()
    interleaved(f"forward {args.batch}x{args.seq} tokens/s", fwd_ours, fwd_hf, args.reps, "tok/s")
    for m in (ours, hf):
        m.train()
    steps = max(4, args.reps)
    interleaved(f"train step {args.batch}x{args.seq} (fwd+bwd)", train(ours, False),
                train(hf, True), steps, "s")

    # one LoRA training step (r=8, α=16, dropout 0.05 on the seven projections, as train.py's dense
    # phase): ours (xpert.add_lora) vs transformers + peft, when peft is installed (a
    # benchmark-only package)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("peft is not installed (pip install peft): no LoRA-step comparison")
    else:
        import xpert
        del ours, hf  # only the two LoRA models in memory from here
        lo_ours = xpert.add_lora(M.LLaMA.from_pretrained(path), rank=8, alpha=16,
                                 dropout=0.05).train()
        xpert.lora_parameters(lo_ours)
        lo_hf = get_peft_model(
            AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                       target_modules=[p.split(".")[-1] for p in M.PROJECTIONS])).train()
        interleaved(f"LoRA step {args.batch}x{args.seq} (vs peft)", train(lo_ours, False),
                    train(lo_hf, True), steps, "s")

    print(f"\nmodel.py vs transformers {__import__('transformers').__version__}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU float32, interleaved runs: "
          "best (median)")
    print(f"{'':32s} {'ours':>22s} {'transformers':>22s} {'speed ratio':>16s}")
    for what, a, b, unit in rows:
        # tokens/s from seconds per run; best = fastest run
        val = (lambda ts, f: ntok / f(ts)) if unit == "tok/s" else (lambda ts, f: f(ts))
        show = lambda ts: (f"{val(ts, min):8.{0 if unit == 'tok/s' else 2}f} "  # noqa: E731
                           f"({val(ts, statistics.median):.{0 if unit == 'tok/s' else 2}f}) {unit}")
        ratio = ("" if b is None else f"{min(b) / min(a):.2f}x "
                                      f"({statistics.median(b) / statistics.median(a):.2f}x)")
        print(f"{what:32s} {show(a):>22s} {'' if b is None else show(b):>22s} {ratio:>16s}")
    print("speed ratio = transformers' time / ours: > 1 means model.py is faster")


if __name__ == "__main__":
    main()
