"""Exercise 1 — where does the ForeSight score come from? (PAPER.md §4, §4.1; xpert.foresight_scores)

A layer U (m × n) feeds a consumer U2 (k × m); ignoring the non-linearity in between, the consumer's
output on the calibration inputs X (N × n) is Z = X Uᵀ U2ᵀ (N × k).

Implement both functions below (float64 tensors in, float64 tensor (m × n) out):

  foresight_bruteforce(X, U, U2): for every single weight U[j, c], set it (alone) to zero, recompute
      the consumer output and return D[j, c] = ‖Z − Z^(j,c)‖²_F. Plain loops are fine (and intended).
  foresight_closed_form(X, U, U2): the same matrix without any loop, from paper Eq. 2 in PyTorch
      layout: s[j, c] = U[j, c]² · ‖X_c‖² · e_j. Which norm of U2 is e_j — a row or a column?

Check: python -m exercises.check 1
"""


def foresight_bruteforce(X, U, U2):
    raise NotImplementedError("exercise 1: zero each U[j, c] in turn and measure ‖ΔZ‖²_F")


def foresight_closed_form(X, U, U2):
    raise NotImplementedError("exercise 1: U² · ‖X_c‖² · e_j, no loops")
