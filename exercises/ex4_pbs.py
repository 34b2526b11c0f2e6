"""Exercise 4 — Partial Brain Surgeon: when does the adapter have enough freedom, and what must it
make up for at a later event? (docs/paper.md §5, §5.1 incl. "Later events"; xpert.pbs_output,
xpert.prune_event)

A prune event chooses a new keep-mask M and folds the adapter: W ← (U + s·ΔB·A) ⊙ M, U = W + s·B·A
the unmasked effective weight. Before the fold the network computed U ⊙ M_old (M_old = 1 at the
first event), after it (U + s·ΔB·A) ⊙ M. The fold therefore changes the layer by the whole change

    D = U ⊙ M_old − U ⊙ M        (at the first event D = R = U ⊙ (1 − M), the weights pruned now)

and PBS (our reading, §5.1) changes only the adapter's B (A fixed) so that the KEPT weights, through
the adapter, make up for D on the calibration inputs X:

    min_ΔB ‖ (s·(ΔB A) ⊙ M − D) Xᵀ ‖²_F + λ‖ΔB‖²_F

Every output row i separates into an r × r ridge system (K = kept columns of row i under M, H = XᵀX,
A_K = the columns K of A). Derive it from the objective; it has the form

    (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K · (something built from H and row i of D)

Implement:

  whole_change(U, M_old, M_new) -> D (m × n), same dtype as U: what the fold takes away from the
      layer.
      U the unmasked effective weight, M_old the mask the network computed with until now, M_new the
      new one (bool, True = keep).

  pbs_solve(D, A, M, H, s, lam) -> ΔB (m × r), same dtype as D.
      D (m × n) the change to make up for, A (r × n), M (m × n) the new bool keep-mask, H (n × n), s
      the LoRA scale α/r, lam = λ (absolute, added as λ·I). A loop over rows is fine;
      torch.linalg.solve for the r × r system. Rows do not all prune the same number of weights:
      some prune none, some all. Write it yourself: an answer that calls xpert.pbs_output (or
      xpert.MaskChange.whole_change) fails.

The checker compares every row with torch.linalg.lstsq on the least-squares problem the system comes
from (first events and later ones), then on a real down_proj of a small LLaMA at 50% sparsity
measures the layer's output error after the fold for r = 8 and r = 64 (A_64 extends A_8), and at a
later event compares making up for R alone with making up for the whole change D. Questions: per row
there are r unknowns against |S_i| pruned weights — predict the ordering of the errors before you
run it, and explain why the ordering on the calibration tokens is guaranteed while the held-out one
is not. At the later event: where is D non-zero, and why can compensating R alone be worse than no
PBS at all?

Check: python -m exercises.check 4          (or: python -m exercises.check 4 --file my_ex4.py)
"""


def whole_change(U, M_old, M_new):
    raise NotImplementedError("exercise 4: what the fold takes away from the layer")


def pbs_solve(D, A, M, H, s, lam):
    raise NotImplementedError("exercise 4: one r×r ridge solve per output row")
