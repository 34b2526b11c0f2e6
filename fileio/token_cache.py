"""The token cache of data.prepare: every split's ids as a nanoGPT-style .bin file plus meta.json,
keyed by a hash of the texts, the tokenizer and the split parameters, written atomically."""
import hashlib
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from corpora import DataError

# bump when the on-disk layout or the stream format changes (2: vocab_bound in meta)
CACHE_FORMAT = 2


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
    with tqdm(total=sum(map(len, docs)), unit="char", unit_scale=True, desc=desc,
              disable=not progress, leave=False) as bar:
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


def key(params: dict) -> str:
    return hashlib.sha256(json.dumps(dict(params, format=CACHE_FORMAT),
                                     sort_keys=True).encode()).hexdigest()[:20]


def texts_hash(idx, texts) -> str:
    h = hashlib.sha256()
    for i, t in zip(idx, texts):
        h.update(f"{i}\0{len(t)}\0".encode())
        h.update(t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half of one
    except BaseException:
        if os.path.exists(tmp):  # a half-written file would keep a full disk full forever
            os.remove(tmp)
        raise


def save(folder, arrays, meta):
    """Write the splits, then meta.json (which marks the folder complete). A failed write (a full
    disk) is one DataError naming the file; what this call wrote is removed: nothing stays."""
    written = []

    def write_meta(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f)
    try:
        os.makedirs(folder, exist_ok=True)
        for s, a in arrays.items():
            written.append(os.path.join(folder, f"{s}.bin"))
            _atomic_write(written[-1], a.tofile)
        written.append(os.path.join(folder, "meta.json"))
        _atomic_write(written[-1], write_meta)
    except OSError as e:  # numpy's tofile says only "N requested and M written"
        where, d = written[-1] if written else folder, folder
        while not os.path.isdir(d) and os.path.dirname(d) != d:
            d = os.path.dirname(d)
        try:  # measured at the failure, before the clean-up below frees what this call wrote
            free = f"{shutil.disk_usage(d).free / 2**20:.1f} MB free there"
        except OSError:
            free = "free space unknown"
        if not os.path.exists(os.path.join(folder, "meta.json")):  # incomplete: of use to nobody
            for f in written[:-1]:
                if os.path.exists(f):
                    os.remove(f)
            try:
                os.rmdir(folder)
            except OSError:
                pass
        raise DataError(f"token cache: cannot write {where} ({e.strerror or e}; {free}); make room "
                        "or point XPERT_CACHE at a disk with space") from e


def load(folder, splits):
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        dtype = np.dtype(meta["dtype"])
        arrays = {s: np.fromfile(os.path.join(folder, f"{s}.bin"), dtype=dtype) for s in splits}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: rebuild
    if any(len(arrays[s]) != meta["counts"][s] for s in splits):
        return None
    if any(len(a) and int(a.max()) >= meta["vocab_bound"] for a in arrays.values()):
        # damaged in place (ids beyond the vocabulary): rebuild rather than index out of range
        return None
    return arrays, meta
