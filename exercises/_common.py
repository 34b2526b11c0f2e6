"""Shared helpers of the exercise checks: the real tiny model, real text, real layer inputs.

The model is stories260K (a real pretrained GQA LLaMA: d=64, 8 query / 4 KV heads, head_dim 8,
intermediate 172, 5 blocks). The copy committed in <repo>/assets/models/stories260K (MIT, see its
LICENSE and SOURCE.md) is loaded first, so grading works on a bare clone; then $XPERT_ASSETS or
<repo>/../shared/assets. Only if none is found do the checks fall back to a random tiny GQA LLaMA of
the same shape (3 blocks) fed with byte ids: every graded check still runs, only the printed numbers
lose their meaning. The general text (WikiText-2) comes from the assets (committed in assets/data),
with the built-in health text as its fallback."""
import functools
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from corpora import benchmarks as bench  # noqa: E402
from corpora.text import health_docs, legal_docs  # noqa: E402
from model import PROJECTIONS, LLaMA, LlamaConfig  # noqa: E402

try:  # the Tokenizer is moving out of model.py
    from fileio.tokenizer import Tokenizer  # noqa: E402
except ImportError:
    from model import Tokenizer  # noqa: E402

SEQ_LEN = 64  # tokens per calibration window (stories260K was trained on 256-token stories)


def assets_dir():
    """$XPERT_ASSETS, ../shared/assets, else the subsets committed in assets/ (fileio/paths.py's
    rule)."""
    from fileio.paths import assets_dir as find
    d = find()
    return os.path.normpath(d) if os.path.isdir(d) else None


# in the repo, with LICENSE + SOURCE.md
COMMITTED_MODEL = os.path.join(ROOT, "assets", "models", "stories260K")


def model_dir():
    """The stories260K folder: the committed copy first, then the shared assets; None if neither
    exists."""
    d = assets_dir()
    for path in (COMMITTED_MODEL, os.path.join(d, "models", "stories260K") if d else None):
        if path and os.path.exists(os.path.join(path, "model.safetensors")):
            return path
    return None


@functools.lru_cache(maxsize=None)
def tiny_model():
    """(model, encode, description). encode(text) -> list of token ids. Cached: load once per
    process."""
    path = model_dir()
    if path:
        model = LLaMA.from_pretrained(path)
        tok = Tokenizer(path)
        return (model.eval(), (lambda text: tok.encode(text, bos=True)),
                "stories260K (real pretrained weights)")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    model = LLaMA(cfg).eval()
    return model, (lambda text: [1] + list(text.encode("utf-8"))), \
        "a RANDOM tiny GQA LLaMA (stories260K not found in assets/models/ nor XPERT_ASSETS) fed " \
        "with byte ids"


@functools.lru_cache(maxsize=None)
def corpus_text(name, chars=40_000):
    """Real text: 'legal' (ScanCode licence texts), 'health' (HPO clinical definitions), both built
    into corpora/text.py; 'general' = WikiText-2 test from the assets (falls back to 'health'
    without them)."""
    if name == "legal":
        docs = legal_docs()
    elif name == "health":
        docs = health_docs()
    elif name == "general":
        d = assets_dir()
        if d and os.path.exists(os.path.join(d, bench.WIKITEXT2_FILE)):
            return bench.wikitext2_text(d)[:chars]
        return corpus_text("health", chars)
    else:
        raise ValueError(name)
    return "\n\n".join(docs[:400])[:chars]


@functools.lru_cache(maxsize=None)
def windows(name, n, offset=0):
    """n windows of SEQ_LEN token ids from corpus `name`, starting at window `offset` -> LongTensor
    (n, T)."""
    _, encode, _ = tiny_model()
    ids = torch.tensor(encode(corpus_text(name)), dtype=torch.long)
    need = (offset + n) * SEQ_LEN
    assert len(ids) >= need, f"corpus {name}: {len(ids)} tokens < {need}"
    return ids[offset * SEQ_LEN: need].view(n, SEQ_LEN)


@functools.lru_cache(maxsize=None)
def layer_inputs(name, n=8, offset=0):
    """{'model.layers.b.<proj>': X (tokens × n_in), float64} — the inputs every projection of the
    dense model sees on n windows of corpus `name` (one ordinary forward with hooks; not
    sequential)."""
    model, _, _ = tiny_model()
    out, handles = {}, []
    for b, block in enumerate(model.model.layers):
        for proj in PROJECTIONS:
            mod = block.get_submodule(proj)
            key = f"model.layers.{b}.{proj}"
            handles.append(mod.register_forward_hook(
                lambda m, inp, o, key=key: out.__setitem__(
                    key, inp[0].reshape(-1, inp[0].shape[-1]).double())))
    try:
        with torch.no_grad():
            model(windows(name, n, offset))
    finally:
        for h in handles:
            h.remove()
    return out


def weight(b, proj):
    """float64 copy of a projection's weight (m × n)."""
    model, _, _ = tiny_model()
    return model.model.layers[b].get_submodule(proj).weight.detach().double().clone()


def rel_output_error(W_new, W, X):
    """‖(W_new − W) Xᵀ‖² / ‖W Xᵀ‖²: relative squared error of the layer's output on X."""
    return ((W_new - W) @ X.T).pow(2).sum().item() / (W @ X.T).pow(2).sum().item()
