"""Exercise 6 — make the expert 2:4-sparse and measure what is lost (docs/paper.md §4.3 "N:M";
xpert.select_mask(nm=...), train.py --nm 2:4)

Sparse tensor cores (NVIDIA Ampere and later) skip zeros only in the 2:4 pattern: in every run of 4
consecutive inputs of a row, 2 weights are zero. Unstructured 50% may put its zeros anywhere in a
row.

Implement:

  nm_mask(scores, N, M) -> bool tensor (m × n), True = keep.
      In every run of M consecutive inputs of every row — columns k·M, k·M+1, …, k·M+M−1 — prune the
      N LOWEST scores (so 2:4 keeps 2 of every 4; 1:4 prunes 1 of every 4). If n is not a multiple
      of M, raise ValueError. Tied scores (a group [0, 0, 0, 1]) still lose exactly N; write the
      selection yourself (an answer that calls xpert.select_mask fails).

The checker verifies the exact pattern, checks by brute force over all C(M, N) choices that your
mask keeps the largest possible score in every group, and then on a real layer of a small LLaMA
measures how much Wanda score and output accuracy 2:4 gives up against unstructured 50% per row.
Question: why can 2:4 never keep MORE score than unstructured 50% per row, and when would both be
equal?

Check: python -m exercises.check 6          (or: python -m exercises.check 6 --file my_ex6.py)
"""


def nm_mask(scores, N, M):
    raise NotImplementedError("exercise 6: N lowest of every M consecutive inputs")
