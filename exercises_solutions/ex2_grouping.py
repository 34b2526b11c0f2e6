"""Reference solution of exercise 2 (see exercises/ex2_grouping.py for the task)."""
import math

import torch


def _n_pruned(size, p):
    return int(math.floor(p * size + 1e-6))


def group_mask(scores, sparsity, group):
    """Keep-mask pruning the floor(p·size) lowest scores of every group ('out' rows, 'in' columns,
    'layer')."""
    m, n = scores.shape
    keep = torch.ones(m, n, dtype=torch.bool)
    if group == "out":
        idx = scores.argsort(dim=1)[:, :_n_pruned(n, sparsity)]  # lowest first
        return keep.scatter_(1, idx, False)
    if group == "in":
        idx = scores.argsort(dim=0)[:_n_pruned(m, sparsity), :]
        return keep.scatter_(0, idx, False)
    if group == "layer":
        idx = scores.reshape(-1).argsort()[:_n_pruned(m * n, sparsity)]
        return keep.reshape(-1).scatter_(0, idx, False).reshape(m, n)
    raise ValueError(f"unknown group {group!r}")


def groups_where_e_is_inert():
    """Inside an output row j, e_j multiplies every score by the same positive number: the order
    inside the row, hence the mask, cannot change. In a column or the whole matrix, different rows
    meet and e_j reorders them."""
    return {"out"}
