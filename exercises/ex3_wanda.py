"""Exercise 3 — Wanda in a few lines, and how it relates to ForeSight (docs/paper.md §4, §4.3, §6;
xpert.prune_oneshot's 'wanda' branch, xpert.foresight_scores, xpert.select_mask)

Implement:

  wanda_mask(W, X, sparsity) -> bool tensor (m × n), True = keep.
      W (m × n) the weight, X (N × n) the layer's calibration inputs (N tokens). Wanda scores every
      weight by |W[i, c]| · ‖X_c‖₂ (the L2 norm of input column c over the tokens) and prunes the
      floor(p·n + 1e-6) lowest scores of EVERY OUTPUT ROW (exactly that many per row, also when
      scores tie: a weight folded by an earlier event is exactly 0, and so is its score). Write the
      selection yourself: an answer that calls xpert (select_mask, foresight_scores, prune_oneshot)
      fails.

The checker compares your mask with an independent reference on random data, then on a real layer of
a small LLaMA compares it with ForeSight's masks (group 'out' and group 'layer') and prints the IoU.
Before you run it: predict the IoU with ForeSight 'out'. Why?

Check: python -m exercises.check 3          (or: python -m exercises.check 3 --file my_ex3.py)
"""


def wanda_mask(W, X, sparsity):
    raise NotImplementedError("exercise 3: |W| · ‖X_c‖₂, per output row")
