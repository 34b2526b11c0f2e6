"""Audit the prune events of a real run against an independent float64 recomputation.

    python bench/event_audit.py            # stories260K, legal, 40 steps at lr 5e-3, 4 events
    python bench/event_audit.py --json results/event-audit.json

The run is the tiny preset's model and data with a higher learning rate and the events at
0.25/0.5/0.75/1.0, so that later events revive weights (docs/paper.md §5.1 "Later events"). At every
event the model is copied first; afterwards, with its own hooks and its own row-wise least squares,
this script recomputes for every matrix whose mask changed what the layer computed before the event
(U ⊙ M_old) on the inputs the event captured, and the layer-output error ‖(Ŵ − U ⊙ M_old) Xᵀ‖² of
  none      the fold without an update, Ŵ = U ⊙ M_new
  R only    PBS with the old target R = U ⊙ M_old ⊙ (1 − M_new) (revived weights left out)
  event     what prune_event wrote (with the update rule given, default PBS on the whole change D)
and the event's weights against its own recomputation (U + s·ΔB·A) ⊙ M_new with ΔB from lstsq.
"""
import argparse
import copy
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import train  # noqa: E402
import xpert  # noqa: E402
from fileio import paths  # noqa: E402
from model import PROJECTIONS, LLaMA, Tokenizer  # noqa: E402


def tiny_run(update="output", dtype=torch.float64, lr=5e-3, steps=40, on_event=None, seed=0):
    """A real LoRA run with prune events at 25/50/75/100% of `steps` (constant lr, AdamW, the
    train loop's forget_moments); after each event on_event(ev), ev = {pre, post, calib, state,
    final, opt, moments}: the model before and after, AdamW and its moments before the event.
    PruneConfig(0.4, update=update, lam=0): λ = 0 so the recomputation is an exact lstsq."""
    model = LLaMA.from_pretrained(paths.tiny_model_dir(), dtype=dtype)
    tok = Tokenizer(model.source_dir)
    splits = data.prepare(domain="legal", tokenizer=tok,
                          options=data.SplitOptions(seed=seed, max_docs=200), progress=False)
    calib = data.calib_windows(splits.calib, 8, 128, seed)  # (8, 128)
    torch.manual_seed(seed)
    xpert.add_lora(model)
    opt = torch.optim.AdamW(xpert.lora_parameters(model), lr=lr, weight_decay=0.0)
    batches = data.batches(splits.train, 4, 128, seed)
    cfg, state = xpert.PruneConfig(0.4, update=update, lam=0.0), None
    at = [round(f * steps) for f in (0.25, 0.5, 0.75, 1.0)]
    for step in range(steps + 1):
        if step in at:
            final = step == at[-1]
            pre = copy.deepcopy(model)
            moments = {p: {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}
            state = xpert.prune_event(model, calib, cfg, state, final=final, progress=False)
            train.forget_moments(opt, model, state["changed"])
            if on_event:
                on_event(dict(pre=pre, post=model, calib=calib, state=state, final=final, opt=opt,
                              moments=moments))
        if step == steps:
            return model
        x, y = next(batches)
        model.train()
        _, loss = model(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def event_inputs(pre, post, calib):
    """{(b, proj): X (N, n) float64}: what each projection read during the event. Block b's input
    is what the blocks before it compute once pruned (post); block b itself is captured as it was
    before its own pruning (pre), as the event's sequential capture does."""
    X = {}
    h, cos, sin = post.embed(calib)
    for b, (blk_pre, blk_post) in enumerate(zip(pre.model.layers, post.model.layers)):
        def keep(p):
            return lambda m, i, o: X.__setitem__((b, p), i[0].reshape(-1, i[0].shape[-1]).double())
        hooks = [blk_pre.get_submodule(p).register_forward_hook(keep(p)) for p in PROJECTIONS]
        blk_pre.eval()(h, cos, sin)
        for hk in hooks:
            hk.remove()
        h = blk_post.eval()(h, cos, sin)
    return X


def rowwise_pbs(target, A, M, X, s):
    """ΔB (m, r): row by row min ‖(s·δ(A ⊙ M_i) − target_i) Xᵀ‖², batched torch.linalg.lstsq."""
    design = s * torch.einsum("tn,mrn->mtr", X, A[None] * M[:, None, :])  # (m, N, r)
    return torch.linalg.lstsq(design, (target @ X.T)[..., None]).solution[..., 0]  # (m, r)


@torch.no_grad()
def audit_event(pre, post, calib):
    """[{matrix, changed, revived, none, r_only, event, recomputed}] for every changed matrix; the
    errors are relative to ‖(U ⊙ M_old) Xᵀ‖²."""
    X, rows = event_inputs(pre, post, calib), []
    for b, (blk_pre, blk_post) in enumerate(zip(pre.model.layers, post.model.layers)):
        for proj in PROJECTIONS:
            a, z = blk_pre.get_submodule(proj), blk_post.get_submodule(proj)
            old, new = a.mask, z.mask
            if torch.equal(old, new):
                continue
            A, s, Xb = a.lora_A.double(), a.scale, X[(b, proj)]
            U = a.weight.double() + s * (a.lora_B.double() @ A)  # (m, n) W + s·B·A, unmasked
            T = U * old  # what the layer computed before the event

            def err(W):
                return ((W - T) @ Xb.T).pow(2).sum().item() / (T @ Xb.T).pow(2).sum().item()
            dB_R = rowwise_pbs(T * ~new, A, new, Xb, s)  # the old target, R
            dB_D = rowwise_pbs(T - U * new, A, new, Xb, s)  # the whole change, D = R − Rev
            mine = (U + s * dB_D @ A) * new
            rows.append({"matrix": f"{b}.{proj}", "changed": int((old != new).sum()),
                         "revived": int((new & ~old).sum()), "none": err(U * new),
                         "r_only": err((U + s * dB_R @ A) * new), "event": err(z.weight.double()),
                         "recomputed": (z.weight.double() - mine).abs().max().item()
                         / mine.abs().max().item()})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", default="output", choices=[u for u in xpert.UPDATES if u != "none"])
    ap.add_argument("--json", help="write the table here as a record")
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    events = []

    def on_event(ev):
        later = not ev["final"] and len(events) > 0  # the first event prunes a dense model: D = R
        rows = audit_event(ev["pre"], ev["post"], ev["calib"]) if later else []
        events.append({"event": len(events) + 1, "rows": rows})
        print(f"event {len(events)}: {sum(ev['state']['changed'].values())} mask entries changed")
    tiny_run(a.update, on_event=on_event)
    print("| event | matrix | changed | revived | no update | PBS on R only (before) | "
          f"{a.update} on D (after) | event vs recomputation |\n|---" * 1 + "|---" * 7 + "|")
    for ev in events:
        for r in ev["rows"]:
            print(f"| {ev['event']} | {r['matrix']} | {r['changed']} | {r['revived']} | "
                  f"{r['none']:.4g} | {r['r_only']:.4g} | {r['event']:.4g} | "
                  f"{r['recomputed']:.1e} |")
    for ev in events:
        if ev["rows"]:
            worse = sum(r["r_only"] > r["none"] for r in ev["rows"])
            print(f"event {ev['event']}: sums none {sum(r['none'] for r in ev['rows']):.4f}, R "
                  f"only {sum(r['r_only'] for r in ev['rows']):.4f}, event "
                  f"{sum(r['event'] for r in ev['rows']):.4f}; R only worse than none in {worse} "
                  f"of {len(ev['rows'])} changed matrices")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"command": "python bench/event_audit.py " + " ".join(sys.argv[1:]),
                       "update": a.update, "events": events}, f, indent=1)


if __name__ == "__main__":
    main()
