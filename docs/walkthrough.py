"""
One prune event of EfficientXpert, step by step, on a real tiny LLaMA (docs/paper.md §3, §4, §5).

    python docs/walkthrough.py                     # prints the data flow, writes docs/figures/*.png
    python docs/walkthrough.py --out /tmp/figs     # figures elsewhere
    python docs/walkthrough.py --no-figures        # text only (no matplotlib needed)

It runs the real xpert.prune_event and watches its steps from outside (`watch`, as bench/timing.py
times them), so every tensor printed is the one the event computed, with its shape and its role:

    capture (xpert.sequential_blocks: block by block, each sees the *pruned* outputs of the last)
      -> consumer energies e_j (xpert.consumer_energy, §4.2) and U = W + s·B·A (LoRALinear.U)
      -> ForeSight scores s = U²·‖X_c‖²·e_j (xpert.foresight_scores), EMA with the last event
      -> mask: exactly floor(p·m·n) pruned (xpert.select_mask)
      -> update ΔU = s·ΔB·A, A fixed (xpert.update_output: PBS, §5.1)
      -> fold W ← (U + ΔU) ⊙ M (LoRALinear.fold), then merge_lora: a plain LLaMA, exactly p-sparse.

The model is the committed stories260K (assets/models/stories260K: 5 blocks, d=64, 8 query / 4 KV
heads, head_dim 8, intermediate 172). Text: windows of 64 tokens of licence texts (legal, built into
data.py) and of WikiText-2 (general; committed in assets/data, or ../shared/assets). A small random
B stands in for the LoRA phase before the event (so U = W + s·B·A differs from W), seeded. Runs in a
few seconds on a CPU. Figures (matplotlib): the scores of a layer with the per-row cut, the kept
fraction of each input column against its energy, and the per-block × projection IoU of legal- vs
general-calibrated masks beside the IoU of chance.
"""
import argparse
import contextlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import xpert  # noqa: E402
# (real text windows, tokenized with stories260K's tokenizer)
from exercises import _common as C  # noqa: E402
from model import LLaMA, PROJECTIONS  # noqa: E402

MODEL_DIR = os.path.join(ROOT, "assets", "models", "stories260K")

# who reads output j of each projection, i.e. where e_j comes from (docs/paper.md §4.2)
READ_BY = {
    "self_attn.q_proj": "k_proj rows of the same KV group, same head dim (the q·k product)",
    "self_attn.k_proj": "q_proj rows of every query head of its group, same dim",
    "self_attn.v_proj": "o_proj columns of every query head of its group",
    "self_attn.o_proj": "gate/up columns j through post_attention_layernorm γ_j",
    "mlp.gate_proj": "down_proj column j (through SwiGLU)",
    "mlp.up_proj": "down_proj column j (through SwiGLU)",
    "mlp.down_proj": "next block's q/k/v columns j through its input_layernorm γ_j",
}


def shape(t):
    return str(tuple(t.shape))


def row(name, t, role):
    print(f"  {name:<30} {shape(t):<11} {role}")


def out_error(W_new, U, H):
    """‖(W_new − U) Xᵀ‖² / ‖U Xᵀ‖² from the Gram H = XᵀX alone: tr(D H Dᵀ) / tr(U H Uᵀ)."""
    D = (W_new - U).double()
    U, H = U.double(), H.double()
    return ((D @ H) * D).sum().item() / ((U @ H) * U).sum().item()


def adapted(model):
    """{'model.layers.b.<proj>': module} of the seven projections of every block."""
    return {f"model.layers.{b}.{proj}": block.get_submodule(proj)
            for b, block in enumerate(model.model.layers) for proj in PROJECTIONS}


def load(rank, alpha, seed):
    """stories260K with LoRA on the seven projections of every block, B small and random
    (seeded)."""
    model = LLaMA.from_pretrained(MODEL_DIR).eval()
    xpert.add_lora(model, rank=rank, alpha=alpha, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lin in adapted(model).values():
            lin.lora_A.copy_((torch.rand(lin.lora_A.shape, generator=g) * 2 - 1)
                             / lin.weight.shape[1] ** 0.5)
            lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g) * 0.02)
    return model


@contextlib.contextmanager
def watch(show_block):
    """Record what the real xpert.prune_event computes in block `show_block`, step by step: each
    step is wrapped while the event runs and put back after. Yields {step: {proj: tensors}}."""
    seen = {"b": None, "e": None, "score": {}, "keep": {}, "update": {}, "fold": {}}
    saved = {n: getattr(xpert, n) for n in ("sequential_blocks", "foresight_scores", "select_mask")}
    saved_tables, saved_fold = (xpert.FORESIGHT, xpert.UPDATES), xpert.LoRALinear.fold
    order = list(PROJECTIONS)  # within a block the event scores and selects in this order

    def blocks(*a, **k):
        for b, block, stats in saved["sequential_blocks"](*a, **k):
            seen["b"], seen["block"] = b, block
            if b == show_block:
                seen["stats"] = dict(stats)  # the generator empties its dict after the block
                seen["shown"] = b
            yield b, block, stats

    def here():
        return seen["b"] == show_block

    def energy(fn):
        return lambda *a: seen.update(e=fn(*a)) or seen["e"] if here() else fn(*a)

    def record(step, fn):
        def wrapper(*a, **k):
            out = fn(*a, **k)
            if here():
                seen[step][order[len(seen[step]) % len(order)]] = (a, out)
            return out
        return wrapper

    def update(fn):
        def wrapper(ch, A, stats, s, lam):
            dU = fn(ch, A, stats, s, lam)
            if here():
                proj = next(p for p in order if seen["stats"][p] is stats
                            and p not in seen["update"])
                seen["update"][proj] = (ch, A, stats, dU)
            return dU
        return wrapper

    def fold(lin, U=None, keep=None, A=None):
        saved_fold(lin, U, keep, A)
        if here():
            proj = next(p for p in order if seen["block"].get_submodule(p) is lin)
            seen["fold"][proj] = lin.weight.detach().clone()

    xpert.sequential_blocks = blocks
    xpert.foresight_scores = record("score", saved["foresight_scores"])
    xpert.select_mask = record("keep", saved["select_mask"])
    xpert.FORESIGHT = {k: energy(fn) for k, fn in saved_tables[0].items()}
    xpert.UPDATES = {k: fn and update(fn) for k, fn in saved_tables[1].items()}
    xpert.LoRALinear.fold = fold
    try:
        yield seen
    finally:
        for n, fn in saved.items():
            setattr(xpert, n, fn)
        xpert.FORESIGHT, xpert.UPDATES = saved_tables
        xpert.LoRALinear.fold = saved_fold


def show(seen, p, show_proj, lin_before):
    """Print the event's tensors for one block, in the order the event computed them."""
    b, stats = seen["shown"], seen["stats"]
    st = stats[show_proj]
    print(f"\n[2] capture, block {b}: xpert.sequential_blocks(model, calib_ids, gram=True) yields "
          "the block with its input statistics\n    (X itself is never stored; q/k/v share one "
          "input, gate/up another)")
    row(f"stats['{show_proj}'].energy", st.energy, "‖X_c‖² = Σ_t x_tc²: energy of input column c")
    row(f"stats['{show_proj}'].gram", st.gram, "H = XᵀX: the Gram matrix PBS needs")
    print(f"  {'.n_tokens':<30} {st.n_tokens:<11} calibration tokens seen by this block")
    (U, energy, e_j), scores = seen["score"][show_proj]
    W, A, B, s = lin_before
    m, n = U.shape
    print(f"\n[3] ForeSight scores, block {b} {show_proj} (§4, paper Eq. 2)")
    row("W", W, "frozen base weight, m outputs × n inputs")
    row("lora_A, lora_B", A, f"A (r × n) and B {shape(B)}, scale s = α/r = {s:g}")
    row("U = W + s·B·A", U, "LoRALinear.U(): unmasked effective weight (§4.4 (1))")
    row(f"e['{show_proj}']", e_j, "consumer energy e_j: read by " + READ_BY[show_proj])
    row("scores", scores, "s[j, c] = U[j, c]² · ‖X_c‖² · e_j (first event: no EMA yet)")
    keep = seen["keep"][show_proj][1]
    print(f"\n[4] mask: xpert.select_mask(scores, {p}, 'out') keeps the top of every output row")
    row("keep", keep, f"bool, True = keep: {int((~keep).sum())} pruned = floor({p}·{m}·{n}) = "
        f"{xpert.n_pruned(m * n, p)}, exactly (top-k, whatever the ties)")
    print(f"\n[5] update (§5.1, PBS) and [6] fold, all seven projections of block {b} (output "
          "error = ‖(W_new − U ⊙ M_old) Xᵀ‖² / ‖U Xᵀ‖² on the calibration tokens, from H):")
    print(f"  {'projection':<18} {'U, D, ΔU':<10} {'pruned':>7} {'= floor(p·m·n)':>15} "
          f"{'error, no PBS':>14} {'with PBS':>9} {'zeros after fold':>17}")
    for proj in PROJECTIONS:
        ch, _, stp, dU = seen["update"][proj]
        W_new, H = seen["fold"][proj], stp.gram
        target = ch.U * ch.old
        mm, nn = ch.U.shape
        assert ch.whole_change().shape == dU.shape == (mm, nn)
        print(f"  {proj:<18} {f'{mm}×{nn}':<10} "
              f"{int((~ch.new).sum()):>7} {xpert.n_pruned(mm * nn, p):>15} "
              f"{out_error(ch.U * ch.new, target, H):>14.4f} {out_error(W_new, target, H):>9.4f} "
              f"{int((W_new == 0).sum()):>17}")
    return {"block": b, "proj": show_proj, "scores": scores.clone(), "keep": keep.clone(),
            "energy": energy.clone(), "k_row": xpert.n_pruned(n, p)}


def figures(out, detail, iou, p, general_name):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    paths = []
    b, proj, scores, keep = detail["block"], detail["proj"], detail["scores"], detail["keep"]

    # 1. the scores of one layer and where group 'out' cuts: per row, not one threshold
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ls = scores.clamp_min(1e-30).log10()  # (m, n)
    bins = torch.linspace(ls.min().item(), ls.max().item(), 60).tolist()
    a1.hist([ls[~keep].tolist(), ls[keep].tolist()], bins=bins, stacked=True,
            color=["#d62728", "#1f77b4"], label=["pruned (each row's lowest)", "kept"])
    cut = ls.reshape(-1).kthvalue(xpert.n_pruned(ls.numel(), p)).values.item()
    a1.axvline(cut, color="k", ls="--", lw=1, label="where a --group layer cut would be")
    a1.set(xlabel="log10 ForeSight score", ylabel="weights",
           title=f"block {b} {proj}: scores, p = {p}")
    a1.legend(fontsize=7)
    k = detail["k_row"]
    for j in (0, 1, 2, 3):
        srt = ls[j].sort().values
        a2.plot(range(len(srt)), srt.tolist(), lw=1, label=f"row {j}")
        a2.plot([k - 0.5], [(srt[k - 1] + srt[k]).item() / 2], "k|", ms=12)
    a2.axvline(k - 0.5, color="k", ls=":", lw=1)
    a2.set(xlabel="rank inside the row (lowest first)", ylabel="log10 score",
           title=f"group 'out': every row cuts at its own rank {k}")
    a2.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "walkthrough_scores.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    # 2. what the mask keeps of each input column, against that column's energy ‖X_c‖²
    energy, kept = detail["energy"], keep.float().mean(0)  # (n,), (n,) kept fraction per column
    r = torch.corrcoef(torch.stack([energy.log(), kept]))[0, 1].item()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.scatter(energy.tolist(), kept.tolist(), s=10, color="#1f77b4")
    ax.axhline(1 - p, color="k", ls=":", lw=1, label=f"1 − p = {1 - p:g}: every row keeps this")
    ax.set(xscale="log", xlabel="input column energy ‖X_c‖² (log)",
           ylabel="fraction of rows keeping c",
           title=f"block {b} {proj.split('.')[-1]}: loud inputs are kept "
                 f"(r = {r:.2f} with log energy)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out, "walkthrough_mask_rows.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    # 3. per block × projection IoU of the pruned sets, legal- vs general-calibrated, from 0
    chance = p / (2 - p)  # the IoU of two independent random masks at sparsity p (exercise 5)
    fig, ax = plt.subplots(figsize=(6.8, 3.2))
    im = ax.imshow(iou.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(iou.shape[0]):
        for j in range(iou.shape[1]):
            ax.text(j, i, f"{iou[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="w" if iou[i, j] < 0.5 else "k")
    ax.set_xticks(range(len(PROJECTIONS)), [q.split(".")[-1] for q in PROJECTIONS], fontsize=8)
    ax.set_yticks(range(iou.shape[0]), [f"block {i}" for i in range(iou.shape[0])], fontsize=8)
    ax.set_title(f"IoU of the pruned weights: legal- vs {general_name}-calibrated, p = {p} "
                 f"(chance {chance:.2f})", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.03)
    bar.ax.axhline(chance, color="r", lw=2)
    bar.ax.text(1.6, chance, "chance", color="r", fontsize=7, va="center",
                transform=bar.ax.get_yaxis_transform())
    fig.tight_layout()
    paths.append(os.path.join(out, "walkthrough_mask_iou.png"))
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "figures"),
                    help="folder for the PNGs")
    ap.add_argument("--no-figures", action="store_true", help="text only")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--block", type=int, default=1, help="the block printed in detail")
    ap.add_argument("--windows", type=int, default=8, help="calibration windows of 64 tokens")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and polite on a shared CPU
    p, rank, alpha = a.sparsity, 8, 16
    if not os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")):
        sys.exit(f"{MODEL_DIR} is missing: the walkthrough runs on the committed stories260K")

    print("[0] model and text")
    model = load(rank, alpha, seed=0)
    cfg = model.config
    calib = C.windows("legal", a.windows)
    held = C.windows("legal", 8, a.windows)  # 8 other windows
    general_name = ("WikiText-2" if C.assets_dir() and os.path.exists(
        os.path.join(C.assets_dir(), "data", "general", "wikitext-2-raw", "wiki.test.raw"))
        else "health text")
    general = C.windows("general", a.windows)
    print(f"  stories260K ({os.path.relpath(MODEL_DIR, ROOT)}): {cfg.num_hidden_layers} blocks, "
          f"d={cfg.hidden_size}, {cfg.num_attention_heads} query / {cfg.num_key_value_heads} KV "
          f"heads, head_dim {cfg.head_dim}, intermediate {cfg.intermediate_size}")
    row("calib_ids", calib,
        f"token ids: {calib.shape[0]} windows × {calib.shape[1]} tokens of licence text (legal)")
    row("held-out ids", held, "8 other legal windows, for the loss")
    row("general ids", general, f"{general_name}, for the second calibration (figure 3)")
    print(f"\n[1] LoRA: xpert.add_lora(model, rank={rank}, alpha={alpha}): each of the "
          f"{len(PROJECTIONS)} projections of every block becomes a LoRALinear (W frozen, mask M, "
          f"A, B, s = {alpha / rank:g});\n"
          f"    a small random B stands in for the dense LoRA phase, so U = W + s·B·A ≠ W")
    loss_dense = torch.nn.functional.cross_entropy(model(held)[:, :-1].reshape(-1, cfg.vocab_size),
                                                   held[:, 1:].reshape(-1)).item()

    show_block, show_proj = min(a.block, cfg.num_hidden_layers - 1), "mlp.gate_proj"
    lin = model.model.layers[show_block].get_submodule(show_proj)
    before = (lin.weight.clone(), lin.lora_A.detach().clone(), lin.lora_B.detach().clone(),
              lin.scale)
    with watch(show_block) as seen:  # the real event; `watch` only records what its steps computed
        xpert.prune_event(model, calib, xpert.PruneConfig(p), progress=False)
    detail = show(seen, p, show_proj, before)
    masks = {(b, proj): blk.get_submodule(proj).mask.clone()
             for b, blk in enumerate(model.model.layers) for proj in PROJECTIONS}

    print("\n[7] the whole event (all blocks, sequential capture), then merge")
    lins = adapted(model)
    exact_fold = sum(int((lin.weight == 0).sum()) == xpert.n_pruned(lin.weight.numel(), p)
                     for lin in lins.values())
    with torch.no_grad():
        logits_before = model(held)
        loss_pruned = torch.nn.functional.cross_entropy(
            logits_before[:, :-1].reshape(-1, cfg.vocab_size), held[:, 1:].reshape(-1)).item()
    xpert.merge_lora(model)
    with torch.no_grad():
        same = (model(held) - logits_before).abs().max().item()
    merged = adapted(model)
    assert all(type(mod) is torch.nn.Linear for mod in merged.values())  # no LoRALinear left
    weights = {name: mod.weight for name, mod in merged.items()}
    exact_merge = sum(int((W == 0).sum()) == xpert.n_pruned(W.numel(), p) for W in weights.values())
    zeros = sum(int((W == 0).sum()) for W in weights.values())
    total = sum(W.numel() for W in weights.values())
    print(f"  exact sparsity: {exact_fold}/{len(lins)} projections have exactly floor(p·m·n) zeros "
          f"after the fold, {exact_merge}/{len(weights)} after merge_lora ({zeros}/{total} = "
          f"{zeros / total:.4f} of the adapted weights)")
    print(f"  merge_lora puts plain nn.Linear back: max |Δlogits| = {same:.1e} (the fold already "
          "applied the adapter)")
    print(f"  held-out legal loss: dense + random adapter {loss_dense:.4f} -> after the event "
          f"{loss_pruned:.4f} (p = {p}, one-shot, no training after it)")

    # the same event calibrated on general text, from the same start
    model_general = load(rank, alpha, seed=0)
    xpert.prune_event(model_general, general, xpert.PruneConfig(p), progress=False)
    masks_general = {(b, proj): blk.get_submodule(proj).mask
                     for b, blk in enumerate(model_general.model.layers) for proj in PROJECTIONS}
    iou = torch.zeros(cfg.num_hidden_layers, len(PROJECTIONS))
    for (b, proj), keep in masks.items():
        pa, pb = ~keep, ~masks_general[(b, proj)]
        iou[b, PROJECTIONS.index(proj)] = (pa & pb).sum().item() / (pa | pb).sum().item()
    print(f"\n[8] the same event calibrated on {general_name}: IoU of the pruned sets per "
          "projection, mean over blocks: " + ", ".join(f"{q.split('.')[-1]} {iou[:, i].mean():.3f}"
                                                       for i, q in enumerate(PROJECTIONS)))
    if not a.no_figures:
        for path in figures(a.out, detail, iou, p, general_name):
            print(f"  wrote {path} ({os.path.getsize(path) // 1024} KB)")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
