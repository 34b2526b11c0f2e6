"""Tests of masked LoRA (xpert.LoRALinear, docs/paper.md §2-3): every test checks the layer against
an independent computation — the explicit expression y = x·((W + s·B·A) ⊙ M)ᵀ, differentiated by
autograd in float64."""
import os
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import xpert  # noqa: E402
from model import PROJECTIONS, LLaMA, LlamaConfig  # noqa: E402


def tiny_model(seed=0, layers=2, dtype=torch.float32):
    """A random GQA LLaMA: 4 query heads / 2 KV heads, head_dim 8."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LLaMA(cfg).to(dtype).eval()


def _masked_layer(seed=0, m=12, n=16, r=4, dtype=torch.float64, dropout=0.0):
    """A pruned layer in the state a fold leaves: W zero off the mask (W ⊙ M = W), B non-zero."""
    torch.manual_seed(seed)
    mask = torch.rand(m, n) > 0.4
    base = nn.Linear(n, m, bias=False).to(dtype)
    with torch.no_grad():
        base.weight.mul_(mask)
    lin = xpert.LoRALinear(base, rank=r, alpha=8, dropout=dropout, mask=mask)
    with torch.no_grad():
        lin.lora_B.normal_()
    return lin


def _reference(lin, x):
    """The explicit masked-LoRA expression on float64 leaf copies: (y, A, B) for autograd."""
    A = lin.lora_A.detach().double().clone().requires_grad_(True)
    B = lin.lora_B.detach().double().clone().requires_grad_(True)
    W, M = lin.weight.detach().double(), lin.mask.double()
    return x @ ((W + lin.scale * B @ A) * M).T, A, B  # docs/paper.md §3


def _zero_off_mask(lin):
    """The invariant the masked forward relies on (xpert, note above _MaskedLoRAFn): W ⊙ M = W."""
    return bool((lin.weight[~lin.mask] == 0).all())


# ---------------------------------------------------------------------------- the function computed

def test_lora_with_zero_B_equals_plain_model():
    model = tiny_model()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = model(ids)
        xpert.add_lora(model, rank=4, dropout=0.1)
        # eval: dropout off; B = 0 exactly
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
        model.train()
        out = model(ids)  # train mode, dropout on the adapter path only: still B = 0
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert all(isinstance(xpert.get_sub(model.model.layers[0], p), xpert.LoRALinear)
               for p in PROJECTIONS)
    params = xpert.lora_parameters(model)
    assert (len(params) == 2 * 7 * 2
            and {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params})


def test_masked_forward_is_the_folded_model():
    lin = _masked_layer()
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = lin(x)
        folded, _, _ = _reference(lin, x)
        torch.testing.assert_close(y, folded, rtol=1e-12, atol=1e-12)
        lin.fold()
        torch.testing.assert_close(lin(x), folded, rtol=1e-12, atol=1e-12)
    assert _zero_off_mask(lin)


# False: a first-block q/k/v, whose input is frozen
@pytest.mark.parametrize("x_grad", [True, False])
def test_masked_gradients_equal_autograd_on_the_expression(x_grad):
    lin = _masked_layer()
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=x_grad)  # (B, T, n)
    gy = torch.randn(2, 7, 12, dtype=torch.float64)
    (lin(x) * gy).sum().backward()
    x_ref = x.detach().clone().requires_grad_(x_grad)
    ref, A, B = _reference(lin, x_ref)
    (ref * gy).sum().backward()
    torch.testing.assert_close(lin.lora_A.grad, A.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.lora_B.grad, B.grad, rtol=1e-12, atol=1e-12)
    if x_grad:
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    # only kept positions reach A, B
    G = (gy.reshape(-1, 12).T @ x.detach().reshape(-1, 16)) * lin.mask
    torch.testing.assert_close(lin.lora_B.grad, lin.scale * G @ lin.lora_A.detach().T)
    assert lin.weight.grad is None


def test_unpruned_layer_takes_the_lora_path_with_the_exact_forms_values_and_gradients():
    """With an all-ones mask LoRALinear runs plain LoRA, x·Wᵀ + s·(x·Aᵀ)·Bᵀ (LoRA's cost); it must
    be the same function, with the same adapter gradients, as the exact masked form x·((W + s·B·A) ⊙
    M)ᵀ."""
    torch.manual_seed(0)
    lin = xpert.LoRALinear(nn.Linear(12, 7, bias=False).double(), rank=3, alpha=6, dropout=0.0)
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(5, 12, dtype=torch.float64)
    y = lin(x)
    gA, gB = torch.autograd.grad(y.pow(2).sum(), (lin.lora_A, lin.lora_B))
    ref, A, B = _reference(lin, x)
    rA, rB = torch.autograd.grad(ref.pow(2).sum(), (A, B))
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gA, rA, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gB, rB, rtol=1e-10, atol=1e-10)
    # one pruned (and zeroed: W ⊙ M = W) weight switches it to the masked path
    with torch.no_grad():
        lin.mask[0, 0] = False
        lin.weight[0, 0] = 0
    torch.testing.assert_close(lin(x), _reference(lin, x)[0], rtol=1e-12, atol=1e-12)


def test_masked_phase_has_no_adapter_dropout_and_the_dense_phase_has():
    """The one-matmul masked form has no place for dropout(x) on the adapter path alone: once the
    mask holds a zero, train() computes what eval() computes. Before any pruning, train-mode dropout
    acts as in LoRA."""
    lin = _masked_layer(dropout=0.5).train()
    x = torch.randn(6, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), _reference(lin, x)[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lin(x), lin(x), rtol=0, atol=0)  # deterministic in train mode
        lin.mask.fill_(True)  # nothing pruned: plain LoRA, with dropout on the adapter path
        assert not torch.equal(lin(x), lin.eval()(x))


def test_forward_follows_mask_changes_made_in_place():
    # LoRALinear caches "is anything pruned?" on the mask's in-place version counter: every way a
    # mask changes in this code (item assignment, copy_, load_state_dict) must switch the forward to
    # the exact form.
    # Each change zeroes W off the new mask, as every writer of a mask does (W ⊙ M = W).
    torch.manual_seed(0)
    lin = xpert.LoRALinear(torch.nn.Linear(10, 6, bias=False).double(), rank=2, alpha=4,
                           dropout=0.0)
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(3, 10, dtype=torch.float64)
    exact = lambda: _reference(lin, x)[0]  # noqa: E731  (W + s·B·A) ⊙ M, computed directly
    with torch.no_grad():
        torch.testing.assert_close(lin(x), exact())
        lin.mask[0, 0] = False
        lin.weight.mul_(lin.mask)
        torch.testing.assert_close(lin(x), exact())
        assert not torch.allclose(lin(x), x @ (lin.weight + lin.scale * lin.lora_B @ lin.lora_A).T)
        lin.mask.copy_(torch.rand(6, 10) > 0.5)
        lin.weight.mul_(lin.mask)
        torch.testing.assert_close(lin(x), exact())
        sd = {k: v.clone() for k, v in lin.state_dict().items()}
        sd["mask"] = torch.ones(6, 10, dtype=torch.bool)
        sd["mask"][2] = False
        sd["weight"] = sd["weight"] * sd["mask"]
        lin.load_state_dict(sd)
        torch.testing.assert_close(lin(x), exact())
        lin.mask.fill_(True)  # back to nothing pruned: the plain-LoRA path, the same function
        torch.testing.assert_close(lin(x), exact())


# ----------------------------------------------------------------- fold and the invariant W ⊙ M = W

def test_fold_is_idempotent():
    lin = _masked_layer(dtype=torch.float32)
    lin.fold()
    W1 = lin.weight.detach().clone()
    assert torch.equal(lin.lora_B, torch.zeros_like(lin.lora_B))
    lin.fold()
    assert torch.equal(lin.weight, W1)
    assert torch.equal(W1 != 0, lin.mask)  # zeros exactly where pruned


def test_every_mask_writer_keeps_the_weight_zero_off_the_mask():
    """The masked forward does not re-mask W (it relies on W ⊙ M = W): check every writer of a mask
    keeps it — a prune event (non-final and final), fold/merge, and a one-shot prune handed to
    add_lora (Wanda→LoRA)."""
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    model = xpert.add_lora(tiny_model(seed=3), rank=4)
    g = torch.Generator().manual_seed(1)
    for final in (False, True):
        with torch.no_grad():
            for _, lin in xpert.lora_layers(model):
                # simulate training
                lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g) * 0.05)
        xpert.prune_event(model, ids, xpert.PruneConfig(0.5), final=final, progress=False)
        assert all(_zero_off_mask(lin) and not lin.mask.all()
                   for _, lin in xpert.lora_layers(model))
    for _, lin in xpert.lora_layers(model):
        with torch.no_grad():
            lin.lora_B.normal_()
        lin.fold()
        assert _zero_off_mask(lin)
    plain = tiny_model(seed=4)
    masks = xpert.prune_oneshot(plain, ids, "wanda", 0.5)
    xpert.add_lora(plain, rank=4, masks=masks)
    assert all(_zero_off_mask(lin) for _, lin in xpert.lora_layers(plain))


# ----------------------------------------------------------------------------- memory

def test_masked_forward_saves_no_new_mxn_tensor():
    """Backward recomputes the merged weight: the forward keeps x and references to W, M, A, B only
    (every saved m×n tensor shares storage with W or the mask), so no per-forward m×n tensor
    outlives the step."""
    lin = _masked_layer(m=24, n=16, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = lin(torch.randn(3, 16, requires_grad=True))
    owned = {lin.weight.untyped_storage().data_ptr(), lin.mask.untyped_storage().data_ptr()}
    big = [t for t in saved if t.numel() >= 24 * 16]
    assert big and all(t.untyped_storage().data_ptr() in owned for t in big), (
        [tuple(t.shape) for t in big])
    y.sum().backward()


# ------------------------------------------------------------- dtypes: fp32 adapters over bf16/fp16

def _prune_block0(model, p=0.5, seed=0):
    """Block 0 pruned (masked path, W zero off M), block 1 left dense (plain-LoRA path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, lin in xpert.lora_layers(model):
            if name.startswith("model.layers.0."):
                lin.mask.copy_(torch.rand(lin.mask.shape, generator=g) > p)
                lin.weight.mul_(lin.mask)


def test_bf16_base_fp32_adapters_keep_updates_below_bf16_resolution():
    """AdamW at lr 1e-6 moves A by ~1e-6 per step, far below bf16's spacing near |A| ~ 0.1 (~5e-4):
    with bf16 adapters A would not change at all. With fp32 adapters every A moves, on both
    paths."""
    model = xpert.add_lora(tiny_model(dtype=torch.bfloat16), rank=4, dropout=0.05)
    _prune_block0(model)
    model.train()
    params = xpert.lora_parameters(model)
    A0 = {n: lin.lora_A.detach().clone() for n, lin in xpert.lora_layers(model)}
    opt = torch.optim.AdamW(params, lr=1e-6)
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        logits, loss = model(ids[:, :-1], targets=ids[:, 1:])
        assert logits.dtype == torch.bfloat16
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, lin in xpert.lora_layers(model):
        moved = (lin.lora_A - A0[n]).abs()
        # a sub-resolution update ...
        assert moved.max() < 1e-5, n
        # ... that survived (weight decay alone moves A by lr·wd·A)
        assert (moved > 0).float().mean() > 0.9, n
        assert torch.isfinite(lin.lora_B).all() and lin.lora_B.abs().max() > 0, n
    assert all(p.dtype == torch.float32 for p in params)
    assert all(lin.weight.dtype == torch.bfloat16 and not lin.weight.requires_grad
               for _, lin in xpert.lora_layers(model))


def test_bf16_fold_is_the_fp32_sum_rounded_once():
    lin = _masked_layer(m=24, n=40, r=4, dtype=torch.bfloat16)
    assert lin.lora_A.dtype == lin.lora_B.dtype == torch.float32
    with torch.no_grad():
        # a small update: most of it would vanish if rounded to bf16 before the sum
        lin.lora_B.mul_(1e-3)
        W, A, B, M = lin.weight.float(), lin.lora_A.clone(), lin.lora_B.clone(), lin.mask
        ref = ((W + lin.scale * B @ A) * M).to(torch.bfloat16)  # summed in fp32, rounded once
        x = torch.randn(3, 40)
        y = lin(x.to(torch.bfloat16))  # the masked forward in bf16, before the fold
        lin.fold()
    assert lin.weight.dtype == torch.bfloat16 and torch.equal(lin.weight, ref)
    # two roundings differ
    assert not torch.equal(ref, (W.to(torch.bfloat16) + (lin.scale * B @ A * M).to(torch.bfloat16)))
    torch.testing.assert_close(y.float(), x.to(torch.bfloat16).float() @ ref.float().T, rtol=2e-2,
                               atol=2e-2)


def test_fp16_base_adamw_steps_are_finite():
    """AdamW's eps = 1e-8 is 0 in fp16: with fp16 adapters the first step (B = 0, so A's gradient
    is 0) was 0/0 = NaN. fp32 adapters keep the optimizer state in fp32."""
    model = xpert.add_lora(tiny_model(dtype=torch.float16), rank=4)
    _prune_block0(model)
    model.train()
    params = xpert.lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        logits, loss = model(ids[:, :-1], targets=ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss) and logits.dtype == torch.float16
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert all(lin.lora_B.abs().max() > 0 for _, lin in xpert.lora_layers(model))


def test_add_lora_adapts_the_seven_projections_only():
    """docs/paper.md §2: the seven projections of every block get adapters; embeddings, norms and
    lm_head are never adapted, never trained, and the prune event leaves them bit-identical."""
    model = tiny_model(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xpert.add_lora(model, rank=2)
    adapted = {n for n, _ in xpert.lora_layers(model)}
    assert adapted == {f"model.layers.{b}.{p}" for b in range(len(model.model.layers))
                       for p in PROJECTIONS}
    wrapped = [n for n, m in model.named_modules() if isinstance(m, xpert.LoRALinear)]
    assert sorted(wrapped) == sorted(adapted)  # nothing else (lm_head, embeddings) is wrapped
    params = xpert.lora_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert (trainable == {f"{n}.lora_{x}" for n in adapted for x in "AB"}
            and len(params) == 2 * len(adapted))
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    xpert.prune_event(model, ids, xpert.PruneConfig(0.5), progress=False)
    after = model.state_dict()
    for k in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
              "model.layers.0.input_layernorm.weight"):
        assert torch.equal(after[k], before[k]), k


def test_bf16_base_adapter_gradients_are_formed_in_fp32():
    """With a bf16 base, the masked path's dA and dB equal float64 autograd on the same bf16 values
    to fp32 precision (G = dYᵀX is formed in the adapter dtype, as PEFT does; in bf16 it carried
    ~2e-3)."""
    g = torch.Generator().manual_seed(4)
    m, n, r, N = 48, 64, 4, 96
    base = nn.Linear(n, m, bias=False).to(torch.bfloat16)
    mask = torch.rand(m, n, generator=g) > 0.5
    with torch.no_grad():
        base.weight.mul_(mask)
    lin = xpert.LoRALinear(base, rank=r, alpha=8, dropout=0.0, mask=mask)
    with torch.no_grad():
        lin.lora_B.copy_(torch.randn(m, r, generator=g) * 0.1)
    x = torch.randn(N, n, generator=g).to(torch.bfloat16)
    dy = torch.randn(N, m, generator=g).to(torch.bfloat16)
    lin(x).backward(dy)
    A64 = lin.lora_A.detach().double().requires_grad_(True)
    B64 = lin.lora_B.detach().double().requires_grad_(True)
    W64 = lin.weight.double()
    y64 = x.double() @ ((W64 + lin.scale * B64 @ A64) * mask).T
    y64.backward(dy.double())
    for got, want in ((lin.lora_A.grad, A64.grad), (lin.lora_B.grad, B64.grad)):
        rel = ((got.double() - want).norm() / want.norm()).item()
        assert rel < 1e-5, rel
