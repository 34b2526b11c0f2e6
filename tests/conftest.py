"""Shared fixtures: where the real assets are, and a tiny real model folder for end-to-end runs."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def assets_dir():
    """../shared/assets beside the checkout, or $XPERT_ASSETS; None when absent."""
    d = os.environ.get("XPERT_ASSETS") or os.path.join(ROOT, "..", "shared", "assets")
    return d if os.path.isdir(d) else None


@pytest.fixture(scope="session")
def assets():
    d = assets_dir()
    if d is None:
        pytest.skip("../shared/assets (or $XPERT_ASSETS) is absent: real benchmark assets not available")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """stories260K (a real pretrained GQA LLaMA) when the assets exist; otherwise a random tiny GQA LLaMA
    with a byte-level BPE tokenizer trained here on the built-in legal text, so the end-to-end tests
    still run on a clone without ../shared."""
    d = assets_dir()
    if d is not None and os.path.isdir(os.path.join(d, "models", "stories260K")):
        return os.path.join(d, "models", "stories260K")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import data
    from model import LLaMA, LlamaConfig
    out = tmp_path_factory.mktemp("tiny-gqa")
    docs = data.load_domain("legal")[:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=384, special_tokens=["<unk>", "<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    m = LLaMA(cfg)
    tok.save(str(out / "tokenizer.json"))
    m.save_pretrained(str(out), tokenizer_dir=str(out))
    return str(out)
