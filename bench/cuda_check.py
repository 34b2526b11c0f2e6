"""
Correctness of the device path (CUDA, bf16): the method on the accelerator against an independent \
computation.
Seconds on one GPU; on the CPU (--device cpu) the same checks run, device against itself, so CI
keeps it working.
Not a timing script (bench/gpu.py times); every check prints its measured error and PASS/FAIL; exit
1 on a FAIL.

  1. adapters over a bf16 base are float32, and so is their AdamW state (issue 13 item 1);
  2. the masked-LoRA forward and adapter gradients (_MaskedLoRAFn) against plain autograd on
     ((W + s·B·A) ⊙ M) in float64 on the CPU, with a float32 and a bf16 base;
  3. a prune event on the device against the same event on the CPU in float64: mask agreement, and
     exactly floor(p·m·n) zeros in every matrix;
  4. a second event scores the unmasked U (docs/paper.md §4.4): reported, with the entries it
     changed;
  5. merge_lora in bf16 keeps the exact zero count; the saved folder loaded by transformers (if
     importable) gives our logits.

    python bench/cuda_check.py                 # CUDA if present, else CPU
    python bench/cuda_check.py --device cpu --json check.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import argparse
import copy
import json
import tempfile

import torch

import xpert
from model import LLaMA, LlamaConfig

SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2)  # GQA 8/2, as Llama-3 and SmolLM2 have
RESULTS = []


def check(name, ok, measured):
    RESULTS.append({"check": name, "ok": bool(ok), "measured": measured})
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {measured}")


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def model_on(device, dtype, seed=0):
    torch.manual_seed(seed)
    m = LLaMA(LlamaConfig(**SHAPE))
    # weights of a trained model's scale, so that the bf16 rounding is realistic
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.05)
    return m.to(device, dtype)


def masked_lora(device, wdtype, tol):
    """_MaskedLoRAFn vs autograd on the written-out formula, float64 on the CPU, the same W (as
    rounded), A, B, M."""
    g = torch.Generator().manual_seed(1)
    m, n, r, s = 96, 64, 8, 2.0
    W = torch.randn(m, n, generator=g).to(wdtype)
    M = torch.rand(m, n, generator=g) > 0.4
    W = W * M  # W ⊙ M = W, as after a fold
    A, B = torch.randn(r, n, generator=g) * 0.1, torch.randn(m, r, generator=g) * 0.1
    x = torch.randn(4, 16, n, generator=g).to(wdtype)
    dy = torch.randn(4, 16, m, generator=g)

    Ad, Bd = (t.double().requires_grad_() for t in (A, B))
    yref = x.double() @ ((W.double() + s * Bd @ Ad) * M).T
    yref.backward(dy.double())

    Ag, Bg = (t.to(device).requires_grad_() for t in (A, B))
    y = xpert._MaskedLoRAFn.apply(x.to(device), W.to(device), Ag, Bg, M.to(device), s)
    y.backward(dy.to(device, y.dtype))
    errs = {"y": rel(y, yref), "dA": rel(Ag.grad, Ad.grad), "dB": rel(Bg.grad, Bd.grad)}
    check(f"masked LoRA fwd/grads, {str(wdtype)[6:]} base, vs float64 autograd "
          f"(rel. error ≤ {tol:g})",
          max(errs.values()) <= tol, {k: f"{v:.2e}" for k, v in errs.items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--sparsity", type=float, default=0.4)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    dev = torch.device("cuda" if a.device == "cuda"
                       or (a.device == "auto" and torch.cuda.is_available()) else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"device: {name} | torch {torch.__version__} | shape {SHAPE} | sparsity {a.sparsity}")

    # 1. fp32 adapters and optimizer state over a bf16 base
    mb = xpert.add_lora(model_on(dev, torch.bfloat16))
    params = xpert.lora_parameters(mb)
    _, loss = mb(torch.randint(0, SHAPE["vocab_size"], (2, 32), device=dev),
                 targets=torch.randint(0, 512, (2, 32), device=dev))
    loss.backward()
    opt = torch.optim.AdamW(params, lr=1e-3)
    opt.step()
    dts = {str(p.dtype) for p in params} | {str(v.dtype) for st in opt.state.values()
                                            for k, v in st.items() if k != "step"}
    check("adapters and AdamW state over a bf16 base are float32", dts == {"torch.float32"},
          sorted(dts))
    del mb, opt, params

    # 2. the masked forward and its adapter gradients
    masked_lora(dev, torch.float32, 1e-5)
    # the merged weight is rounded once to bf16 for the matmul
    masked_lora(dev, torch.bfloat16, 1e-2)

    # 3. one prune event on the device vs the CPU in float64 (same weights, adapters and
    # calibration)
    torch.manual_seed(2)
    ref = xpert.add_lora(model_on("cpu", torch.float64))
    for _, lin in xpert.lora_layers(ref):  # a trained-looking adapter, so that U ≠ W
        torch.nn.init.normal_(lin.lora_B, 0.0, 0.02)
    calib = torch.randint(0, SHAPE["vocab_size"], (8, 64))  # (N, T)
    ours = copy.deepcopy(ref).to(dev, torch.float32)
    cfg = xpert.PruneConfig(a.sparsity)
    st_ref = xpert.prune_event(ref, calib, cfg, progress=False)
    st = xpert.prune_event(ours, calib, cfg, progress=False)
    agree = min((l1.mask.cpu() == l2.mask).double().mean().item()
                for (_, l1), (_, l2) in zip(xpert.lora_layers(ours), xpert.lora_layers(ref)))
    check("prune event on the device vs float64 CPU: mask agreement (worst matrix) ≥ 0.999",
          agree >= 0.999, f"{agree:.6f}")
    exact = all(int((lin.mask == 0).sum()) == xpert.n_pruned(lin.mask.numel(), a.sparsity)
                and int((lin.weight == 0).sum()) >= xpert.n_pruned(lin.mask.numel(), a.sparsity)
                for _, lin in xpert.lora_layers(ours))
    check("every matrix has floor(p·m·n) mask zeros and its folded W is zero there", exact,
          f"{sum(st['changed'].values())} entries changed (first event)")

    # 4. a second event after some training: the unmasked U competes (entries may come back)
    for _, lin in xpert.lora_layers(ours):
        with torch.no_grad():
            lin.lora_B.normal_(0.0, 0.05)
    st = xpert.prune_event(ours, calib, cfg, state=st, progress=False)
    check("second event: exact count again, entries changed reported (docs/paper.md §4.4)",
          all(int((lin.mask == 0).sum()) == xpert.n_pruned(lin.mask.numel(), a.sparsity)
              for _, lin in xpert.lora_layers(ours)),
          f"{sum(st['changed'].values())} entries changed")

    # 5. merge in bf16 keeps the exact zeros; transformers reads the folder and gives our logits
    mb = copy.deepcopy(ours).to(torch.bfloat16)
    for _, lin in xpert.lora_layers(mb):
        lin.lora_A.data, lin.lora_B.data = (lin.lora_A.data.float(),
                                            lin.lora_B.data.float().normal_(0.0, 0.05))
    want = sum(xpert.n_pruned(lin.mask.numel(), a.sparsity) for _, lin in xpert.lora_layers(mb))
    xpert.merge_lora(mb)
    xpert.merge_lora(mb)  # idempotent: nothing left to fold
    rep = xpert.sparsity_report(mb)
    check("merge_lora (bf16, twice) keeps exactly the mask's zeros", rep["zeros"] == want,
          f"{rep['zeros']} of {want}")
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        check("transformers loads the saved folder", True,
              "skipped: transformers is not importable here")
    else:
        with tempfile.TemporaryDirectory() as d:
            mb.save_pretrained(os.path.join(d, "expert"))
            hf = AutoModelForCausalLM.from_pretrained(os.path.join(d, "expert"),
                                                      dtype=torch.float32).to(dev).eval()
            mine = LLaMA.from_pretrained(os.path.join(d, "expert"), device=dev,
                                         dtype=torch.float32).eval()
            idx = torch.randint(0, SHAPE["vocab_size"], (2, 48), device=dev)
            with torch.no_grad():
                err = rel(mine(idx), hf(idx, use_cache=False).logits)
        check("transformers loads the saved expert: logits vs ours (float32, rel. error ≤ 1e-4)",
              err <= 1e-4, f"{err:.2e}")

    fails = [r["check"] for r in RESULTS if not r["ok"]]
    print(f"{len(RESULTS) - len(fails)} of {len(RESULTS)} checks passed on {name}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "results": RESULTS}, f, indent=1)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
