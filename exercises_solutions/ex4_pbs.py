"""Reference solution of exercise 4 (see exercises/ex4_pbs.py for the task)."""
import torch


def pbs_solve(U, A, M, H, s, lam):
    """PAPER.md §5.1, row by row: (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K H_{K,S} R_{i,S}ᵀ, R = U ⊙ (1 − M)."""
    m, n = U.shape
    r = A.shape[0]
    R = U * ~M
    dB = torch.zeros(m, r, dtype=U.dtype)
    for i in range(m):
        K, S = M[i], ~M[i]  # kept / pruned input columns of row i
        A_K = A[:, K]  # (r, |K|)
        G = s * s * A_K @ H[K][:, K] @ A_K.T + lam * torch.eye(r, dtype=U.dtype)
        rhs = s * A_K @ H[K][:, S] @ R[i, S]
        dB[i] = torch.linalg.solve(G, rhs)
    return dB
