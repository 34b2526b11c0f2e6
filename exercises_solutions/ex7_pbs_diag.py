"""Reference solution of exercise 7 (see exercises/ex7_pbs_diag.py for the task)."""
import torch


def pbs_diag_solve(U, A, M, g, s, lam):
    """docs/paper.md §5.2 (κ = 1): ΔB = −s·(Ũ D Aᵀ)(s²·A D Aᵀ + λI)⁻¹, Ũ = U ⊙ (1 − M),
    D = diag(g)."""
    Ut = U * ~M
    AD = A * g[None, :]  # A D, (r, n)
    G = s * s * AD @ A.T + lam * torch.eye(A.shape[0], dtype=U.dtype)  # (r, r), symmetric
    return -s * torch.linalg.solve(G, (Ut @ AD.T).T).T  # (m, r)
