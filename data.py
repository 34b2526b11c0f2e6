"""
Text data for EfficientXpert: the domain table, document-level splits, batches and windows.

Top to bottom:
  1. domains   what a domain is: its corpus loader and its benchmark sets (one table, DOMAINS)
  2. splits    seeded shuffle of documents -> val / test / calib / train (never share a document),
               tokenized once and cached (fileio/token_cache.py)                       -> Splits
  3. batches   deterministic, resumable training batches; evaluation and calibration windows

The corpora and benchmark readers themselves live in corpora/. Every problem with the user's input
raises DataError with one line that says what is wrong; the CLIs print it and exit 2.
"""
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from corpora import DataError
from corpora import benchmarks as bench
from corpora.text import health_docs, legal_docs, load_corpus
from fileio import token_cache
from fileio.paths import assets_dir, cache_dir as cache_root

# -----------------------------------------------------------------------------
# 1. Domains: a corpus to adapt on, and the evaluation sets that measure it (docs/paper.md §7)


@dataclass(frozen=True)
class Domain:
    docs: object  # (assets folder) -> list of document strings
    benchmarks: tuple  # names understood by corpora.benchmarks.benchmarks; the first is in genre
    about: str


# legal and health ship on PyPI, so a bare clone trains; their genres (licences, phenotype
# definitions) are narrow. The -cuad / -pubmedqa rows train in the benchmarks' own genre, on the
# full assets minus every scored document, and are measured across genres too.
DOMAINS = {
    "legal": Domain(lambda _: legal_docs(), ("cuad", "wikitext2"),
                    "2,310 licence texts (ScanCode LicenseDB); CUAD contracts"),
    "health": Domain(lambda _: health_docs(), ("pubmedqa", "wikitext2"),
                     "HPO clinical definitions; PubMedQA"),
    "legal-cuad": Domain(bench.cuad_training_docs, ("cuad", "pubmedqa_abstracts", "wikitext2"),
                         "470 CUAD contracts the evaluation never scores (full assets)"),
    "health-pubmedqa": Domain(bench.pubmedqa_training_docs, ("pubmedqa", "cuad", "wikitext2"),
                              "PQA-L's 500 non-test abstracts + conclusions (full assets)"),
}

# A CPU run needs a few hundred thousand tokens, not the whole corpus: 2 M characters is ~0.5 M
# SmolLM2 tokens, tokenized in seconds (half of the health corpus, an eighth of the legal one).
DEFAULT_MAX_CHARS = 2_000_000
# Held-out fractions by tokens (train gets the rest, ~90%), with a floor for small corpora so
# val/test/calib stay usable (16 windows of 256 tokens). Calibration text never comes from a
# trained-on or tested document.
DEFAULT_FRACS = {"val": 0.025, "test": 0.05, "calib": 0.025}
DEFAULT_MIN_SPLIT_TOKENS = 4096
HELD_OUT = ("val", "test", "calib")
SPLITS = ("train",) + HELD_OUT


@dataclass(frozen=True)
class SplitOptions:
    """How prepare() picks and splits the documents; all of it is part of the cache key."""
    seed: int = 0  # the document shuffle
    max_chars: Optional[int] = DEFAULT_MAX_CHARS  # None = the whole corpus
    max_docs: Optional[int] = None
    fracs: Optional[dict] = None  # {split: fraction of all tokens}; None = DEFAULT_FRACS
    min_split_tokens: int = DEFAULT_MIN_SPLIT_TOKENS
    tokenizer_id: Optional[str] = None  # a name for the tokenizer, beside its vocabulary hash
    assets: Optional[str] = None  # where the in-genre domains read; None: paths.assets_dir()


def load_domain(domain=None, data_path=None, assets=None):
    """Documents of a named domain, or of a local corpus. Exact duplicates are dropped (first
    kept): the licence corpus holds 19 texts twice, which would make splits disjoint by document
    but not by content."""
    if data_path is not None:
        docs = load_corpus(data_path)
    elif domain in DOMAINS:
        docs = DOMAINS[domain].docs(assets or assets_dir())
    elif domain is None:
        raise DataError(f"no corpus: give a domain ({', '.join(DOMAINS)}) or a data path "
                        "(.txt, .jsonl, folder)")
    else:
        raise DataError(f"unknown domain {domain!r}: choose one of {', '.join(DOMAINS)}, "
                        "or give a data path")
    return list(dict.fromkeys(docs))


def benchmarks(data_dir, domain, max_chars=bench.BENCH_MAX_CHARS):
    """The evaluation sets of a domain found under data_dir -> (found, skipped); any other domain (a
    custom corpus, "general") gets WikiText-2 only."""
    names = DOMAINS[domain].benchmarks if domain in DOMAINS else ("wikitext2",)
    found, skipped = bench.benchmarks(data_dir, names, max_chars)
    if domain not in DOMAINS and domain != "general":
        what = f"domain {domain!r}" if domain else "custom corpus"
        skipped.insert(0, f"{what}: no domain benchmark "
                          "(the corpus' own test split gives the domain perplexity)")
    return found, skipped


# -----------------------------------------------------------------------------
# 2. Splits: shuffle documents, hand them out by tokens, tokenize once, cache

def select_docs(docs, seed, max_chars=DEFAULT_MAX_CHARS, max_docs=None):
    """Seeded shuffle, then cap at max_docs / max_chars (the last document cut to fit): the cap is
    a random sample, not the alphabetically first licences. -> (original indices, texts) in
    shuffled order."""
    order = np.random.default_rng(seed).permutation(len(docs))
    if max_docs is not None:
        order = order[:max_docs]
    idx, texts, total = [], [], 0
    for i in order.tolist():
        if max_chars is not None and total >= max_chars:
            break
        text = docs[i] if max_chars is None else docs[i][:max_chars - total]
        idx.append(i)
        texts.append(text)
        total += len(text)
    return idx, texts


def assign_splits(lengths, fracs=None, min_split_tokens=DEFAULT_MIN_SPLIT_TOKENS):
    """Walk the shuffled documents: val, test, calib take documents until each holds its fraction
    of all tokens (at least min_split_tokens), train takes the rest. Every split gets at least one
    document; the floors shrink so train keeps at least half.
    -> {split: [positions into lengths]}."""
    fracs = DEFAULT_FRACS if fracs is None else fracs
    n, total = len(lengths), int(sum(lengths))
    if n < len(SPLITS):
        raise DataError(f"corpus has {n} document(s); disjoint train/val/test/calib splits need "
                        f"at least {len(SPLITS)}")
    targets = {s: max(math.ceil(fracs[s] * total), min_split_tokens) for s in HELD_OUT}
    held = sum(targets.values())
    if held > total // 2:  # small corpus: the floors would eat the training data
        targets = {s: t * (total // 2) // held for s, t in targets.items()}
    out, pos = {}, 0
    for k, s in enumerate(HELD_OUT):
        out[s], got = [], 0
        last = n - (len(HELD_OUT) - k)  # leave one document for each later split and for train
        while pos < last and (not out[s] or got < targets[s]):
            out[s].append(pos)
            got += lengths[pos]
            pos += 1
    out["train"] = list(range(pos, n))
    return out


@dataclass
class Splits:
    """Token ids of the four splits (1-D numpy arrays, documents joined with a separator token)."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    calib: np.ndarray
    meta: dict = field(default_factory=dict)  # name, docs per split, separator, tokenizer, ...
    from_cache: bool = False

    @property
    def counts(self):
        return {s: int(len(getattr(self, s))) for s in SPLITS}

    def summary(self):
        """One line for the log: where the text came from and tokens (documents) per split."""
        m = self.meta
        parts = " | ".join(f"{s} {len(getattr(self, s)):,} ({len(m['docs'][s]):,} docs)"
                           for s in SPLITS)
        return (f"data {m['name']}: {m['n_docs']:,} of {m['n_docs_total']:,} docs, "
                f"{m['n_chars']:,} chars -> tokens {parts}{' [cached]' if self.from_cache else ''}")


def prepare(domain=None, data_path=None, tokenizer=None, options=SplitOptions(), cache_dir=None,
            progress=True):
    """Load a domain corpus (or data_path), split it by document, tokenize and cache -> Splits. The
    cache key hashes the selected texts, the tokenizer's vocabulary and the split options: nothing
    stale is reused."""
    if tokenizer is None:
        raise DataError("prepare() needs a tokenizer")
    o = options
    docs = load_domain(domain, data_path, o.assets)
    name = domain if data_path is None else f"{domain + ' ' if domain else ''}{data_path}"
    idx, texts = select_docs(docs, o.seed, o.max_chars, o.max_docs)
    if len(idx) < len(SPLITS):  # checked before the (slow) tokenization
        capped = (f" after max_docs={o.max_docs} / max_chars={o.max_chars}"
                  if len(idx) < len(docs) else "")
        raise DataError(f"corpus {name} has {len(idx)} document(s){capped}; disjoint "
                        f"train/val/test/calib splits need at least {len(SPLITS)}")
    sep = _separator(tokenizer)
    fp = token_cache.tokenizer_fingerprint(tokenizer)
    params = dict(corpus=token_cache.texts_hash(idx, texts),
                  tokenizer=f"{o.tokenizer_id}|{fp}" if o.tokenizer_id else fp, seed=o.seed,
                  fracs=dict(DEFAULT_FRACS if o.fracs is None else o.fracs),
                  min_split_tokens=o.min_split_tokens, sep=int(sep))
    safe_name = re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[-40:]
    folder = os.path.join(cache_dir or cache_root("data"), f"{safe_name}-{token_cache.key(params)}")
    cached = token_cache.load(folder, SPLITS)
    if cached is not None:
        return Splits(**cached[0], meta=cached[1], from_cache=True)

    ids = token_cache.encode_docs(tokenizer, texts, progress=progress, desc=f"tokenize {name}")
    arrays, parts, vmax = _split_arrays(ids, params, sep, getattr(tokenizer, "vocab_size", 0))
    meta = dict(params, name=name, dtype=arrays["train"].dtype.name,
                counts={s: len(a) for s, a in arrays.items()},
                docs={s: [idx[p] for p in parts[s]] for s in SPLITS},
                n_docs=len(idx), n_docs_total=len(docs), n_chars=sum(map(len, texts)),
                vocab_bound=vmax)
    token_cache.save(folder, arrays, meta)
    return Splits(**arrays, meta=meta, from_cache=False)


def _separator(tokenizer):
    """The token between documents: EOS, else BOS."""
    sep = tokenizer.eos_id if getattr(tokenizer, "eos_id", None) is not None \
        else getattr(tokenizer, "bos_id", None)
    if sep is None:
        raise DataError("tokenizer has neither an EOS nor a BOS id to separate documents with")
    return sep


def _split_arrays(ids, params, sep, vocab_size):
    """Token lists of the documents -> ({split: 1-D array}, {split: [document positions]}, the
    vocabulary bound that chose the dtype)."""
    lengths = [len(x) + 1 for x in ids]  # +1: the separator after each document
    parts = assign_splits(lengths, params["fracs"], params["min_split_tokens"])
    vmax = max([vocab_size or 0, int(sep) + 1] + [max(x) + 1 for x in ids if x])
    dtype = np.uint16 if vmax <= 65536 else np.uint32  # as nanoGPT: half the disk, small vocabs
    arrays = {s: np.concatenate([np.asarray(ids[p] + [sep], dtype=dtype) for p in parts[s]])
              for s in SPLITS}
    return arrays, parts, vmax


# -----------------------------------------------------------------------------
# 3. Batches and windows

def _as_numpy(tokens):
    return tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)


def batches(tokens, batch_size, seq_len, seed, start_step=0, name="train"):
    """Endless iterator of (x, y) LongTensors (batch_size, seq_len), y = x shifted by one, at
    random windows. Step k's windows depend only on (seed, k): --resume at step k sees exactly the
    batches an uninterrupted run would have. A split too short for one window raises DataError
    here, not at the first next()."""
    data = torch.from_numpy(_as_numpy(tokens).astype(np.int64))
    if len(data) < seq_len + 1:
        raise DataError(f"{name} split has {len(data):,} tokens; a training window of seq_len "
                        f"{seq_len} needs {seq_len + 1:,}")

    def stream(step):
        offsets = torch.arange(seq_len + 1)
        while True:
            rng = np.random.default_rng([seed, step])
            starts = rng.integers(0, len(data) - seq_len, size=batch_size)  # (B,)
            xy = data[torch.from_numpy(starts)[:, None] + offsets]  # (B, T+1)
            yield xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
            step += 1
    return stream(start_step)


def windows(tokens, seq_len, max_windows=None, name="test"):
    """Non-overlapping evaluation windows from the start of the stream
    -> LongTensor (N, seq_len)."""
    data = _as_numpy(tokens)
    n = len(data) // seq_len
    if n == 0:
        raise DataError(f"{name} split has {len(data):,} tokens; one evaluation window of seq_len "
                        f"{seq_len} needs {seq_len:,}")
    n = n if max_windows is None else min(n, max_windows)
    return torch.from_numpy(data[:n * seq_len].astype(np.int64)).view(n, seq_len)


def calib_windows(tokens, n, seq_len, seed, name="calib"):
    """n distinct, non-overlapping calibration windows at seeded random positions
    -> LongTensor (n, seq_len)."""
    data = _as_numpy(tokens)
    slots = len(data) // seq_len
    if n > slots:
        raise DataError(f"{name} split has {len(data):,} tokens = {slots} windows of seq_len "
                        f"{seq_len}; calibration needs {n} ({n * seq_len:,} tokens): use fewer "
                        "samples, a shorter seq_len or more text")
    rng = np.random.default_rng([seed, 0xCA11B])
    offset = int(rng.integers(0, len(data) - slots * seq_len + 1))  # edges not always at 0
    starts = offset + np.sort(rng.choice(slots, size=n, replace=False)) * seq_len
    return torch.from_numpy(data[starts[:, None] + np.arange(seq_len)].astype(np.int64))
