"""
Tests of model.py on Qwen3 and Qwen2 folders: parity with transformers' Qwen3ForCausalLM and
Qwen2ForCausalLM (the oracles, test-only) on random-weight folders in small shapes (GQA/MQA, tied
and untied, Qwen3's explicit head_dim != hidden/heads), save_pretrained -> transformers, the
loader's key and shape checks, and what is refused in one line.

Random weights are not enough by themselves: transformers initialises biases to 0 and norm gains
to 1, which would hide a dropped bias or a gain applied after RoPE, so every bias and gain is
randomised.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

import model as M  # noqa: E402
from fileio import hf as H  # noqa: E402


def transformers():
    return pytest.importorskip("transformers",
                               reason="transformers is the test oracle (pip install transformers)")


TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
            bos_token_id=1, eos_token_id=None, pad_token_id=0)
CASES = {  # name: (family, config overrides, sharded); hidden/heads = 8
    "qwen3_gqa_tied_hd16": ("qwen3", dict(num_key_value_heads=2, head_dim=16,
                                          tie_word_embeddings=True), False),
    "qwen3_mqa_untied_hd12_theta": ("qwen3", dict(num_key_value_heads=1, head_dim=12,
                                                  rope_theta=1e6), True),
    "qwen3_mha_untied_hd8": ("qwen3", dict(num_key_value_heads=4, head_dim=8), False),
    "qwen2_gqa_tied": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True), False),
    "qwen2_mqa_untied_theta": ("qwen2", dict(num_key_value_heads=1, rope_theta=1e6), True),
}


def make_qwen(path, family, overrides, sharded=False, seed=0):
    """A random transformers Qwen saved to path, with random biases and norm gains (docstring)."""
    tf = transformers()
    cfg_cls, model_cls = {"qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[family]
    torch.manual_seed(seed)
    hf = model_cls(cfg_cls(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.5 * torch.randn_like(p))
            elif "norm" in name:  # input/post-attention/final norms, and Qwen3's q_norm/k_norm
                p.copy_(1 + 0.5 * torch.randn_like(p))
    hf.save_pretrained(path, **({"max_shard_size": "20KB"} if sharded else {}))
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json")) == sharded
    return hf


def edit_config(path, **changes):
    """Rewrite path/config.json with changes (a value of None deletes the key)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)


def ids(T=13, B=2, seed=1):
    return torch.randint(3, 97, (B, T), generator=torch.Generator().manual_seed(seed))  # (B, T)


# -----------------------------------------------------------------------------
# parity: logits, loss, greedy generation

@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_generation_match_transformers(case, tmp_path):
    family, overrides, sharded = CASES[case]
    hf = make_qwen(tmp_path, family, overrides, sharded).double()
    ours = M.LLaMA.from_pretrained(tmp_path, dtype=torch.float64)
    cfg = ours.config
    head_dim = hf.config.head_dim if family == "qwen3" else 8  # Qwen2: hidden/heads
    assert (cfg.model_type, cfg.head_dim) == (family, head_dim)
    assert cfg.num_key_value_heads == hf.config.num_key_value_heads
    assert (cfg.qk_norm, cfg.qkv_bias) == (family == "qwen3", family == "qwen2")
    assert (ours.lm_head.weight is ours.model.embed_tokens.weight) == hf.config.tie_word_embeddings
    idx = ids()
    with torch.no_grad():
        ref = hf(idx).logits  # (B, T, vocab)
        got = ours(idx)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    tgt = idx.roll(-1, 1)
    tgt[:, -1] = -100
    _, loss = ours(idx, targets=tgt)
    ref_loss = torch.nn.functional.cross_entropy(ref.view(-1, 97), tgt.view(-1),
                                                 ignore_index=-100)
    assert abs(loss.item() - ref_loss.item()) < 1e-5  # the loss is taken in float32
    # greedy: with KV cache (normed, rotated keys cached) == without == transformers' generate
    a = ours.generate(idx, 12, use_cache=True)
    b = ours.generate(idx, 12, use_cache=False)
    c = hf.generate(idx, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    assert torch.equal(a, c)


def test_qwen3_without_head_dim_key_uses_transformers_default(tmp_path):
    # Qwen3Config's head_dim defaults to 128, not hidden/heads (64/4 = 16 here): a folder whose
    # config.json lacks the key must load as transformers loads it
    tf = transformers()
    hf = make_qwen(tmp_path, "qwen3", dict(hidden_size=64, num_key_value_heads=2, head_dim=128))
    edit_config(tmp_path, head_dim=None)
    hf2 = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf2.config.head_dim == 128
    ours = M.LLaMA.from_pretrained(tmp_path)
    assert ours.config.head_dim == 128
    with torch.no_grad():
        torch.testing.assert_close(ours(ids()), hf(ids()).logits, rtol=1e-6, atol=1e-6)


# -----------------------------------------------------------------------------
# save_pretrained -> transformers loads it unchanged

@pytest.mark.parametrize("case", ["qwen3_gqa_tied_hd16", "qwen3_mqa_untied_hd12_theta",
                                  "qwen2_gqa_tied", "qwen2_mqa_untied_theta"])
def test_save_pretrained_reloads_in_transformers(case, tmp_path):
    tf = transformers()
    family, overrides, sharded = CASES[case]
    src = make_qwen(tmp_path / "src", family, overrides, sharded)
    ours = M.LLaMA.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "out")
    with open(tmp_path / "src" / "config.json") as f:
        src_cfg = json.load(f)
    with open(tmp_path / "out" / "config.json") as f:
        out_cfg = json.load(f)
    src_cfg.setdefault("head_dim", 8)  # Qwen2 folders have none (hidden/heads); Qwen2 reads ours
    for k in ("model_type", "architectures", "head_dim", "tie_word_embeddings",
              "num_key_value_heads"):
        assert out_cfg.get(k) == src_cfg[k], k
    assert ("attention_bias" in out_cfg) == (family == "qwen3")  # Qwen2Config has no such key
    hf, info = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32,
                                                       output_loading_info=True)
    assert type(hf).__name__ == src_cfg["architectures"][0]
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    # every tensor, biases and q_norm/k_norm included, is the source's bit for bit
    sd, src_sd = hf.state_dict(), src.state_dict()
    assert sd.keys() == src_sd.keys()
    assert all(torch.equal(sd[k], src_sd[k]) for k in sd)
    again = M.LLaMA.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        ref = ours(ids(11, 1))
        torch.testing.assert_close(hf.eval()(ids(11, 1)).logits, ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(again(ids(11, 1)), ref)
    # bf16: the biases and gains are written as BF16 and read by transformers as the same numbers
    b16 = M.LLaMA.from_pretrained(tmp_path / "src", dtype=torch.bfloat16)
    b16.save_pretrained(tmp_path / "out16")
    hf16 = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out16", dtype=torch.bfloat16)
    assert all(torch.equal(hf16.state_dict()[k], v) for k, v in b16.state_dict().items())


# -----------------------------------------------------------------------------
# the loader still asserts every key and shape; what the model does not do is refused in one line

def test_loader_asserts_every_qwen_key_and_shape(tmp_path):
    make_qwen(tmp_path / "q3", "qwen3", dict(num_key_value_heads=2, head_dim=16))
    make_qwen(tmp_path / "q2", "qwen2", dict(num_key_value_heads=2))
    for d in ("q3", "q2"):
        M.LLaMA.from_pretrained(tmp_path / d)  # intact: loads
    st = lambda d: tmp_path / d / "model.safetensors"  # noqa: E731
    for d, key, change, needle in (
            ("q3", "model.layers.1.self_attn.k_norm.weight", None, "k_norm.weight missing"),
            ("q3", "model.layers.0.self_attn.q_norm.weight", torch.ones(8),
             "q_norm.weight (8,) (expected (16,))"),
            ("q2", "model.layers.1.self_attn.v_proj.bias", None, "v_proj.bias missing"),
            ("q2", "model.layers.0.self_attn.o_proj.bias", torch.zeros(32),
             "o_proj.bias unexpected"),
            ("q2", "model.layers.0.self_attn.q_proj.bias", torch.zeros(16),
             "q_proj.bias (16,) (expected (32,))")):
        sd = H.read_safetensors(st(d))
        keep = {k: v.clone() for k, v in sd.items()}
        if change is None:
            sd.pop(key)
        else:
            sd[key] = change
        H.write_safetensors(st(d), sd)
        with pytest.raises(M.ModelError) as e:
            M.LLaMA.from_pretrained(tmp_path / d)
        assert needle in str(e.value), str(e.value)
        H.write_safetensors(st(d), keep)
    # a Qwen2 folder relabelled qwen3 (or llama) is refused: its biases / missing norms do not match
    for mt, needle in (("qwen3", "k_norm.weight missing (18 problem(s))"),
                       ("llama", "k_proj.bias unexpected (6 problem(s))")):
        edit_config(tmp_path / "q2", model_type=mt)
        with pytest.raises(M.ModelError) as e:
            M.LLaMA.from_pretrained(tmp_path / "q2")
        assert needle in str(e.value), str(e.value)


def test_refuses_what_it_does_not_do(tmp_path):
    make_qwen(tmp_path / "q3", "qwen3", dict(num_key_value_heads=2, head_dim=16))
    make_qwen(tmp_path / "q2", "qwen2", dict(num_key_value_heads=2))
    # loads: a window that no layer uses (every layer is below max_window_layers, or layer_types
    # says full attention), and Qwen2's attention_bias key, which transformers ignores
    window = dict(use_sliding_window=True, sliding_window=16)
    for d, changes in (("q3", dict(window, max_window_layers=2, layer_types=None)),
                       ("q3", dict(window, max_window_layers=0)),  # layer_types: all full
                       ("q2", dict(window, use_sliding_window=False, max_window_layers=0,
                                   layer_types=None)),
                       ("q2", dict(attention_bias=False))):
        with open(tmp_path / d / "config.json") as f:
            cfg = json.load(f)
        edit_config(tmp_path / d, **changes)
        ours = M.LLaMA.from_pretrained(tmp_path / d)
        assert ours.config.model_type == d.replace("q", "qwen"), changes
        with open(tmp_path / d / "config.json", "w") as f:
            json.dump(cfg, f)
    for d, changes, needle in (
            ("q3", dict(window, max_window_layers=1, layer_types=None),
             "layer 1 is 'sliding_attention' (1 of 2 layers)"),
            ("q2", dict(window, max_window_layers=0, layer_types=None),
             "layer 0 is 'sliding_attention' (2 of 2 layers)"),
            ("q2", dict(layer_types=["full_attention", "sliding_attention"]),
             "layer 1 is 'sliding_attention'"),
            ("q3", dict(layer_types=["full_attention"]), "layer_types must be a list of 2"),
            ("q3", dict(window, max_window_layers="1", layer_types=None),
             "max_window_layers must be an integer"),
            ("q3", dict(model_type="qwen3_moe"), "model_type 'qwen3_moe' is not"),
            ("q2", dict(model_type="qwen2_moe"), "model_type 'qwen2_moe' is not"),
            ("q3", dict(attention_bias=True), "attention_bias"),
            ("q3", dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}),
             "'yarn'")):
        with open(tmp_path / d / "config.json") as f:
            cfg = json.load(f)
        edit_config(tmp_path / d, **changes)
        with pytest.raises(M.ModelError) as e:
            M.LLaMA.from_pretrained(tmp_path / d)
        assert needle in str(e.value) and "config.json" in str(e.value), str(e.value)
        with open(tmp_path / d / "config.json", "w") as f:
            json.dump(cfg, f)
    # and on the command line: one line on stderr, exit code 2, no traceback
    edit_config(tmp_path / "q3", **window, max_window_layers=1, layer_types=None)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model.py"), "--model",
                        str(tmp_path / "q3")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "sliding_attention" in r.stderr
