"""
What one prune event costs, and how well each pruning criterion keeps a layer's output \
(docs/paper.md §3-6),
on the default model (SmolLM2-135M-Instruct) and real domain text. Not a test: a measurement.

Part 1 — one prune event (xpert.prune_event, ForeSight + PBS) on the model with fresh LoRA adapters:
  its time split into capture / scoring / PBS / fold, and its peak memory (process RSS sampled every
  5 ms during the event, minus the RSS before it).
Part 2 — layer reconstruction error, one-shot on the base weights (no LoRA, no EMA): for a few
  blocks and every projection, the relative output error ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖² of magnitude, Wanda,
  ForeSight (groups out / in / layer), ForeSight-out + PBS output (r = 8, random A: the fold of a
  fresh adapter) and SparseGPT. Masks (and SparseGPT's / PBS's updates) come from the calibration
  windows; the error is measured on *held-out* windows of the test split, so a criterion that
  overfits calibration shows.
  Beside it, the consumer-weighted error Σ_j e_j ‖ΔW_j Xᵀ‖² / Σ_j e_j ‖W_j Xᵀ‖² — the quantity
  ForeSight's score approximates (docs/paper.md §4.1): how much of the change the *next* layer
  actually reads.

    python bench/prune_event.py                # legal text, 16×256 calibration, blocks 2,14,27
    python bench/prune_event.py --domain health --blocks 0,29 --sparsities 0.5 --json out.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import argparse
import json
import os
import threading
import time

import torch

import data
import xpert
from bench.timing import phase_timer
from model import LLaMA, PROJECTIONS, Tokenizer


class PeakRSS:
    """Samples this process's resident set size in a thread: peak (and base) in MB over a
    with-block. Torch's CPU allocator is invisible to tracemalloc, so RSS is what the event really
    costs the machine."""

    def __init__(self, every=0.005):
        self.every, self.peak, self.base, self._stop = every, 0.0, 0.0, threading.Event()

    @staticmethod
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            time.sleep(self.every)

    def __enter__(self):
        self.base = self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())
        return False


def block_inputs(model, ids, b, batch_size=8):
    """Hidden states entering block b of the dense model, and the rotary tables. ids (N, T)."""
    xs = []
    with torch.no_grad():
        for chunk in ids.split(batch_size):
            x, cos, sin = model.embed(chunk)  # (n, T, d)
            for blk in model.model.layers[:b]:
                x = blk(x, cos, sin)
            xs.append(x)
    return xs, cos, sin


def block_stats(block, xs, cos, sin):
    """InputStats (‖X_c‖² and H = XᵀX) of the seven projections of one block on the given inputs."""
    with torch.no_grad(), xpert.Capture(block, gram=True) as cap:
        for x in xs:
            block(x, cos, sin)
    return cap.stats


def rel_err(W, W_hat, H, e=None):
    """‖(W − Ŵ)Xᵀ‖²_F / ‖WXᵀ‖²_F via H = XᵀX (tr(ΔW H ΔWᵀ)); with e (m,), each output row j weighted
    by e_j — the consumer-weighted error of docs/paper.md §4.1."""
    D = W - W_hat
    num = ((D @ H) * D).sum(1)  # (m,) = ‖ΔW_j Xᵀ‖²
    den = ((W @ H) * W).sum(1)  # (m,) = ‖W_j Xᵀ‖²
    if e is not None:
        num, den = num * e, den * e
    return (num.sum() / den.sum()).item()


def criteria(W, st, e, sparsity, rank, seed):
    """{name: Ŵ} — the pruned weight of every criterion, from calibration statistics `st`."""
    out = {}
    sel = lambda score, group="out": W * xpert.select_mask(score, sparsity, group)
    out["magnitude"] = sel(W.abs())
    out["wanda"] = sel(W.abs() * st.energy.sqrt()[None, :])  # |W|·‖X_c‖ per output row
    fs = xpert.foresight_scores(W, st.energy, e)  # paper Eq. 2
    for g in ("out", "in", "layer"):
        out[f"foresight-{g}"] = sel(fs, g)
    keep = xpert.select_mask(fs, sparsity, "out")
    A = torch.empty(rank, W.shape[1])
    # LoRA's A init
    torch.nn.init.kaiming_uniform_(A, a=5 ** 0.5, generator=torch.Generator().manual_seed(seed))
    s = 2.0  # α/r = 16/8, the default adapter scale
    dB = xpert.pbs_output(W * ~keep, A, keep, st.gram, s)  # §5.1, first event: D = R = W ⊙ (1 − M)
    out[f"foresight-out+pbs(r={rank})"] = (W + s * dB @ A) * keep
    out["sparsegpt"] = xpert.sparsegpt_prune(W, st.gram, sparsity)[0]
    return out


def probe_parser(doc):
    """The options of both layer probes (this script and bench/foresight_probe.py), in one place."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="a Hugging Face Llama folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--domain", default="legal", choices=list(data.DOMAINS))
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--heldout", type=int, default=8,
                   help="test-split windows the error is measured on")
    p.add_argument("--blocks", default="2,14,27", help="blocks for the reconstruction errors")
    p.add_argument("--sparsities", default="0.4,0.5")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--seed", type=int, default=0)
    return p


def probe_inputs(a):
    """The frozen base model, calibration windows and held-out test windows (other documents), and
    the record's header saying what they are."""
    torch.manual_seed(a.seed)
    model = LLaMA.from_pretrained(a.model)
    model.requires_grad_(False)
    tok = Tokenizer(model.source_dir)
    splits = data.prepare(domain=a.domain, tokenizer=tok, options=data.SplitOptions(seed=a.seed))
    calib = data.calib_windows(splits.calib, a.calib_samples, a.seq_len, a.seed)  # (N, T)
    held = data.windows(splits.test, a.seq_len, a.heldout)  # (W, T), disjoint documents
    res = {"model": model.source_dir, "domain": a.domain, "torch_threads": torch.get_num_threads(),
           "calibration": f"{len(calib)}×{a.seq_len} tokens of the {a.domain} calib split",
           "heldout": f"{len(held)}×{a.seq_len} tokens of the {a.domain} test split"}
    return model, calib, held, res


def main():
    p = probe_parser(__doc__)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--skip-event", action="store_true", help="only part 2")
    a = p.parse_args()
    model, calib, held, res = probe_inputs(a)
    cfg = model.config
    print(f"{os.path.basename(model.source_dir)}: {cfg.num_hidden_layers} blocks, "
          f"d={cfg.hidden_size}; calibration {res['calibration']}; error on {res['heldout']}; "
          f"{torch.get_num_threads()} threads")

    if not a.skip_event:
        sp = float(a.sparsities.split(",")[0])
        xpert.add_lora(model, rank=a.rank)
        with PeakRSS() as mem:
            with phase_timer() as t:  # timed from outside: xpert.py carries no timing code
                xpert.prune_event(model, calib, xpert.PruneConfig(sp))
        res["event"] = {"sparsity": sp, "pbs": "output", "rank": a.rank, "timings_s": t,
                        "rss_before_mb": mem.base, "rss_peak_mb": mem.peak,
                        "rss_increase_mb": mem.peak - mem.base}
        print(f"\none prune event (ForeSight group out + PBS output, r={a.rank}, p={sp:g}, "
              f"{len(calib)}×{a.seq_len} calibration): "
              + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
        print(f"  peak RSS during the event {mem.peak:.0f} MB = {mem.base:.0f} MB before + "
              f"{mem.peak - mem.base:.0f} MB")
        model = LLaMA.from_pretrained(a.model)  # part 2 is on the untouched base weights
        model.requires_grad_(False)

    res["errors"] = {}
    layers = model.model.layers
    for b in (int(x) for x in a.blocks.split(",")):
        xc, cos, sin = block_inputs(model, calib, b)
        xh, _, _ = block_inputs(model, held, b)
        st_c, st_h = block_stats(layers[b], xc, cos, sin), block_stats(layers[b], xh, cos, sin)
        nxt = layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)
        e_all = xpert.consumer_energy(layers[b], nxt, cfg.num_attention_heads,
                                      cfg.num_key_value_heads, cfg.head_dim)
        for sp in (float(x) for x in a.sparsities.split(",")):
            for proj in PROJECTIONS:
                W = layers[b].get_submodule(proj).weight.float()  # (m, n)
                cands = criteria(W, st_c[proj], e_all[proj], sp, a.rank, a.seed)
                key = f"block {b} {proj.split('.')[-1]} p={sp:g}"
                res["errors"][key] = {
                    name: {"layer": rel_err(W, Wh, st_h[proj].gram),
                           "consumer": rel_err(W, Wh, st_h[proj].gram, e_all[proj])}
                    for name, Wh in cands.items()}
                print(f"  {key}: " + ", ".join(f"{n} {v['layer']:.4f}"
                                               for n, v in res["errors"][key].items()), flush=True)

    # summary: geometric mean over the measured layers of each criterion's error, per sparsity
    names = list(next(iter(res["errors"].values())))
    lines = ["| sparsity | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    summary = {}
    for sp in (float(x) for x in a.sparsities.split(",")):
        for kind in ("layer", "consumer"):
            rows = [v for k, v in res["errors"].items() if k.endswith(f"p={sp:g}")]
            gm = {n: torch.tensor([r[n][kind] for r in rows]).log().mean().exp().item()
                  for n in names}
            summary[f"p={sp:g} {kind}"] = gm
            lines.append(f"| {sp:g} ({kind}) | " + " | ".join(f"{gm[n]:.4f}" for n in names) + " |")
    res["summary_geomean"] = summary
    print(f"\nrelative output error on held-out tokens, geometric mean over blocks {a.blocks} × 7 "
          "projections (layer = ‖ΔW Xᵀ‖²/‖W Xᵀ‖²; consumer = the same weighted by the consumer "
          "energy e_j):")
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
