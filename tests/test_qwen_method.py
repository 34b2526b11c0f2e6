"""
Tests of the method (xpert.py) on Qwen2 and Qwen3 (issue 24, phase 2), each against an independent
computation: a Qwen2 bias stays frozen and unmasked through masked LoRA and the fold (the explicit
expression, autograd in float64); ForeSight's q/k consumers read through Qwen3's q_norm/k_norm
(docs/paper.md §4.2) against the brute-force change of the linear chain the reading assumes and
against a per-weight loop; and the real `train.py` on random Qwen2/Qwen3 folders, whose saved
folder transformers (the test oracle) loads with the same logits, exact ⌊p·m·n⌋ zeros and the
source's biases and gains bit for bit.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import ROOT
from test_qwen import make_qwen, transformers

import xpert
from fileio.hf import load_state_dict
from model import PROJECTIONS, LLaMA, LlamaConfig

STORIES = os.path.join(ROOT, "assets", "models", "stories260K")  # its tokenizer: vocab 512


def qwen3_model(seed=0, n_head=6, n_kv=2, head_dim=8):
    """A random float64 Qwen3 (3 query heads per KV group, n_head·hd = 48 != hidden 32) with LoRA:
    random gains (q_norm/k_norm included), query heads of unequal scale (ρ_{q,h} differ), B != 0."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=head_dim,
                      max_position_embeddings=64, model_type="qwen3")
    model = LLaMA(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for block in model.model.layers:
            scale = torch.arange(1, n_head + 1, dtype=torch.float64).repeat_interleave(head_dim)
            block.self_attn.q_proj.weight.mul_(scale[:, None])  # (n_head·hd, n) head h × (h+1)
    xpert.add_lora(model, rank=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, lin in xpert.lora_layers(model):
            lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g, dtype=torch.float64) * 0.3)
    return model


def U_of(block, proj):
    """A projection's effective weight U = W + s·B·A (docs/paper.md §2), written out here."""
    lin = xpert.get_sub(block, proj)
    return (lin.weight + lin.scale * lin.lora_B @ lin.lora_A).detach()


# -----------------------------------------------------------------------------
# Qwen2's bias through masked LoRA, the fold and merge_lora

def test_lora_keeps_the_bias_frozen_unmasked_and_the_same_parameter():
    torch.manual_seed(0)
    base = nn.Linear(16, 12).double()
    bias = base.bias
    lin = xpert.LoRALinear(base, rank=4, alpha=8, dropout=0.0)
    assert lin.bias is bias and not bias.requires_grad
    assert set(lin.state_dict()) == {"weight", "bias", "mask", "lora_A", "lora_B"}
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    keep = torch.rand(12, 16) > 0.4
    for mask in (None, keep):  # plain LoRA, then masked LoRA after a fold onto the mask
        if mask is not None:
            lin.fold(keep=mask)
            with torch.no_grad():
                lin.lora_B.normal_()
        A = lin.lora_A.detach().clone().requires_grad_(True)
        B = lin.lora_B.detach().clone().requires_grad_(True)
        M = lin.mask.double()
        ref = x @ ((lin.weight.detach() + lin.scale * B @ A) * M).T + bias.detach()  # §3, + b
        y = lin(x)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        dy = torch.randn_like(y)
        lin.zero_grad()
        (y * dy).sum().backward()
        (ref * dy).sum().backward()
        torch.testing.assert_close(lin.lora_A.grad, A.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(lin.lora_B.grad, B.grad, rtol=1e-10, atol=1e-12)
        assert bias.grad is None
    b0 = bias.detach().clone()
    lin.fold(keep=torch.zeros(12, 16, dtype=torch.bool))  # every weight pruned: the bias stays
    assert torch.equal(lin.weight, torch.zeros(12, 16, dtype=torch.float64))
    assert torch.equal(bias, b0) and torch.equal(lin(x), b0.expand(3, 5, 12))


def test_merge_lora_on_qwen2_keeps_bias_parameters():
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, model_type="qwen2")
    torch.manual_seed(0)
    model = LLaMA(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_()
    keys = set(model.state_dict())
    biases = {n: p for n, p in model.named_parameters() if n.endswith(".bias")}
    assert len(biases) == 6
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids)
        xpert.add_lora(model, rank=4, dropout=0.0)
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)  # B = 0: the plain model
        adapter = (".mask", ".lora_A", ".lora_B")
        assert {k for k in model.state_dict() if not k.endswith(adapter)} == keys  # "...bias" stays
        xpert.merge_lora(model)
    assert set(model.state_dict()) == keys
    assert all(dict(model.named_parameters())[n] is p for n, p in biases.items())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)


# -----------------------------------------------------------------------------
# ForeSight's consumers through Qwen3's q_norm / k_norm (docs/paper.md §4.2)

def head_rho(U, heads, hd):
    """ρ_h = √(‖U rows of head h‖²_F / hd): the RMS a head's norm divides by (input scale σ = 1)."""
    return [math.sqrt((U[h * hd:(h + 1) * hd] ** 2).sum() / hd) for h in range(heads)]


def qk_chain(Uq, Uk, norms, X, which, heads):
    """The linear chain the §4.2 reading assumes for Qwen3: each head's RMSNorm replaced by its
    diagonal, q̂_h = γ_q ⊙ (U_q,h x) / ρ_{q,h} and k̂_g likewise, norms = (γ_q, γ_k, ρ_q, ρ_k)
    held at the unpruned U. which="q": every query against the keys of unit inputs e_c', the
    consumer output Z[t, h, c'] = Σ_d q̂_h(x_t)[d]·k̂_g(h)(e_c')[d]; which="k": the other way."""
    (gq, gk, rho_q, rho_k), (n_head, n_kv, hd) = norms, heads
    out = []
    for h in range(n_head):
        g = h // (n_head // n_kv)  # h's KV group
        qh = gq[:, None] * Uq[h * hd:(h + 1) * hd] / rho_q[h]  # (hd, n) x -> q̂_h
        kg = gk[:, None] * Uk[g * hd:(g + 1) * hd] / rho_k[g]  # (hd, n) x -> k̂_g
        out.append(X @ qh.T @ kg if which == "q" else X @ kg.T @ qh)  # (N, n) over c'
    return torch.stack(out, 1)  # (N, n_head, n)


def test_qwen3_foresight_equals_bruteforce_change_of_the_normed_qk_chain():
    """docs/paper.md §4.1 on Qwen3's q/k: zeroing U[j, c] alone changes the chain's output by
    exactly s[j, c] = U[j, c]²·‖X_c‖²·e_j with consumer_energy's e_j (squared Frobenius norm)."""
    model = qwen3_model()
    cfg = model.config
    heads = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    block = model.model.layers[0]
    e = xpert.consumer_energy(block, model.model.layers[1], *heads)
    Uq, Uk = U_of(block, "self_attn.q_proj"), U_of(block, "self_attn.k_proj")
    norms = (block.self_attn.q_norm.weight.detach(), block.self_attn.k_norm.weight.detach(),
             head_rho(Uq, heads[0], heads[2]), head_rho(Uk, heads[1], heads[2]))
    assert max(norms[2]) > 3 * min(norms[2])  # heads of unequal scale: 1/ρ² must matter
    g = torch.Generator().manual_seed(2)
    X = torch.randn(20, Uq.shape[1], generator=g, dtype=torch.float64)  # (N, n)
    X = X * torch.rand(Uq.shape[1], generator=g, dtype=torch.float64).add(0.2)  # uneven columns
    for which, U, proj in (("q", Uq, "self_attn.q_proj"), ("k", Uk, "self_attn.k_proj")):
        s = xpert.foresight_scores(U, (X ** 2).sum(0), e[proj])  # (m, n) paper Eq. 2
        pair = (lambda V: (V, Uk)) if which == "q" else (lambda V: (Uq, V))  # noqa: E731
        Z = qk_chain(*pair(U), norms, X, which, heads)
        for j in range(U.shape[0]):
            for c in range(U.shape[1]):
                Up = U.clone()
                Up[j, c] = 0
                brute = ((Z - qk_chain(*pair(Up), norms, X, which, heads)) ** 2).sum()
                assert abs(s[j, c] - brute) <= 1e-9 * brute, (which, j, c)


def test_qwen3_consumer_energy_matches_loops_on_gqa_block():
    """The §4.2 table with Qwen3's q/k rows, one output at a time in float64 (docs/paper.md §4.2):
    e_q[h·hd+d] = (γ_q[d]γ_k[d])²·‖U_k[g·hd+d, :]‖²/(ρ²_{q,h}ρ²_{k,g}),
    e_k[g·hd+d] = (γ_q[d]γ_k[d])²/ρ²_{k,g}·Σ_{h∈g} ‖U_q[h·hd+d, :]‖²/ρ²_{q,h}; the rest as LLaMA."""
    model = qwen3_model()
    cfg = model.config
    H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    sq = lambda v: sum(float(t) ** 2 for t in v)  # noqa: E731
    for b in range(2):
        blk = model.model.layers[b]
        nxt = model.model.layers[1] if b == 0 else (model.model.norm, model.lm_head)
        e = xpert.consumer_energy(blk, nxt, H, KV, hd)
        U = {p: U_of(blk, p) for p in PROJECTIONS}
        Uq, Uk, Uo = U["self_attn.q_proj"], U["self_attn.k_proj"], U["self_attn.o_proj"]
        gq, gk = blk.self_attn.q_norm.weight.tolist(), blk.self_attn.k_norm.weight.tolist()
        rq = [sq(Uq[h * hd:(h + 1) * hd].reshape(-1)) / hd for h in range(H)]  # ρ²_{q,h}
        rk = [sq(Uk[g * hd:(g + 1) * hd].reshape(-1)) / hd for g in range(KV)]  # ρ²_{k,g}
        ref = {p: torch.zeros(U[p].shape[0], dtype=torch.float64) for p in PROJECTIONS}
        for h in range(H):
            g = h // (H // KV)
            for d in range(hd):
                gg = (gq[d] * gk[d]) ** 2
                ref["self_attn.q_proj"][h * hd + d] = gg * sq(Uk[g * hd + d]) / (rq[h] * rk[g])
                ref["self_attn.k_proj"][g * hd + d] += gg * sq(Uq[h * hd + d]) / (rq[h] * rk[g])
                ref["self_attn.v_proj"][g * hd + d] += sq(Uo[:, h * hd + d])
        gp = blk.post_attention_layernorm.weight.tolist()
        for j in range(cfg.hidden_size):
            ref["self_attn.o_proj"][j] = gp[j] ** 2 * (sq(U["mlp.gate_proj"][:, j])
                                                       + sq(U["mlp.up_proj"][:, j]))
        for j in range(cfg.intermediate_size):
            ref["mlp.gate_proj"][j] = ref["mlp.up_proj"][j] = sq(U["mlp.down_proj"][:, j])
        if b == 0:
            gamma = nxt.input_layernorm.weight.tolist()
            readers = [U_of(nxt, p) for p in PROJECTIONS[:3]]
        else:
            gamma, readers = model.model.norm.weight.tolist(), [model.lm_head.weight.detach()]
        for j in range(cfg.hidden_size):
            ref["mlp.down_proj"][j] = gamma[j] ** 2 * sum(sq(R[:, j]) for R in readers)
        for p in PROJECTIONS:
            assert e[p].dtype == torch.float64
            torch.testing.assert_close(e[p], ref[p], rtol=1e-12, atol=0, msg=p)


# -----------------------------------------------------------------------------
# the real train.py on Qwen folders: saved, exactly p-sparse, reloads in transformers

QWEN = {"qwen3": dict(num_key_value_heads=2, head_dim=16),  # 4·16 = 64 != hidden 32
        "qwen2": dict(num_key_value_heads=2)}


def random_qwen_folder(path, family):
    """A random transformers Qwen (biases and gains randomised, test_qwen.make_qwen) with the
    stories260K sentencepiece tokenizer (vocab 512): a folder train.py takes like any other."""
    make_qwen(path, family, dict(QWEN[family], vocab_size=512, max_position_embeddings=128,
                                 eos_token_id=2))
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(STORIES, f), path)


@pytest.mark.parametrize("family", list(QWEN))
def test_train_py_on_a_qwen_folder_saves_an_exactly_sparse_folder_transformers_loads(
        family, tmp_path):
    tf = transformers()
    src, out = tmp_path / "src", tmp_path / "out"
    random_qwen_folder(src, family)
    env = dict(os.environ, XPERT_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "train.py", "--model", str(src), "--domain", "legal",
                        "--steps", "6", "--seq-len", "32", "--calib-samples", "2",
                        "--eval-windows", "2", "--pubmedqa-n", "0", "--events", "0.5,1.0",
                        "--max-docs", "50", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    p = json.load(open(out / "run.json"))["config"]["sparsity"]
    assert p == 0.4  # the default
    sd, src_sd = load_state_dict(str(out)), load_state_dict(str(src))
    assert sd.keys() == src_sd.keys()  # Qwen2's q/k/v biases, Qwen3's q_norm/k_norm all there
    projections = [k for k in sd if any(k.endswith(q + ".weight") for q in PROJECTIONS)]
    assert len(projections) == 7 * 2
    for k in sd:
        if k in projections:  # exactly floor(p·m·n) zeros (p = 2/5: integer arithmetic)
            assert int((sd[k] == 0).sum()) == sd[k].numel() * 2 // 5, k
        else:  # nothing else is trained or pruned: embeddings, gains, biases are the source's
            assert torch.equal(sd[k], src_sd[k]), k
    assert sum(k.endswith(".bias") for k in sd) == (6 if family == "qwen2" else 0)
    assert sum(k.endswith(("q_norm.weight", "k_norm.weight")) for k in sd) == (
        4 if family == "qwen3" else 0)
    hf, info = tf.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                       output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    hf_sd = hf.state_dict()
    for k in projections:
        assert torch.equal(hf_sd[k], sd[k]), k  # the same zeros, the same kept values
    ours = LLaMA.from_pretrained(str(out))
    x = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf.eval()(x).logits, rtol=1e-4, atol=1e-5)
