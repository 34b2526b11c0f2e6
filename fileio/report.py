"""Reports over finished runs, for eval.py's --compare and --mask-overlap: one markdown table of
several runs relative to the dense LoRA run (docs/paper.md §7), and the per-layer overlap of their
pruning masks."""
import json
import os

import torch

from fileio.hf import ModelError, load_state_dict
from model import PROJECTIONS


# -----------------------------------------------------------------------------
# --compare: one markdown table, relative performance against the dense lora run (docs/paper.md §7)

HIGHER_IS_BETTER = ("acc", "f1")


def relative(metric, value, ref):
    """docs/paper.md §7: pruned/dense for accuracies, dense/pruned for perplexities (so both read
    'x% of dense')."""
    if ref is None or value is None:
        return None
    return value / ref if metric.endswith(HIGHER_IS_BETTER) else ref / value


def better(metric, value, ref):
    """Does value improve on ref: a higher accuracy or F1, a lower perplexity?"""
    r = relative(metric, value, ref)
    return r is not None and r > 1


def saved_projections(path):
    """{'layers.b.<proj>': weight} of the adapted projections in a saved folder (no model code
    involved)."""
    return {k[len("model."):-len(".weight")]: v for k, v in load_state_dict(path).items()
            if ".layers." in k and any(k.endswith(p + ".weight") for p in PROJECTIONS)}


def folder_sparsity(path):
    """Fraction of zeros of every adapted projection in a saved folder: per block/projection and
    overall."""
    per, zeros, total = {}, 0, 0
    for k, v in saved_projections(path).items():
        z = int((v == 0).sum())
        per[k], zeros, total = z / v.numel(), zeros + z, total + v.numel()
    return {"overall": zeros / max(1, total), "per_matrix": per}


def read_run(r):
    """A train.py run.json, checked: one line if it is missing or not one."""
    f = os.path.join(r, "run.json")
    if not os.path.exists(f):
        raise ModelError(f"{r}: no run.json (is this a train.py output folder?)")
    try:
        with open(f, encoding="utf-8") as fh:
            j = json.load(fh)
        assert (isinstance(j, dict) and isinstance(j["config"], dict)
                and isinstance(j["metrics"], dict))
    except (OSError, ValueError, AssertionError, KeyError, TypeError):
        raise ModelError(f"{f}: not a train.py run.json")
    return j


WINDOWING = ("split", "seq_len", "windows", "questions")  # what a number was measured on


def check_same_windowing(loaded):
    """A perplexity over 16 windows and one over 32 (or accuracies over other questions) are
    different numbers: refused side by side, in one line."""
    for m in sorted({m for _, j in loaded for m in j["metrics"]}):
        seen = {}
        for r, j in loaded:
            if m in j["metrics"]:
                v = j["metrics"][m] if isinstance(j["metrics"][m], dict) else {}
                seen.setdefault(tuple(v.get(k) for k in WINDOWING), []).append(r)
        if len(seen) > 1:
            how = "; ".join(f"{', '.join(os.path.basename(r.rstrip('/')) for r in rs)}: "
                            + ", ".join(f"{k} {v}" for k, v in zip(WINDOWING, w) if v is not None)
                            for w, rs in seen.items())
            raise ModelError(f"--compare: {m} was measured differently ({how}); re-measure with "
                             "eval.py --windows/--seq-len/--pubmedqa-n --out so they match")


def compare(runs):
    loaded = [(r, read_run(r)) for r in runs]
    check_same_windowing(loaded)
    ref = next((j for _, j in loaded if j["config"]["method"] == "lora"), None)
    names = sorted({m for _, j in loaded for m in j["metrics"]})
    head = ["run", "method", "sparsity"] + names + (["rel. (mean)"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, j in loaded:
        row = [os.path.basename(r.rstrip("/")), j["config"]["method"],
               f"{j['sparsity']['overall']:.3f}"]
        rels = []
        for m in names:
            v = j["metrics"].get(m, {}).get("value")
            rel = relative(m, v, ref["metrics"].get(m, {}).get("value") if ref else None)
            if rel is not None:
                rels.append(rel)
            row.append("–" if v is None
                       else f"{v:.3f}" + (f" ({100 * rel:.1f}%)" if rel is not None else ""))
        if ref:
            row.append(f"{100 * sum(rels) / len(rels):.1f}%" if rels else "–")
        lines.append("| " + " | ".join(row) + " |")
    ctx = {m: next((j["metrics"][m] for _, j in loaded if m in j["metrics"]), {}) for m in names}
    notes = [f"- {m}: {c.get('split', '')}"
             + (f", seq_len {c['seq_len']}, {c['windows']} windows" if "windows" in c
                else f", {c.get('questions', '?')} questions")
             for m, c in ctx.items()]
    ref_note = ("relative = dense-LoRA ppl / ppl, or acc / dense-LoRA acc (docs/paper.md §7)" if ref
                else "no `lora` run given: relative performance needs the dense reference")
    return "\n".join(lines + ["", ref_note] + notes)


# -----------------------------------------------------------------------------
# --mask-overlap: does the mask move with the domain? (docs/paper.md §7, the paper's
# structural-shift analysis)

def mask_overlap(paths, png=None):
    """IoU of the *pruned* positions of every adapted matrix between each pair of runs. Chance
    level for two independent masks at sparsity p is p / (2 - p): printed beside, so 'high' means
    something."""
    masks = []
    for path in paths:
        masks.append({k: v == 0 for k, v in saved_projections(path).items()})
    keys = list(masks[0])
    for path, m in zip(paths[1:], masks[1:]):
        if list(m) != keys or any(m[k].shape != masks[0][k].shape for k in keys):
            raise ModelError(f"{path}: not the same architecture as {paths[0]}")
    sparsity = [sum(int(m[k].sum()) for k in keys) / sum(m[k].numel() for k in keys) for m in masks]
    for path, sp in zip(paths, sparsity):
        if sp == 0:
            raise ModelError(f"{path}: no pruned weights (a dense run has no mask to compare)")
        # IoU and its chance level only mean something at one sparsity
        if abs(sp - sparsity[0]) > 1e-3:
            raise ModelError(f"{path}: sparsity {sp:.4f} differs from {paths[0]}'s "
                             f"{sparsity[0]:.4f}")
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
                grid[int(k.split(".")[1]),
                     PROJECTIONS.index(".".join(k.split(".")[2:]))] = inter / max(1, union)
            p = sum(a[k].sum().item() for k in keys) / sum(a[k].numel() for k in keys)
            grids[f"{names[i]} vs {names[j]}"] = grid
            out.append(f"\n### pruned-position IoU: {names[i]} vs {names[j]}  (sparsity {p:.3f}; "
                       f"chance {p / (2 - p):.3f}; mean {grid.mean():.3f})\n")
            out.append("| block | " + " | ".join(q.split(".")[1] for q in PROJECTIONS)
                       + " | mean |")
            out.append("|---" * (len(PROJECTIONS) + 2) + "|")
            for bi in blocks:
                out.append(f"| {bi} | " + " | ".join(f"{v:.3f}" for v in grid[bi].tolist())
                           + f" | {grid[bi].mean():.3f} |")
            out.append("| mean | " + " | ".join(f"{v:.3f}" for v in grid.mean(0).tolist())
                       + f" | {grid.mean():.3f} |")
    # one line per pair: where in the network the masks agree
    if len(grids) > 1 or len(blocks) >= 3:
        out.extend(_overlap_summary(grids, blocks))
    if png:
        out.append(_overlap_heatmap(grids, blocks, png))
    return "\n".join(out)


def _overlap_summary(grids, blocks):
    """mask_overlap's summary table: each pair's mean IoU overall, per projection and per third
    of the blocks."""
    thirds = [blocks[i * len(blocks) // 3:(i + 1) * len(blocks) // 3] for i in range(3)]
    out = ["\n### summary: mean pruned-position IoU per pair, by projection and by depth\n"]
    out.append("| pair | all | " + " | ".join(q.split(".")[1] for q in PROJECTIONS)
               + " | " + " | ".join(f"blocks {t[0]}-{t[-1]}" for t in thirds) + " |")
    out.append("|---" * (len(PROJECTIONS) + 5) + "|")
    for title, grid in grids.items():
        out.append(f"| {title} | {grid.mean():.3f} | "
                   + " | ".join(f"{v:.3f}" for v in grid.mean(0).tolist())
                   + " | " + " | ".join(f"{grid[t].mean():.3f}" for t in thirds) + " |")
    return out


def _overlap_heatmap(grids, blocks, png):
    """mask_overlap's heatmaps, one per pair, saved to png -> the report's line about it (or why
    there is none: matplotlib is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"\n(no heatmap: matplotlib is not installed; `pip install matplotlib` for {png})"
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 0.25 * len(blocks) + 2),
                             squeeze=False)
    for ax, (title, grid) in zip(axes[0], grids.items()):
        im = ax.imshow(grid.numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title.replace(" vs ", "\nvs "), fontsize=7)
        ax.set_xticks(range(len(PROJECTIONS)), [q.split(".")[1] for q in PROJECTIONS],
                      rotation=60, fontsize=7)
        ax.set_ylabel("block")
    fig.colorbar(im, ax=axes[0].tolist(), label="IoU of pruned positions")
    fig.savefig(png, dpi=120, bbox_inches="tight")
    return f"\nheatmap: {png}"
