"""One place each for where things live and for the device/dtype rule."""
import os

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(*parts):
    """$XPERT_CACHE or ~/.cache/efficientxpert: converted models and token caches."""
    root = (os.environ.get("XPERT_CACHE")
            or os.path.join(os.path.expanduser("~"), ".cache", "efficientxpert"))
    return os.path.join(root, *parts)


def assets_dir():
    """The benchmark assets: $XPERT_ASSETS, else ../shared/assets beside the repo (the full sets),
    else the small evaluation subsets committed in assets/ (what the default run scores; see
    assets/README.md)."""
    if os.environ.get("XPERT_ASSETS"):
        return os.environ["XPERT_ASSETS"]
    shared = os.path.normpath(os.path.join(REPO, "..", "shared", "assets"))
    return shared if os.path.isdir(shared) else os.path.join(REPO, "assets")


def tiny_model_dir():
    """stories260K (1 MB, MIT), committed in the repo: the model of the exercises and `--preset
    tiny`."""
    return os.path.join(REPO, "assets", "models", "stories260K")


def device_dtype(device="auto", dtype="auto"):
    """The rule every command uses: auto = CUDA when present, else CPU; bf16 on a GPU, fp32 on a
    CPU. Returns (device string, dtype name). Raises ValueError with a one-line reason."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:1, ...)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported (auto, cpu, cuda, cuda:1, ...)")
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device}: no such CUDA device here (use --device cpu)")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return device, dtype
