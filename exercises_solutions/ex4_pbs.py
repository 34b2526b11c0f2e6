"""Reference solution of exercise 4 (see exercises/ex4_pbs.py for the task)."""
import torch


def whole_change(U, M_old, M_new):
    """D = U ⊙ M_old − U ⊙ M_new = R − Rev (docs/paper.md §5.1 "Later events"): +U where a kept
    weight is pruned now (R), −U where a pruned weight is revived (Rev), 0 elsewhere."""
    return U * M_old - U * M_new


def pbs_solve(D, A, M, H, s, lam):
    """docs/paper.md §5.1, row by row: (s²·A_K H_KK A_Kᵀ + λI) δ_iᵀ = s·A_K H_{K,:} D_iᵀ. D is
    non-zero on the pruned columns S and, at a later event, on the revived ones (which are in K):
    the right-hand side reads all of D_i."""
    m, n = D.shape
    r = A.shape[0]
    dB = torch.zeros(m, r, dtype=D.dtype)
    for i in range(m):
        K = M[i]  # kept input columns of row i (possibly none, possibly all)
        A_K = A[:, K]  # (r, |K|)
        G = s * s * A_K @ H[K][:, K] @ A_K.T + lam * torch.eye(r, dtype=D.dtype)
        rhs = s * A_K @ H[K] @ D[i]  # (r,)  H_{K,:} D_iᵀ
        dB[i] = torch.linalg.solve(G, rhs)
    return dB
