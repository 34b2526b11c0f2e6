"""Reference solution of exercise 3 (see exercises/ex3_wanda.py for the task)."""
import math

import torch


def wanda_mask(W, X, sparsity):
    """Wanda (Sun et al. 2023): score |W[i, c]| · ‖X_c‖₂, prune the floor(p·n) lowest of every
    output row."""
    score = W.abs() * X.pow(2).sum(0).sqrt()[None, :]
    k = int(math.floor(sparsity * W.shape[1] + 1e-6))
    idx = score.argsort(dim=1)[:, :k]
    return torch.ones(W.shape, dtype=torch.bool).scatter_(1, idx, False)
