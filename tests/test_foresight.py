"""Tests of the ForeSight readings of docs/paper.md §4.4 (issue 12), each against an independent
computation: the authors' per-module factors ("code") against a per-weight loop over the §4.4
table, the bounded row allocation against exhaustive search, revival of a pruned weight through the
unmasked U = W + s·B·A, an unchanged mask leaving the adapter alone, and a real train.py run in
which a mask entry changes after the first event."""
import copy
import itertools
import json
import math
import os
import sys
from fractions import Fraction

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import xpert  # noqa: E402
from model import PROJECTIONS, LLaMA, LlamaConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "assets", "models", "stories260K")


def gqa_model(seed=0, n_head=6, n_kv=2, layers=2, dtype=torch.float64):
    """A random LLaMA with 3 query heads per KV group (head_dim 4), adapters with non-zero B."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=20, num_hidden_layers=layers,
                      num_attention_heads=n_head, num_key_value_heads=n_kv,
                      max_position_embeddings=64)
    model = xpert.add_lora(LLaMA(cfg).to(dtype).eval(), rank=4, alpha=8, dropout=0.0)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, lin in xpert.lora_layers(model):
            lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g, dtype=dtype) * 0.05)
    return model


def pcfg(p, **kw):
    """A prune event's options for these small tests: sparsity p, calibration batches of 2."""
    return xpert.PruneConfig(sparsity=p, batch_size=2, **kw)


def ids(seed=0, n=4, T=16):
    return torch.randint(0, 64, (n, T), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- (a) the authors' factors

def code_score_loops(U, X2, n_head, n_kv, hd):
    """The docs/paper.md §4.4 (a) table, literally, one weight at a time: {proj: (m, n) first-power
    score |U[j,c]|·‖X_c‖·factor}. U {short name: effective weight}, X2 {proj: ‖X_c‖² (n,)}."""
    rep = n_head // n_kv
    norm = lambda v: math.sqrt(sum(float(t) ** 2 for t in v))  # noqa: E731
    out = {}
    for proj in PROJECTIONS:
        short = proj.split(".")[-1]
        W = U[short]
        m, n = W.shape
        S = torch.zeros(m, n, dtype=torch.float64)
        for j in range(m):
            for c in range(n):
                # head h = j // hd, its KV group g(h): K weights of that group reading c
                if short == "q_proj":
                    g = (j // hd) // rep
                    f = norm(U["k_proj"][g * hd:(g + 1) * hd, c])
                elif short == "k_proj":  # group g: RMS over its heads h of ‖U_q[rows of h, c]‖
                    g = j // hd
                    f = math.sqrt(sum(norm(U["q_proj"][h * hd:(h + 1) * hd, c]) ** 2
                                      for h in range(g * rep, (g + 1) * rep)) / rep)
                elif short == "v_proj":  # group g, dim d: RMS over h ∈ g of ‖U_o[:, h·hd+d]‖
                    g, d = divmod(j, hd)
                    f = math.sqrt(sum(norm(U["o_proj"][:, h * hd + d]) ** 2
                                      for h in range(g * rep, (g + 1) * rep)) / rep)
                elif short == "o_proj":
                    f = 0.5 * (norm(U["gate_proj"][:, j]) + norm(U["up_proj"][:, j]))
                elif short in ("gate_proj", "up_proj"):  # row c of down_proj
                    f = norm(U["down_proj"][c, :])
                else:  # down_proj: plain Wanda on U
                    f = 1.0
                S[j, c] = abs(float(W[j, c])) * math.sqrt(float(X2[proj][c])) * f
        out[proj] = S
    return out


def test_code_factors_equal_the_table_on_a_gqa_block():
    model = gqa_model()
    cfg, block = model.config, model.model.layers[0]
    assert cfg.num_attention_heads // cfg.num_key_value_heads == 3
    with torch.no_grad(), xpert.Capture(block) as cap:  # ‖X_c‖² of block 0 on its real inputs
        x, cos, sin = model.embed(ids())
        block(x, cos, sin)
        X2 = {p: cap.stats[p].energy.double() for p in PROJECTIONS}
    U = {p.split(".")[-1]: xpert.get_sub(block, p).U().detach() for p in PROJECTIONS}
    ref = code_score_loops(U, X2, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
    f = xpert.code_factors(block, model.model.layers[1], cfg.num_attention_heads,
                           cfg.num_key_value_heads, cfg.head_dim)
    for proj in PROJECTIONS:  # the library averages squared scores: (first-power score)²
        s = xpert.foresight_scores(U[proj.split(".")[-1]], X2[proj], f[proj])
        torch.testing.assert_close(s, ref[proj] ** 2, rtol=1e-10, atol=0, msg=proj)
        assert s.shape == U[proj.split(".")[-1]].shape

    # wired into the event: block 0's masks are the per-row lowest of these scores (the first event:
    # no EMA)
    ev = copy.deepcopy(model)
    xpert.prune_event(ev, ids(), pcfg(0.5, update="none", foresight="code"), progress=False)
    for proj in PROJECTIONS:
        assert torch.equal(xpert.get_sub(ev.model.layers[0], proj).mask,
                           xpert.select_mask(ref[proj], 0.5, "out")), proj
    # and the factor re-ranks inside rows: q_proj's mask is not Wanda's (|U|·‖X_c‖ per row)
    wanda = xpert.select_mask(U["q_proj"].abs() * X2["self_attn.q_proj"].sqrt()[None, :], 0.5,
                              "out")
    assert not torch.equal(xpert.get_sub(ev.model.layers[0], "self_attn.q_proj").mask, wanda)


# --------------------------------------------------------------------------- (b) bounded allocation

def bounds(p, delta, n):
    """Exact per-row count bounds (Fractions: no float error): floor((p−δ)n), ceil((p+δ)n), clipped
    to [0, n]."""
    return max(0, math.floor((p - delta) * n)), min(n, math.ceil((p + delta) * n))


@pytest.mark.parametrize("shape", [(7, 13), (16, 10), (5, 48)])
@pytest.mark.parametrize("p,delta",
                         [("0.4", "0.05"), ("0.5", "0.1"), ("0.3", "0.2"), ("0.5", "0.5")])
def test_bounded_allocation_counts_and_bounds(shape, p, delta):
    m, n = shape
    P, D = Fraction(p), Fraction(delta)
    g = torch.Generator().manual_seed(m * n)
    for scores in (torch.rand(m, n, generator=g), torch.randint(0, 4, (m, n), generator=g).float()):
        keep = xpert.select_mask(scores, float(P), "out", delta=float(D))
        per = (~keep).sum(1)
        lo, hi = bounds(P, D, n)
        assert int(per.sum()) == math.floor(P * m * n)
        assert per.min() >= lo and per.max() <= hi, (per.tolist(), lo, hi)
        # group "in": the same with columns
        keep_in = xpert.select_mask(scores, float(P), "in", delta=float(D))
        lo, hi = bounds(P, D, m)
        col = (~keep_in).sum(0)
        assert int(col.sum()) == math.floor(P * m * n) and col.min() >= lo and col.max() <= hi


@pytest.mark.parametrize("p", [0.4, 0.5, 0.37])
def test_bounded_allocation_delta_0_is_out_and_delta_1_is_layer(p):
    scores = torch.rand(24, 37, generator=torch.Generator().manual_seed(3))  # distinct
    total = xpert.n_pruned(scores.numel(), p)
    assert torch.equal(xpert._prune_bounded(scores, total, p, 0.0),
                       xpert.select_mask(scores, p, "out"))
    assert torch.equal(xpert.select_mask(scores, p, "out", delta=0.0),
                       xpert.select_mask(scores, p, "out"))
    assert torch.equal(xpert.select_mask(scores, p, "out", delta=1.0),
                       xpert.select_mask(scores, p, "layer"))
    assert torch.equal(xpert.select_mask(scores, p, "in", delta=1.0),
                       xpert.select_mask(scores, p, "layer"))
    assert torch.equal(xpert.select_mask(scores, p, "layer", delta=0.2),
                       xpert.select_mask(scores, p, "layer"))
    # checked once, here
    for bad in (dict(delta=1.5), dict(delta=float("nan")), dict(group="rows"), dict(sparsity=1.0),
                dict(ema=0.0), dict(nm=(4, 2)), dict(update="obs"), dict(lam=-1.0)):
        with pytest.raises(ValueError):
            xpert.PruneConfig(**{"sparsity": p, **bad})


@pytest.mark.parametrize("p,delta",
                         [("0.5", "0.25"), ("0.5", "0.1"), ("0.25", "0.25"), ("0.6", "0.3"),
                          ("0.4", "0.2"), ("0.75", "0.5")])
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_bounded_allocation_is_optimal_by_exhaustive_search(p, delta, kind):
    m, n = 3, 4
    P, D = Fraction(p), Fraction(delta)
    total, (lo, hi) = math.floor(P * m * n), bounds(P, D, n)
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        scores = torch.rand(m, n, generator=g, dtype=torch.float64) if kind == "random" \
            else torch.randint(0, 3, (m, n), generator=g).double()
        best = math.inf
        # every mask with the right count ...
        for pruned in itertools.combinations(range(m * n), total):
            per = [sum(1 for i in pruned if i // n == r) for r in range(m)]
            if all(lo <= k <= hi for k in per):  # ... and every row within its bounds
                best = min(best, sum(float(scores.view(-1)[i]) for i in pruned))
        keep = xpert.select_mask(scores, float(P), "out", delta=float(D))
        per = (~keep).sum(1)
        assert int(per.sum()) == total and per.min() >= lo and per.max() <= hi
        assert float(scores[~keep].sum()) == pytest.approx(best, abs=1e-12), (scores, keep)


# ------------------------------------------------------- revival and unchanged masks (§4.4 point 1)

NAME = "model.layers.0.mlp.up_proj"


def zero_adapters(model):
    with torch.no_grad():
        for _, lin in xpert.lora_layers(model):
            lin.lora_B.zero_()


def test_pruned_weight_with_large_adapter_value_is_revived():
    # float32: the capture's Gram (for PBS) is float32
    model = gqa_model(seed=2, dtype=torch.float32)
    p = 0.5
    state = xpert.prune_event(model, ids(), pcfg(p), progress=False)
    zero_adapters(model)  # only the hand-set adapter below acts at the second event
    lin = xpert.get_sub(model, NAME)
    j, c = [int(t) for t in (~lin.mask).nonzero()[0]]  # a pruned position: W = 0 there
    assert lin.weight[j, c] == 0
    big = 10 * float(lin.weight.abs().max())
    with torch.no_grad():  # s·B·A = s·big at (j, c) only
        lin.lora_A.zero_()
        lin.lora_A[0, c] = 1.0
        lin.lora_B[j, 0] = big
    for final in (False, True):
        m2 = copy.deepcopy(model)
        st = xpert.prune_event(m2, ids(), pcfg(p, update="none"), state=copy.deepcopy(state),
                               final=final, progress=False)
        lin2 = xpert.get_sub(m2, NAME)
        assert lin2.mask[j, c], "the pruned weight with a large s·B·A must come back"
        assert lin2.weight[j, c] == lin.scale * big  # it enters the fold at its value s·B·A
        # group out: every row exactly p
        assert (~lin2.mask).sum(1).eq(lin2.mask.shape[1] // 2).all()
        # one back in, one other weight of row j out
        assert st["changed"][NAME] == 2 and sum(st["changed"].values()) >= 2
        # exactly p-sparse weights, the revived one non-zero
        assert torch.equal((lin2.weight == 0), ~lin2.mask)


def test_final_event_prunes_exact_zeros_before_reviving_them():
    # a pruned weight whose EMA score is the highest of its row but whose U is exactly 0 (B = 0): a
    # mid-training event revives it at value 0 (masked LoRA can grow it); the final event must not,
    # or the saved model would be more than p sparse
    model = gqa_model(seed=3, dtype=torch.float32)
    state = xpert.prune_event(model, ids(), pcfg(0.5, update="none"), progress=False)
    zero_adapters(model)
    lin = xpert.get_sub(model, NAME)
    j, c = [int(t) for t in (~lin.mask).nonzero()[0]]
    state["scores"][NAME][j, c] = 1e9
    for final, revived in ((False, True), (True, False)):
        m2 = copy.deepcopy(model)
        xpert.prune_event(m2, ids(), pcfg(0.5, update="none"), state=copy.deepcopy(state),
                          final=final, progress=False)
        lin2 = xpert.get_sub(m2, NAME)
        assert (bool(lin2.mask[j, c]) == revived
                and int((~lin2.mask).sum()) == lin2.mask.numel() // 2)
        if final:
            assert int((lin2.merged_weight() == 0).sum()) == lin2.mask.numel() // 2


def test_unchanged_mask_skips_pbs_and_keeps_W_A_B(monkeypatch):
    model = gqa_model(seed=4, dtype=torch.float32)
    state = xpert.prune_event(model, ids(), pcfg(0.4), progress=False)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():  # "training": a small adapter, far from reviving anything
        for _, lin in xpert.lora_layers(model):
            lin.lora_B.copy_(torch.randn(lin.lora_B.shape, generator=g, dtype=lin.lora_B.dtype)
                             * 1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = xpert.pbs_output
    monkeypatch.setattr(xpert, "pbs_output", lambda *a, **k: calls.append(1) or real(*a, **k))
    st = xpert.prune_event(model, ids(), pcfg(0.4), state=state, progress=False)
    assert (sum(st["changed"].values()) == 0
            and set(st["changed"]) == {n for n, _ in xpert.lora_layers(model)})
    assert calls == []  # R = 0: nothing for PBS to do
    for k, v in model.state_dict().items():  # W, A, B and the masks bit-identical
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------- end to end: revival is reachable

@pytest.mark.skipif(not os.path.exists(os.path.join(STORIES, "model.safetensors")),
                    reason="stories260K not found")
@pytest.mark.parametrize("lr", ["5e-4", "5e-3"])
def test_train_logs_changed_entries_and_keeps_the_optimizer_when_nothing_changed(
        lr, tmp_path, monkeypatch):
    import train
    monkeypatch.setenv("XPERT_CACHE", str(tmp_path / "cache"))
    built, AdamW = [], torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: built.append(1) or AdamW(*a, **k))
    out = tmp_path / "run"
    code = train.main(["--model", STORIES, "--domain", "legal", "--max-docs", "200", "--steps",
                       "30", "--seq-len", "64", "--calib-samples", "4", "--eval-windows", "4",
                       "--pubmedqa-n", "0", "--events", "0.3,0.6,1.0", "--lr", lr, "--out",
                       str(out)])
    assert code == 0
    run = json.load(open(out / "run.json"))
    ev = [t for t in run["timings"] if isinstance(t.get("event"), int)]
    assert [t["event"] for t in ev] == [1, 2, 3] and ev[-1]["final"]
    entries = ev[0]["entries"]  # event 1 prunes floor(0.4·m·n) of each of the 35 dense matrices
    assert all(t["entries"] == entries for t in ev) and 0 <= 0.4 * entries - ev[0]["changed"] < 35
    # the optimizer is built once: an event forgets only the reset adapters' moments
    # (train.forget_moments)
    assert len(built) == 1
    log = (out / "train.log").read_text()
    for t in ev:
        assert f"prune event {t['event']} at step {t['step']}" in log and \
            f"{t['changed']} of {t['entries']} mask entries changed" in log
    assert run["sparsity"]["overall"] == pytest.approx(0.4, abs=1e-4)
    # a higher lr than the default: the adapters move enough in 30 steps that revival happens
    if lr == "5e-3":
        assert ev[1]["changed"] + ev[2]["changed"] > 0, "no mask entry changed after event 1"
