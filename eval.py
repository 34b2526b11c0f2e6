"""
Measure a model folder or a train.py run: domain perplexity, general perplexity (WikiText-2),
PubMedQA accuracy, and the sparsity of the saved weights. Every number is printed with its context
(split, sequence length, number of windows), and relative performance follows PAPER.md §7.

    python eval.py out/legal-xpert-s0.4                 # a run (or any Llama folder)
    python eval.py --compare out/legal-lora out/legal-xpert-s0.4 ...
    python eval.py --mask-overlap out/legal-xpert-s0.4 out/health-xpert-s0.4
    python eval.py <model folder> --domain legal --prune wanda --sparsity 0.4   # pruning alone, no training
"""
import argparse
import json
import math
import os
import sys

import torch
from tqdm import tqdm

import data
import xpert
from model import LLaMA, ModelError, Tokenizer


# -----------------------------------------------------------------------------
# the measurements

@torch.no_grad()
def perplexity(model, windows, batch_size=4, desc="ppl", progress=True):
    """exp(mean next-token NLL) over non-overlapping windows (N, T) -> (ppl, number of windows)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, leave=False, disable=not progress):
        x = windows[i:i + batch_size].to(device)  # (b, T)
        logits = model(x[:, :-1]).float()  # (b, T-1, vocab)
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(nll / count), len(windows)


class LogProb:
    """logprob(prompt, continuation): summed log-likelihood of the continuation's tokens given the
    prompt. The prompt's KV cache is kept, so scoring three answers costs one prompt pass."""

    def __init__(self, model, tok, max_len=None):
        self.model, self.tok = model, tok
        self.max_len = max_len or model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        self._prompt, self._cache, self._last = None, None, None

    @torch.no_grad()
    def __call__(self, prompt, continuation):
        cont = self.tok.encode(continuation, bos=False)
        if prompt != self._prompt:
            ids = self.tok.encode(prompt)
            ids = ids[:1] + ids[1:][-(self.max_len - len(cont) - 8):]  # keep BOS, drop the oldest context
            caches = [[None, None] for _ in self.model.model.layers]
            logits = self.model(torch.tensor([ids], device=self.device), caches=caches)
            self._prompt, self._cache, self._len = prompt, caches, len(ids)
            self._last = logits[0, -1].float().log_softmax(-1)  # (vocab,) distribution of the first new token
        caches = [[k, v] for k, v in self._cache]  # a shallow copy: the model never mutates cached tensors
        lp = self._last[cont[0]].item()
        if len(cont) > 1:
            logits = self.model(torch.tensor([cont[:-1]], device=self.device), caches=caches, start=self._len)
            lps = logits[0].float().log_softmax(-1)  # (len-1, vocab)
            lp += lps.gather(1, torch.tensor(cont[1:], device=self.device)[:, None]).sum().item()
        return lp


def evaluate(model, tok, domain, splits=None, data_dir=None, seq_len=256, max_windows=32, pubmedqa_n=None,
             batch_size=4, progress=True, log=print):
    """All metrics that the available data allow. Returns {name: {"value", "split", "seq_len", "windows"}}.
    Missing benchmark files are skipped with a printed reason, never silently."""
    metrics = {}

    def ppl(name, tokens, split):
        w = data.windows(tokens, seq_len, max_windows)
        v, n = perplexity(model, w, batch_size, desc=name, progress=progress)
        metrics[name] = {"value": v, "split": split, "seq_len": seq_len, "windows": n}
        log(f"  {name:<22} ppl {v:9.3f}   ({split}, seq_len {seq_len}, {n} windows)")

    if splits is not None:
        ppl("domain_test_ppl", splits.test, f"{domain} test split")
    bench, reasons = data.benchmarks(data_dir, domain)
    for r in reasons:
        log(f"  skipped: {r}")
    need_chars = (max_windows or 10**6) * (seq_len + 1) * 6  # tokenize only the prefix the windows need
    for name, text in bench.items():
        if isinstance(text, str):
            ids = tok.encode(text[:need_chars], bos=False)
            what = "test minus its calibration tenth" if name == "wikitext2" else "text"
            ppl(f"{name}_ppl", torch.tensor(ids), f"{name} {what} ({'prefix' if len(text) > need_chars else 'all'})")
    if domain == "health" and "pubmedqa_items" in bench:
        items = data.pubmedqa_sample(bench["pubmedqa_items"], pubmedqa_n)
        acc = data.pubmedqa_accuracy(LogProb(model, tok), tqdm(items, desc="pubmedqa", leave=False,
                                                               disable=not progress))
        n_all = len(bench["pubmedqa_items"])
        split = f"PubMedQA official test, {'all' if len(items) == n_all else 'a fixed random'} {len(items)} of {n_all} questions"
        majority = max(sum(it["answer"] == c for it in items) for c in data.CHOICES) / len(items)
        metrics["pubmedqa_acc"] = {"value": acc, "split": split, "questions": len(items), "majority_class": majority}
        log(f"  {'pubmedqa_acc':<22} acc {acc:9.3f}   ({split}, zero-shot; always answering the commonest "
            f"answer scores {majority:.3f})")
    return metrics


# -----------------------------------------------------------------------------
# sparsity of saved weights, straight from the folder (no model code involved)

def folder_sparsity(path):
    """Fraction of zeros of every adapted projection in a saved folder: per block/projection and overall."""
    from model import PROJECTIONS, load_state_dict
    sd = load_state_dict(path)
    per, zeros, total = {}, 0, 0
    for k, v in sd.items():
        if ".layers." in k and any(k.endswith(p + ".weight") for p in PROJECTIONS):
            z = int((v == 0).sum())
            per[k[len("model."):-len(".weight")]] = z / v.numel()
            zeros, total = zeros + z, total + v.numel()
    return {"overall": zeros / max(1, total), "per_matrix": per}


# -----------------------------------------------------------------------------
# --compare: one markdown table, relative performance against the dense lora run (PAPER.md §7)

HIGHER_IS_BETTER = ("acc",)


def relative(metric, value, ref):
    """PAPER.md §7: pruned/dense for accuracies, dense/pruned for perplexities (so both read 'x% of dense')."""
    if ref is None or value is None:
        return None
    return value / ref if metric.endswith(HIGHER_IS_BETTER) else ref / value


def compare(runs):
    loaded = []
    for r in runs:
        f = os.path.join(r, "run.json")
        if not os.path.exists(f):
            raise ModelError(f"{r}: no run.json (is this a train.py output folder?)")
        with open(f) as fh:
            loaded.append((r, json.load(fh)))
    ref = next((j for _, j in loaded if j["config"]["method"] == "lora"), None)
    names = sorted({m for _, j in loaded for m in j["metrics"]})
    head = ["run", "method", "sparsity"] + names + (["rel. (mean)"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, j in loaded:
        row = [os.path.basename(r.rstrip("/")), j["config"]["method"], f"{j['sparsity']['overall']:.3f}"]
        rels = []
        for m in names:
            v = j["metrics"].get(m, {}).get("value")
            rel = relative(m, v, ref["metrics"].get(m, {}).get("value") if ref else None)
            if rel is not None:
                rels.append(rel)
            row.append("–" if v is None else f"{v:.3f}" + (f" ({100 * rel:.1f}%)" if rel is not None else ""))
        if ref:
            row.append(f"{100 * sum(rels) / len(rels):.1f}%" if rels else "–")
        lines.append("| " + " | ".join(row) + " |")
    ctx = {m: next((j["metrics"][m] for _, j in loaded if m in j["metrics"]), {}) for m in names}
    notes = [f"- {m}: {c.get('split', '')}" + (f", seq_len {c['seq_len']}, {c['windows']} windows" if "windows" in c
                                               else f", {c.get('questions', '?')} questions") for m, c in ctx.items()]
    ref_note = "relative = dense-LoRA ppl / ppl, or acc / dense-LoRA acc (PAPER.md §7)" if ref else \
        "no `lora` run given: relative performance needs the dense reference"
    return "\n".join(lines + ["", ref_note] + notes)


# -----------------------------------------------------------------------------
# --mask-overlap: does the mask move with the domain? (PAPER.md §7, the paper's structural-shift analysis)

def mask_overlap(paths, png=None):
    """IoU of the *pruned* positions of every adapted matrix between each pair of runs. Chance level for
    two independent masks at sparsity p is p / (2 - p): printed beside, so 'high' means something."""
    from model import PROJECTIONS, load_state_dict
    masks = []
    for path in paths:
        sd = load_state_dict(path)
        masks.append({k[len("model."):-len(".weight")]: (v == 0) for k, v in sd.items()
                      if ".layers." in k and any(k.endswith(p + ".weight") for p in PROJECTIONS)})
    keys = list(masks[0])
    for path, m in zip(paths[1:], masks[1:]):
        if list(m) != keys or any(m[k].shape != masks[0][k].shape for k in keys):
            raise ModelError(f"{path}: not the same architecture as {paths[0]}")
    sparsity = [sum(int(m[k].sum()) for k in keys) / sum(m[k].numel() for k in keys) for m in masks]
    for path, sp in zip(paths, sparsity):
        if sp == 0:
            raise ModelError(f"{path}: no pruned weights (a dense run has no mask to compare)")
        if abs(sp - sparsity[0]) > 1e-3:  # IoU and its chance level only mean something at one sparsity
            raise ModelError(f"{path}: sparsity {sp:.4f} differs from {paths[0]}'s {sparsity[0]:.4f}")
    names = [os.path.basename(p.rstrip("/")) for p in paths]
    blocks = sorted({int(k.split(".")[1]) for k in keys})
    out = []
    grids = {}
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            a, b = masks[i], masks[j]
            grid = torch.zeros(len(blocks), len(PROJECTIONS))  # (blocks, 7) IoU per matrix
            for k in keys:
                inter = (a[k] & b[k]).sum().item()
                union = (a[k] | b[k]).sum().item()
                grid[int(k.split(".")[1]), PROJECTIONS.index(".".join(k.split(".")[2:]))] = inter / max(1, union)
            p = sum(a[k].sum().item() for k in keys) / sum(a[k].numel() for k in keys)
            grids[f"{names[i]} vs {names[j]}"] = grid
            out.append(f"\n### pruned-position IoU: {names[i]} vs {names[j]}  (sparsity {p:.3f}; chance {p / (2 - p):.3f};"
                       f" mean {grid.mean():.3f})\n")
            out.append("| block | " + " | ".join(q.split(".")[1] for q in PROJECTIONS) + " | mean |")
            out.append("|---" * (len(PROJECTIONS) + 2) + "|")
            for bi in blocks:
                out.append(f"| {bi} | " + " | ".join(f"{v:.3f}" for v in grid[bi].tolist()) + f" | {grid[bi].mean():.3f} |")
            out.append("| mean | " + " | ".join(f"{v:.3f}" for v in grid.mean(0).tolist()) + f" | {grid.mean():.3f} |")
    if len(grids) > 1 or len(blocks) >= 3:  # one line per pair: where in the network the masks agree
        thirds = [blocks[i * len(blocks) // 3:(i + 1) * len(blocks) // 3] for i in range(3)]
        out.append("\n### summary: mean pruned-position IoU per pair, by projection and by depth\n")
        out.append("| pair | all | " + " | ".join(q.split(".")[1] for q in PROJECTIONS)
                   + " | " + " | ".join(f"blocks {t[0]}-{t[-1]}" for t in thirds) + " |")
        out.append("|---" * (len(PROJECTIONS) + 5) + "|")
        for title, grid in grids.items():
            out.append(f"| {title} | {grid.mean():.3f} | " + " | ".join(f"{v:.3f}" for v in grid.mean(0).tolist())
                       + " | " + " | ".join(f"{grid[t].mean():.3f}" for t in thirds) + " |")
    if png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            out.append(f"\n(no heatmap: matplotlib is not installed; `pip install matplotlib` for {png})")
        else:
            fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 0.25 * len(blocks) + 2), squeeze=False)
            for ax, (title, grid) in zip(axes[0], grids.items()):
                im = ax.imshow(grid.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
                ax.set_title(title.replace(" vs ", "\nvs "), fontsize=7)
                ax.set_xticks(range(len(PROJECTIONS)), [q.split(".")[1] for q in PROJECTIONS], rotation=60, fontsize=7)
                ax.set_ylabel("block")
            fig.colorbar(im, ax=axes[0].tolist(), label="IoU of pruned positions")
            fig.savefig(png, dpi=120, bbox_inches="tight")
            out.append(f"\nheatmap: {png}")
    return "\n".join(out)


# -----------------------------------------------------------------------------
# the command line

def main(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a train.py run or any Llama folder; compare runs; mask overlap.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="*", help="a run / model folder (or several with --compare / --mask-overlap)")
    p.add_argument("--compare", action="store_true", help="markdown table of several runs' run.json metrics")
    p.add_argument("--mask-overlap", action="store_true", help="per-matrix IoU of the pruning masks of several runs")
    p.add_argument("--png", help="with --mask-overlap: save a heatmap here (needs matplotlib)")
    p.add_argument("--domain", choices=data.DOMAINS, help="domain of the benchmark sets (default: the run's)")
    p.add_argument("--data-dir", default=None, help="benchmark assets; default ../shared/assets if present")
    p.add_argument("--seq-len", type=int, default=None, help="evaluation window length (default: the run's, else 256)")
    p.add_argument("--windows", type=int, default=None,
                   help="windows per perplexity, 0 = all (default: the run's --eval-windows, else 32)")
    p.add_argument("--pubmedqa-n", type=int, default=None,
                   help="PubMedQA questions, 0 = all 500 (default: the run's --pubmedqa-n, else all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prune", choices=("magnitude", "wanda", "sparsegpt"),
                   help="prune the folder one-shot first (no training): what pruning alone costs, e.g. the base model")
    p.add_argument("--sparsity", type=float, default=0.4, help="with --prune")
    p.add_argument("--calib-samples", type=int, default=16, help="with --prune: windows of the domain's calib split")
    p.add_argument("--out", help="write the metrics as JSON here")
    a = p.parse_args(argv)
    try:
        if not a.paths:
            raise ModelError("give a model folder (or runs with --compare / --mask-overlap)")
        for path in a.paths:
            if not os.path.isdir(path):
                raise ModelError(f"not a folder: {path}")
        if a.compare:
            print(compare(a.paths))
            return 0
        if a.mask_overlap:
            if len(a.paths) < 2:
                raise ModelError("--mask-overlap needs at least two runs to compare")
            print(mask_overlap(a.paths, a.png))
            return 0
        if a.prune and not (0 <= a.sparsity < 1):
            raise ModelError(f"--sparsity must be in [0, 1), got {a.sparsity}")
        if a.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ModelError(f"--dtype must be auto, float32, bfloat16 or float16, got {a.dtype!r}")
        device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
        dtype = getattr(torch, "bfloat16" if a.dtype == "auto" and device.startswith("cuda") else
                        ("float32" if a.dtype == "auto" else a.dtype))
        results = {}
        for path in a.paths:
            run = {}
            if os.path.exists(os.path.join(path, "run.json")):
                with open(os.path.join(path, "run.json")) as f:
                    run = json.load(f)["config"]
            domain = a.domain or run.get("domain")
            seq_len = a.seq_len or run.get("seq_len", 256)  # the run's own settings: numbers comparable to run.json
            windows = a.windows if a.windows is not None else run.get("eval_windows", 32)
            pubmedqa_n = a.pubmedqa_n if a.pubmedqa_n is not None else run.get("pubmedqa_n", 0)
            print(f"{path}: (domain {domain or 'none'}, device {device}/{str(dtype).split('.')[-1]}, "
                  f"seq_len {seq_len}, {windows or 'all'} windows per perplexity)")
            model = LLaMA.from_pretrained(path, device=device, dtype=dtype)
            tok = Tokenizer(path)
            splits = None
            if domain or run.get("data"):
                splits = data.prepare(domain=domain, data_path=None if domain else run.get("data"), tokenizer=tok,
                                      seed=run.get("seed", 0), max_docs=run.get("max_docs"))  # cache keyed by vocabulary
            if a.prune:  # the one-shot baselines of PAPER.md §6 on this folder's weights, calibrated on the domain
                if splits is None:
                    raise ModelError("--prune needs a domain (--domain legal/health) for its calibration text")
                calib = data.calib_windows(splits.calib, a.calib_samples, seq_len, run.get("seed", 0))  # (N, T)
                xpert.prune_oneshot(model, calib, a.prune, a.sparsity)
                pruned_sp = xpert.sparsity_report(model)["overall"]  # measured once: the weights do not change below
                print(f"  pruned one-shot with {a.prune} at {a.sparsity:g} ({len(calib)}×{seq_len} calibration tokens, "
                      f"{domain} calib split): sparsity {pruned_sp:.4f}")
            # a plain folder with no domain still gets the general-ability check (WikiText-2)
            m = evaluate(model, tok, domain or ("general" if splits is None else None), splits,
                         a.data_dir or data.default_data_dir(), seq_len, windows or None, pubmedqa_n or None,
                         a.batch_size)
            sp = pruned_sp if a.prune else folder_sparsity(path)["overall"]
            print(f"  {'sparsity (pruned)' if a.prune else 'sparsity (saved)':<22} {sp:.4f}   "
                  "(zeros / weights of the 7 projections of every block)")
            results[path] = {"metrics": m, "sparsity": sp, **({"pruned": [a.prune, a.sparsity]} if a.prune else {})}
        if a.out:
            with open(a.out, "w") as f:
                json.dump(results, f, indent=2)
        return 0
    except (ModelError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
