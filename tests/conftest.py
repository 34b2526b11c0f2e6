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
        pytest.skip("../shared/assets (or $XPERT_ASSETS) is absent: real benchmark assets not "
                    "available")
    return d


@pytest.fixture(scope="session")
def tiny_model_dir():
    """stories260K (a real pretrained GQA LLaMA, 1 MB, MIT), committed in assets/models: every clone
    has it."""
    return os.path.join(ROOT, "assets", "models", "stories260K")
