"""Hugging Face model folders, read and written by hand: config.json checks, safetensors (single or
sharded) and pytorch_model.bin, and an atomic folder publish. model.py calls these; nothing here is
the model or the method."""
import json
import math
import os
import shutil
import tempfile
import zipfile

import torch


class ModelError(Exception):
    """A problem with a model folder, reported to the user as one line (no traceback)."""


# LLaMA maths; what differs (a Mistral's window refused, Qwen's biases / q,k norms) is in model.py
LLAMA_COMPATIBLE = ("llama", "mistral", "qwen2", "qwen3")
QWEN = ("qwen2", "qwen3")  # their sliding-window layers are refused (check_qwen_layers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "generation_config.json")


# -----------------------------------------------------------------------------
# config.json: what a hand-written LLaMA can honestly load, refused in one line otherwise

def read_config_dict(path) -> dict:
    """config.json of a LLaMA-compatible folder, normalised (rope_parameters ->
    rope_theta/rope_scaling)."""
    if not os.path.isdir(path):
        raise ModelError(f"model folder not found: {path}")
    cf = os.path.join(path, "config.json")
    if not os.path.exists(cf):
        raise ModelError(f"{path}: no config.json (is this a Hugging Face model folder?)")
    try:
        with open(cf, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{cf}: not valid JSON ({e})")
    except OSError as e:
        raise ModelError(f"{cf}: cannot read it ({e.strerror})")
    if not isinstance(d, dict):
        raise ModelError(f"{cf}: not a JSON object")
    return check_config(d, cf)


def check_config(d, where="config.json") -> dict:
    mt = d.get("model_type")
    if mt not in LLAMA_COMPATIBLE:
        raise ModelError(f"{where}: model_type {mt!r} is not LLaMA-compatible (supported: "
                         f"{', '.join(LLAMA_COMPATIBLE)})")
    if (d.get("attention_bias") and mt != "qwen2") or d.get("mlp_bias"):  # Qwen2 ignores the key
        raise ModelError(f"{where}: attention_bias/mlp_bias are not supported "
                         "(the only biases supported are Qwen2's on q/k/v)")
    if d.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{where}: hidden_act {d['hidden_act']!r} is not supported (LLaMA uses "
                         "silu)")
    d = dict(d)
    # transformers >= 5 writes rope_theta and the scaling dict together
    rp = d.pop("rope_parameters", None)
    if isinstance(rp, dict):
        d.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
        if rp.get("rope_type", rp.get("type", "default")) != "default":
            d.setdefault("rope_scaling", rp)
    for k in ("rope_theta", "rms_norm_eps"):
        if k in d and (not isinstance(d[k], (int, float)) or isinstance(d[k], bool)
                       or not math.isfinite(d[k]) or d[k] <= 0):
            raise ModelError(f"{where}: {k} must be a positive number, got {d[k]!r}")
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
        if d.get(k) is not None and (not isinstance(d[k], int) or isinstance(d[k], bool)
                                     or d[k] < 1):
            raise ModelError(f"{where}: {k} must be a positive integer, got {d[k]!r}")
    if mt in QWEN:
        check_qwen_layers(d, where)
        d.pop("sliding_window", None)  # no layer uses it (checked): not the Mistral check below
    if mt == "qwen3":
        d.setdefault("head_dim", 128)  # transformers' Qwen3Config default, not hidden // heads
    rs = d.get("rope_scaling")
    if rs is not None and not isinstance(rs, dict):
        raise ModelError(f"{where}: rope_scaling must be an object or null")
    kind = None if rs is None else rs.get("rope_type", rs.get("type"))
    if rs is not None and kind not in ("llama3", "linear", "default"):
        raise ModelError(f"{where}: rope_scaling type {kind!r} is not supported (llama3, linear)")
    need = {"llama3": ("factor", "low_freq_factor", "high_freq_factor",
                       "original_max_position_embeddings"),
            "linear": ("factor",)}.get(kind, ())
    if any(k not in rs for k in need):
        raise ModelError(f"{where}: rope_scaling of type {kind} needs "
                         f"{', '.join(k for k in need if k not in rs)}")
    check_config_types(d, rs, need, where)
    # mistral: attention limited to a window, which this model does not do
    sw = d.get("sliding_window")
    if (sw is not None and d.get("use_sliding_window", True)
            and sw < d.get("max_position_embeddings", 2048)):
        raise ModelError(f"{where}: sliding_window {sw} < max_position_embeddings "
                         f"{d.get('max_position_embeddings')} is not supported (this LLaMA attends "
                         "to the whole context)")
    return d


def check_qwen_layers(d, where):
    """ModelError unless every layer of a Qwen2/3 attends to the whole context. transformers' rule:
    the kind of layer i is layer_types[i] when given, else sliding from max_window_layers on if
    use_sliding_window (and a sliding_window is set)."""
    n, types = d.get("num_hidden_layers", 32), d.get("layer_types")
    if types is None:
        window = bool(d.get("use_sliding_window")) and d.get("sliding_window") is not None
        first = d.get("max_window_layers", 28)
        if window and (not isinstance(first, int) or isinstance(first, bool)):
            raise ModelError(f"{where}: max_window_layers must be an integer, got {first!r}")
        types = ["sliding_attention" if window and i >= first else "full_attention"
                 for i in range(n)]
    if not isinstance(types, list) or len(types) != n:
        raise ModelError(f"{where}: layer_types must be a list of {n} layer kinds (one per layer)")
    bad = [i for i, t in enumerate(types) if t != "full_attention"]
    if bad:
        raise ModelError(f"{where}: layer {bad[0]} is {types[bad[0]]!r} ({len(bad)} of {n} "
                         "layers): only full_attention is supported (sliding windows are not)")


def _number(v, integer=False):
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
    return ok and not isinstance(v, bool)


def check_config_types(d, rs, need, where):
    """The values the maths uses must be JSON numbers of the right kind ("2" is a string, not a
    factor): a wrong type or range is one line here, not a TypeError, an OverflowError or a NaN
    forward later."""
    for k in need:  # a factor <= 0 divides frequencies by 0 or flips them: NaN or garbage at once
        if not _number(rs[k], k.startswith("original")) or rs[k] <= 0:
            raise ModelError(f"{where}: rope_scaling {k} must be a positive number, got {rs[k]!r}")
    sw = d.get("sliding_window")
    if sw is not None and (not _number(sw, True) or sw < 1):
        raise ModelError(f"{where}: sliding_window must be a positive integer or null, got {sw!r}")
    vocab = d.get("vocab_size")
    for k in ("bos_token_id", "eos_token_id"):
        ids = d.get(k)
        for i in ids if isinstance(ids, list) and k == "eos_token_id" else [ids]:
            if i is not None and (not _number(i, True) or not 0 <= i < (vocab or math.inf)):
                raise ModelError(f"{where}: {k} must be a token id in [0, vocab_size {vocab}) or "
                                 f"null, got {ids!r}")


# -----------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, raw little-endian bytes

ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# the safetensors package writes wider dtypes first (then by name): so do we
ST_ORDER = ("F32", "BF16", "F16")


def read_safetensors(file) -> dict:
    try:
        with open(file, "rb") as f:
            # (bytes,) no zero-fill
            buf = torch.empty(os.fstat(f.fileno()).st_size, dtype=torch.uint8)
            f.readinto(buf.numpy())  # one read into one buffer: the tensors below are views of it
    except OSError as e:
        raise ModelError(f"{file}: cannot read ({e.strerror})")
    try:
        n = int.from_bytes(buf[:8].numpy().tobytes(), "little")
        assert 8 + n <= len(buf)
        header = json.loads(buf[8:8 + n].numpy().tobytes())
        assert isinstance(header, dict)
    except Exception:
        raise ModelError(f"{file}: not a safetensors file (bad header)")
    out, base = {}, 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in ST_DTYPES:
            raise ModelError(f"{file}: tensor {name} has dtype "
                             f"{info.get('dtype') if isinstance(info, dict) else None} (supported: "
                             "F32, F16, BF16)")
        dt, shape, offs = ST_DTYPES[info["dtype"]], info.get("shape"), info.get("data_offsets")
        ints = lambda v, k: isinstance(v, list) and len(v) == (k or len(v)) and all(  # noqa: E731
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
        if not ints(shape, None) or not ints(offs, 2) or offs[0] > offs[1]:
            raise ModelError(f"{file}: tensor {name}: shape and data_offsets must be non-negative "
                             "integers")
        a, b = offs
        if b - a != math.prod(shape) * dt.itemsize or base + b > len(buf):
            raise ModelError(f"{file}: tensor {name}: data does not fit its shape or the file "
                             "(truncated?)")
        raw = buf[base + a:base + b]  # (nbytes,) uint8 view
        # an unaligned tensor (legal, though no writer we know makes one): copy it
        if (base + a) % dt.itemsize:
            raw = raw.clone()
        out[name] = raw.view(dt).view(shape)
    return out


def write_safetensors(file, tensors: dict):
    names = {v: k for k, v in ST_DTYPES.items()}
    bad = [k for k, t in tensors.items() if t.dtype not in names]
    if bad:
        raise ModelError(f"{file}: cannot write {bad[0]} as safetensors: dtype "
                         f"{tensors[bad[0]].dtype} (supported: F32, F16, BF16)")
    order = sorted(tensors, key=lambda k: (ST_ORDER.index(names[tensors[k].dtype]), k))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k in order:
        t = tensors[k]
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned, as the format recommends
    with open(file, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for k in order:  # reshape(-1): a 0-dim tensor cannot be viewed as bytes directly
            f.write(tensors[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def read_bin(file) -> dict:
    # a zip archive (torch >= 1.6) is mapped, not read; the legacy format
    # (_use_new_zipfile_serialization=False) cannot be mapped and is read whole instead
    legacy = os.path.isfile(file) and not zipfile.is_zipfile(file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=not legacy)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ModelError(f"{file}: cannot read ({type(e).__name__}: {first})")


def load_state_dict(path) -> dict:
    """All tensors of a folder: model.safetensors, sharded safetensors, or (sharded)
    pytorch_model.bin."""
    for index, single, reader in (("model.safetensors.index.json", "model.safetensors",
                                   read_safetensors),
                                  ("pytorch_model.bin.index.json", "pytorch_model.bin", read_bin)):
        if os.path.exists(os.path.join(path, index)):
            try:
                with open(os.path.join(path, index), encoding="utf-8") as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
                raise ModelError(f"{os.path.join(path, index)}: not an index with a weight_map "
                                 f"({type(e).__name__})")
            sd = {}
            for name in files:
                if not isinstance(name, str) or not os.path.exists(os.path.join(path, name)):
                    raise ModelError(f"{path}: shard {name} named in {index} is missing")
                sd.update(reader(os.path.join(path, name)))
            return sd
        if os.path.exists(os.path.join(path, single)):
            return reader(os.path.join(path, single))
    raise ModelError(f"{path}: no weights file (model.safetensors, model.safetensors.index.json or "
                     "pytorch_model.bin)")


def check_state_dict(sd, expected, path):
    """ModelError unless sd has exactly the keys of expected ({key: shape}), each of that shape and
    finite."""
    bad = sorted(set(expected) ^ set(sd)) + [k for k in expected if k in sd
                                             and tuple(sd[k].shape) != expected[k]]
    if bad:
        k = bad[0]
        what = "missing" if k not in sd else "unexpected" if k not in expected else \
            f"{tuple(sd[k].shape)} (expected {expected[k]})"
        raise ModelError(f"{path}: checkpoint does not match config.json: {k} {what} ({len(bad)} "
                         "problem(s))")
    bad = next((k for k in expected if not torch.isfinite(sd[k]).all()), None)
    if bad:
        raise ModelError(f"{path}: the weights are not finite (NaN or inf in {bad}): a damaged "
                         "checkpoint?")


# -----------------------------------------------------------------------------
# atomic folders: written under a hidden temporary name beside the target, renamed into place when
# complete

def new_temp_dir(path):
    """An empty hidden folder beside `path` (same filesystem, so the final rename is atomic)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    # mkdtemp makes it private (0700); a model folder should be readable like any other
    os.chmod(tmp, 0o755)
    return tmp


def publish_dir(tmp, path, replace=True):
    """Rename the finished folder `tmp` to `path`. An existing `path` is moved aside first and
    deleted after, so `path` is always either the old complete folder or the new one. replace=False
    keeps an existing `path` (someone else finished first) and drops `tmp`."""
    if os.path.exists(path):
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = tempfile.mkdtemp(prefix=f".old-{os.path.basename(path)}-", dir=os.path.dirname(path))
        os.replace(path, os.path.join(old, "x"))
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, path)
        # lost a race: another process published `path` between our check and our rename
        except OSError:
            if not os.path.isdir(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)


def save_folder(path, config: dict, state_dict: dict, tokenizer_dir=None):
    """A Hugging Face folder (config.json, model.safetensors, tokenizer files), atomically."""
    path = os.path.abspath(path)
    tmp = new_temp_dir(path)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        write_safetensors(os.path.join(tmp, "model.safetensors"), state_dict)
        for name in TOKENIZER_FILES:
            if tokenizer_dir and os.path.exists(os.path.join(tokenizer_dir, name)):
                shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
