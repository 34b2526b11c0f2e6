"""
Does the propagation factor change *which* weights go, and does that help? (docs/paper.md §4.4, \
issue 12.)
One-shot on real SmolLM2-135M layers, no LoRA (U = W), dense-model inputs. Not a test: a
measurement.

For blocks × the seven projections × sparsities, each reading's mask against Wanda on U (|U|·‖X_c‖
per output row), and the relative output error on held-out tokens with the non-linearity included:
    q/k/v      the attention output after o_proj (softmax, RoPE, GQA; the other two projections
               dense)
    gate/up    the MLP output, through SwiGLU and down_proj
    o/down     their own output, ‖(W − Ŵ)Xᵀ‖² / ‖WXᵀ‖²
Readings: eq2-out (paper Eq. 2 per output row = Wanda² × e_j: the same mask, §4.3), code (the
authors' per-module factors, §4.4 (a), per output row), bounded δ (§4.4 (b): Eq. 2, rows compete
within [p−δ, p+δ]). Masks come from the calibration windows, the error from test-split windows.

    python bench/foresight_probe.py                       # legal, 16×256 calib, blocks 2,14,27
    python bench/foresight_probe.py --blocks 2 --sparsities 0.5 --json out.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import json
import math
import time

import torch

import xpert
from bench.grid import head_commit
from bench.prune_event import (block_inputs, block_stats, probe_inputs, probe_parser,
                               rel_err)
from model import PROJECTIONS


def readings(W, st, e_eq2, e_code, sparsity, deltas):
    """{name: keep mask} of every reading, from calibration statistics st (‖X_c‖²) and factors e."""
    eq2 = xpert.foresight_scores(W, st.energy, e_eq2)  # paper Eq. 2
    masks = {"wanda": xpert.select_mask(W.abs() * st.energy.sqrt()[None, :], sparsity, "out"),
             "eq2-out": xpert.select_mask(eq2, sparsity, "out"),
             "code": xpert.select_mask(xpert.foresight_scores(W, st.energy, e_code), sparsity,
                                       "out")}
    for d in deltas:
        masks[f"bounded d={d:g}"] = xpert.select_mask(eq2, sparsity, "out", delta=d)
    return masks


def iou_pruned(a, b):
    """IoU of the pruned positions of two keep masks."""
    pa, pb = ~a, ~b
    return ((pa & pb).sum() / (pa | pb).sum().clamp_min(1)).item()


def held_inputs(block, xs, cos, sin):
    """The held-out inputs of attention (after input_layernorm) and of the MLP (after
    post_attention_layernorm)."""
    att, mlp = [], []
    with torch.no_grad():
        for x in xs:
            h = block.input_layernorm(x)
            att.append(h)
            mlp.append(block.post_attention_layernorm(x + block.self_attn(h, cos, sin)))
    return att, mlp


def module_error(module, lin, W_hat, inputs, *extra):
    """Relative squared error of `module`'s output on `inputs` when `lin`'s weight is W_hat
    (restored after)."""
    W = lin.weight.data
    with torch.no_grad():
        ref = [module(x, *extra) for x in inputs]
        lin.weight.data = W_hat.to(W.dtype)
        try:
            out = [module(x, *extra) for x in inputs]
        finally:
            lin.weight.data = W
    num = sum((o - r).double().pow(2).sum() for o, r in zip(out, ref))
    den = sum(r.double().pow(2).sum() for r in ref)
    return (num / den).item()


def main():
    p = probe_parser(__doc__)
    p.add_argument("--deltas", default="0.05,0.1,0.2")
    a = p.parse_args()
    t_start = time.time()
    model, calib, held, res = probe_inputs(a)
    res.update(blocks=a.blocks, layers={})
    cfg, layers = model.config, model.model.layers
    sps = [float(x) for x in a.sparsities.split(",")]
    deltas = [float(x) for x in a.deltas.split(",")]
    print(f"{os.path.basename(model.source_dir)}: calibration {res['calibration']}; error on "
          f"{res['heldout']}")

    for b in (int(x) for x in a.blocks.split(",")):
        block = layers[b]
        xc, cos, sin = block_inputs(model, calib, b)
        xh, _, _ = block_inputs(model, held, b)
        st_c, st_h = block_stats(block, xc, cos, sin), block_stats(block, xh, cos, sin)
        att_in, mlp_in = held_inputs(block, xh, cos, sin)
        nxt = layers[b + 1] if b + 1 < len(layers) else (model.model.norm, model.lm_head)
        args = (block, nxt, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
        e_eq2, e_code = xpert.consumer_energy(*args), xpert.code_factors(*args)
        for sp in sps:
            for proj in PROJECTIONS:
                lin = block.get_submodule(proj)
                W = lin.weight.float()  # (m, n) = U (no LoRA)
                masks = readings(W, st_c[proj], e_eq2[proj], e_code[proj], sp, deltas)
                row = {}
                for name, keep in masks.items():
                    W_hat = W * keep
                    if proj.startswith("self_attn.") and proj != "self_attn.o_proj":
                        err = module_error(block.self_attn, lin, W_hat, att_in, cos, sin)
                    elif proj in ("mlp.gate_proj", "mlp.up_proj"):
                        err = module_error(block.mlp, lin, W_hat, mlp_in)
                    else:
                        err = rel_err(W, W_hat, st_h[proj].gram)
                    row[name] = {"iou_vs_wanda": iou_pruned(keep, masks["wanda"]), "rel_err": err}
                key = f"block {b} {proj.split('.')[-1]} p={sp:g}"
                res["layers"][key] = row
                print(f"  {key}: " + ", ".join(f"{n} {v['iou_vs_wanda']:.3f}/{v['rel_err']:.4f}"
                                               for n, v in row.items()),
                      flush=True)

    names = list(next(iter(res["layers"].values())))
    res["summary"] = {}
    head = "| reading | " + " | ".join(f"p={sp:g} IoU vs Wanda | p={sp:g} rel. error (geo-mean)"
                                       for sp in sps) + " |"
    lines = [head, "|---" * (1 + 2 * len(sps)) + "|"]
    for n in names:
        cells = []
        for sp in sps:
            rows = [v[n] for k, v in res["layers"].items() if k.endswith(f"p={sp:g}")]
            iou = sum(r["iou_vs_wanda"] for r in rows) / len(rows)
            gm = math.exp(sum(math.log(r["rel_err"]) for r in rows) / len(rows))
            res["summary"][f"{n} p={sp:g}"] = {"mean_iou_vs_wanda": iou, "geomean_rel_err": gm,
                                               "layers": len(rows)}
            cells += [f"{iou:.4f}", f"{gm:.5f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    res["seconds"] = time.time() - t_start
    print(f"\nblocks {a.blocks} × 7 projections, one-shot on U = W; IoU of pruned positions vs "
          f"Wanda on U (mean); relative output error with the non-linearity on {res['heldout']} "
          f"(geometric mean); {res['seconds']:.0f}s")
    print("\n".join(lines))
    if a.json:  # a record: what ran, at which commit
        res["command"] = "python bench/foresight_probe.py " + " ".join(sys.argv[1:])
        res["commit"] = head_commit()
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
