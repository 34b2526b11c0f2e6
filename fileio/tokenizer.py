"""Tokenizer of a Hugging Face folder: a sentencepiece tokenizer.model (Llama 1/2, Mistral,
stories260K) or a tokenizer.json (Llama 3, SmolLM2) read with the `tokenizers` library. BOS/EOS from
config.json."""
import json
import os

from fileio.hf import ModelError


class Tokenizer:
    def __init__(self, path):
        path = str(path)
        cfg, tcfg = {}, {}
        for name, d in (("config.json", cfg), ("tokenizer_config.json", tcfg)):
            f = os.path.join(path, name)
            if os.path.exists(f):
                try:
                    with open(f, encoding="utf-8") as fh:
                        obj = json.load(fh)
                    assert isinstance(obj, dict)
                except (OSError, ValueError, AssertionError):
                    raise ModelError(f"{f}: not a readable JSON object")
                d.update(obj)
        which = ("tokenizer.json" if os.path.exists(os.path.join(path, "tokenizer.json"))
                 else "tokenizer.model")
        try:
            if os.path.exists(os.path.join(path, "tokenizer.json")):
                from tokenizers import Tokenizer as HFTokenizer
                self.kind, self.tok = "json", HFTokenizer.from_file(
                    os.path.join(path, "tokenizer.json"))
                self.vocab_size = self.tok.get_vocab_size()
            elif os.path.exists(os.path.join(path, "tokenizer.model")):
                import sentencepiece as spm
                self.kind, self.tok = "sp", spm.SentencePieceProcessor(
                    model_file=os.path.join(path, "tokenizer.model"))
                self.vocab_size = self.tok.get_piece_size()
            else:
                raise ModelError(f"{path}: no tokenizer.json or tokenizer.model")
        except ModelError:
            raise
        except Exception as e:  # the libraries raise their own types for a damaged file
            raise ModelError(f"{os.path.join(path, which)}: cannot read it ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120]})")
        self.bos_id = cfg.get("bos_token_id")
        eos = cfg.get("eos_token_id")
        self.eos_id = eos[0] if isinstance(eos, list) else eos
        self.eos_ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
        # sentencepiece Llamas prepend BOS unless the folder says not to; a tokenizer.json carries
        # its own rule in its post-processor (as transformers applies it with
        # add_special_tokens=True)
        self.add_bos = tcfg.get("add_bos_token", True) if self.kind == "sp" else None

    def encode(self, text, bos=True):
        """Token ids as transformers' tokenizer gives them (special tokens included when
        bos=True)."""
        if self.kind == "sp":
            ids = self.tok.encode(text)
            return ([self.bos_id] if bos and self.add_bos and self.bos_id is not None else []) + ids
        return self.tok.encode(text, add_special_tokens=bos).ids

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if self.kind == "sp":
            return self.tok.decode(ids)
        return self.tok.decode(ids, skip_special_tokens=True)
