"""Reference solution of exercise 5 (see exercises/ex5_iou.py for the task)."""


def pruned_iou(keep_a, keep_b):
    """|P_a ∩ P_b| / |P_a ∪ P_b| with P = ~keep (the pruned positions); 1.0 when nothing is
    pruned."""
    pa, pb = ~keep_a, ~keep_b
    union = (pa | pb).sum().item()
    return 1.0 if union == 0 else (pa & pb).sum().item() / union


def chance_iou(p):
    """Two independent random masks with a fraction p pruned: a position is pruned in both with
    probability p², in at least one with 2p − p², so IoU ≈ p² / (2p − p²) = p / (2 − p)."""
    return p / (2 - p)
