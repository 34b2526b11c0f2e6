"""Exercise 5 — domain vs general calibration: how different are the masks? (docs/paper.md §7, the
paper's "masks shift with the domain" analysis; eval.py --mask-overlap; xpert.sequential_blocks)

Implement:

  pruned_iou(keep_a, keep_b) -> float
      keep_a, keep_b: bool tensors of the same shape, True = kept. The overlap of the PRUNED
      positions P = ~keep: |P_a ∩ P_b| / |P_a ∪ P_b| (as eval.py --mask-overlap reports it). If
      neither mask prunes anything, return 1.0 (the masks are identical).

  chance_iou(p) -> float
      The IoU two INDEPENDENT, uniformly random masks with a fraction p pruned have on a large
      matrix.
      Derive it: without it "an IoU of 0.6" means nothing. The grader holds it to 1e-7 of the exact
      value, so it must be a formula in p, not a simulation.

The checker compares pruned_iou with a brute-force count and chance_iou with an exact computation,
then calibrates Wanda masks (40%) of every projection of a small real LLaMA on legal text (licences)
and on general text (WikiText-2), prints the IoU per projection against chance, and what using the
"wrong" calibration costs on held-out legal tokens.

Check: python -m exercises.check 5          (or: python -m exercises.check 5 --file my_ex5.py)
"""


def pruned_iou(keep_a, keep_b):
    raise NotImplementedError("exercise 5: intersection over union of the pruned positions")


def chance_iou(p):
    raise NotImplementedError("exercise 5: expected IoU of two independent random masks")
