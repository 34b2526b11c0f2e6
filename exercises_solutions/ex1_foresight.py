"""Reference solution of exercise 1 (see exercises/ex1_foresight.py for the task)."""
import torch


def foresight_bruteforce(X, U, consumer):
    """D[j, c] = ‖Z − Z^(j,c)‖²_F with Z = consumer(X Uᵀ) and Z^(j,c) the same with U[j, c] set to
    0. The consumer is a black box: it is called once per weight, on the changed layer output."""
    Z = consumer(X @ U.T)
    D = torch.zeros_like(U)
    for j in range(U.shape[0]):
        for c in range(U.shape[1]):
            V = U.clone()
            V[j, c] = 0
            D[j, c] = (Z - consumer(X @ V.T)).pow(2).sum()
    return D


def foresight_closed_form(X, U, U2):
    """Paper Eq. 2 (docs/paper.md §4): U[j,c]² · ‖X_c‖² · e_j with e_j = Σ_k U2[k, j]²."""
    col_energy = X.pow(2).sum(0)  # (n,)  ‖X_c‖²
    e = U2.pow(2).sum(0)  # (m,)  energy of column j of the consumer
    return U.pow(2) * col_energy[None, :] * e[:, None]
