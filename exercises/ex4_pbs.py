"""Exercise 4 — Partial Brain Surgeon: when does the adapter have enough freedom? (PAPER.md §5, §5.1;
xpert.pbs_output, xpert.prune_event)

After a new mask M is chosen, folding loses R = U ⊙ (1 − M). PBS (our reading, §5.1) changes only the
adapter's B (A fixed) so that the KEPT weights, through the adapter, reproduce the lost output:

    min_ΔB ‖ (s·(ΔB A) ⊙ M − R) Xᵀ ‖²_F + λ‖ΔB‖²_F

Every output row i separates into an r × r ridge system (K = kept columns of row i, S = pruned ones,
H = XᵀX, A_K = the columns K of A):

    (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K H_{K,S} R_{i,S}ᵀ

Implement:

  pbs_solve(U, A, M, H, s, lam) -> ΔB (m × r), same dtype as U.
      U (m × n) effective weight, A (r × n), M (m × n) bool keep-mask, H (n × n), s the LoRA scale α/r,
      lam = λ (absolute, added as λ·I). A loop over rows is fine; torch.linalg.solve for the r × r system.
      Write it yourself: an answer that calls xpert.pbs_output fails.

The checker compares every row with torch.linalg.lstsq on the least-squares problem the system comes
from, then on a real down_proj of a small LLaMA at 50% sparsity measures the layer's output error after
the fold W ← (U + s·ΔB·A) ⊙ M for r = 8 and r = 64 (A_64 extends A_8). Question: per row there are r
unknowns against |S_i| pruned weights — predict the ordering of the errors before you run it, and
explain why the ordering on the calibration tokens is guaranteed while the held-out one is not.

Check: python -m exercises.check 4          (or: python -m exercises.check 4 --file my_ex4.py)
"""


def pbs_solve(U, A, M, H, s, lam):
    raise NotImplementedError("exercise 4: one r×r ridge solve per output row")
