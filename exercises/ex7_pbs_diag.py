"""Exercise 7 (research) — the authors' PBS versus ours: which objective fits the fold?
(docs/paper.md §5.2, §5.3; xpert.pbs_diag, xpert.pbs_output)

The authors' public code (our `pbs="diag"`) solves, per output row i, with g_c the RMS activation of
input column c and Ũ = U ⊙ (1 − M) (the weights about to be pruned):

    min_δ  Σ_c g_c (ũ_ic + s·δ·a_c)² + λ‖δ‖²          (a_c = column c of A; κ = 1)

All rows share one r × r Gram matrix, so the whole ΔB comes from one solve:

    ΔB = −s·(Ũ D Aᵀ)(s²·A D Aᵀ + λI)⁻¹,   D = diag(g)

Implement:

  pbs_diag_solve(U, A, M, g, s, lam) -> ΔB (m × r), same dtype as U. No loop over rows (checked: on
      a 256-row layer the grader counts the lines of Python your function runs). Write it yourself:
      an answer that calls xpert.pbs_diag (or pbs_output) fails.

The checker verifies that every row of your ΔB is the minimiser of its own objective
(torch.linalg.lstsq on the weighted least-squares problem), then folds W ← (U + s·ΔB·A) ⊙ M on a
real down_proj at 50% sparsity and prints the output error of: no PBS, your `diag`, and §5.1's
`output` reading.
Research question: at which columns does the diag objective ask the adapter to act, and what does
the fold do to the adapter's contribution there? From that, predict whether `diag` can beat "no PBS"
after a hard fold, and what one would have to change (κ? the fold?) for it to help.

Check: python -m exercises.check 7          (or: python -m exercises.check 7 --file my_ex7.py)
"""


def pbs_diag_solve(U, A, M, g, s, lam):
    raise NotImplementedError("exercise 7: one shared r×r solve, "
                              "ΔB = −s·(Ũ D Aᵀ)(s²·A D Aᵀ + λI)⁻¹")
