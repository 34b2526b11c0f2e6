"""What does the mask cost a LoRA training step? (docs/paper.md §3: masked LoRA vs plain LoRA.)

One training step = forward + backward + AdamW step on the default model (SmolLM2-135M), batch × seq
random tokens, r = 8. Contenders, timed alternately in one process (median of --reps):
  plain      LoRA, mask all ones (what the `lora` baseline and xpert's dense phase run), dropout
             --dropout
  plain-d0   the same with dropout 0 (dropout alone costs a plain LoRA step something)
  masked     masked LoRA after a fold at sparsity --sparsity: W zero off the mask (the state every
             fold and one-shot prune leaves), mask with zeros, the same --dropout setting
Peak memory: each contender again in a fresh process (--memory NAME), peak RSS from
resource.getrusage.

    python bench/step_cost.py --reps 3                 # this checkout's xpert.py
    python bench/step_cost.py --reps 3 --repo /tmp/orig  # another checkout's xpert.py
                                                           (before/after)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.getloadavg()[0]  # the record says whether the machine was quiet
CONTENDERS = ("plain", "plain-d0", "masked")


def build(name, args):
    """The default model with adapters in the state of contender `name`, and its AdamW."""
    import torch
    import xpert
    from model import LLaMA
    drop = 0.0 if name == "plain-d0" else args.dropout
    model = xpert.add_lora(LLaMA.from_pretrained(), rank=args.rank, dropout=drop)
    if name == "masked":
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            # a p-sparse mask; which weights does not matter for cost
            for _, lin in xpert.lora_layers(model):
                lin.mask.copy_(xpert.select_mask(torch.rand(lin.mask.shape, generator=g),
                                                 args.sparsity))
                lin.weight.mul_(lin.mask)  # W ⊙ M = W, as after a fold
    model.train()
    return model, torch.optim.AdamW(xpert.lora_parameters(model), lr=1e-4)


def step(model, opt, idx):
    _, loss = model(idx[:, :-1], targets=idx[:, 1:])  # idx (B, T+1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def tokens(args):
    import torch
    return torch.randint(0, 49152, (args.batch, args.seq + 1),
                         generator=torch.Generator().manual_seed(1))


def status_mb(field):
    """VmRSS (resident now) or VmHWM (its peak since start or the last reset) from
    /proc/self/status, MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def memory(name, args):
    """In a fresh process: peak RSS (MB) of the whole run (getrusage: it includes loading the
    model), and of the training steps alone (VmHWM, reset after the first step via
    /proc/self/clear_refs; getrusage's ru_maxrss cannot be reset once a thread has exited, so it
    keeps the loader's peak)."""
    model, opt = build(name, args)
    idx = tokens(args)
    step(model, opt, idx)  # the first step allocates AdamW's state: measure from the second on
    base = status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS high-water mark (Linux ≥ 4.0)
    except OSError:
        pass
    for _ in range(2):
        step(model, opt, idx)
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"MEM {name} getrusage_peak={whole:.0f} steps_peak={status_mb('VmHWM'):.0f} "
          f"before_steps={base:.0f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", default=HERE, help="the checkout whose xpert.py / model.py to import")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.05, help="train.py's default")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--memory", choices=CONTENDERS,
                   help="(internal) peak memory of one contender, then exit")
    p.add_argument("--no-memory", action="store_true", help="skip the fresh-process memory runs")
    p.add_argument("--json", help="record the numbers here (e.g. results/step-cost.json)")
    args = p.parse_args()
    sys.path.insert(0, os.path.abspath(args.repo))
    import torch
    import xpert
    if args.memory:
        return memory(args.memory, args)

    print(f"xpert from {os.path.abspath(xpert.__file__)}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}×{args.seq}, r={args.rank}, "
          f"dropout {args.dropout:g}, masked at p={args.sparsity:g}")
    models = {n: build(n, args) for n in CONTENDERS}
    idx = tokens(args)
    for n in CONTENDERS:
        step(*models[n], idx)  # warm-up (and AdamW state)
    times = {n: [] for n in CONTENDERS}
    for r in range(args.reps):
        # alternate, so drift hits both alike
        order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
        for n in order:
            t = time.perf_counter()
            step(*models[n], idx)
            times[n].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    for n in CONTENDERS:
        print(f"  {n:9s} median {med[n]:6.2f}s  runs " + " ".join(f"{t:.2f}" for t in times[n]))
    print(f"  masked / plain    = {med['masked'] / med['plain']:.2f}x")
    print(f"  masked / plain-d0 = {med['masked'] / med['plain-d0']:.2f}x")
    del models
    rss = {}
    # a fresh process each: ru_maxrss is a lifetime peak
    for n in () if args.no_memory else CONTENDERS:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory", n] + [
            a for k in ("repo", "batch", "seq", "rank", "dropout", "sparsity")
            for a in (f"--{k}", str(getattr(args, k)))]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        line = [line for line in out.splitlines() if line.startswith("MEM")][0][4:]
        print("  " + line + " MB")
        rss[n] = {k: float(v) for k, v in (x.split("=") for x in line.split()[1:])}
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.repo,
                                capture_output=True, text=True).stdout.strip()
        rec = {"command": "python bench/step_cost.py " + " ".join(sys.argv[1:]), "commit": commit,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "config": vars(args),
               "step_seconds": times, "median_s": med,
               "masked_over_plain": med["masked"] / med["plain"],
               "masked_over_plain_d0": med["masked"] / med["plain-d0"], "peak_rss_mb": rss,
               "load_average_before": LOAD}
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
