"""Exercise 1 — where does the ForeSight score come from? (docs/paper.md §4, §4.1;
xpert.foresight_scores)

A layer U (m × n) computes Y = X Uᵀ (N × m) on the calibration inputs X (N × n), and a consumer
reads Y. For the linear consumer of §4.1, U2 (k × m), the consumer's output is Z = Y U2ᵀ = X Uᵀ U2ᵀ
(N × k).

Implement both functions below (float64 tensors in, float64 tensor (m × n) out):

  foresight_bruteforce(X, U, consumer): `consumer` is a callable, Y (N × m) ↦ Z (N × k) — a black
      box, possibly non-linear (for the linear consumer it is `lambda Y: Y @ U2.T`). For every
      single weight U[j, c], set it (alone) to zero, recompute the consumer output and return
      D[j, c] = ‖Z − Z^(j,c)‖²_F. Plain loops are fine (and intended). The grader also passes
      non-linear consumers, for which no closed form holds: only a true brute force passes.
  foresight_closed_form(X, U, U2): the same matrix for the linear consumer U2 (k × m), without any
      loop, from paper Eq. 2 in PyTorch layout: s[j, c] = U[j, c]² · ‖X_c‖² · e_j. Which norm of U2
      is e_j — of a row or of a column? "No loop" is checked: on a 64×96 layer the grader counts the
      lines of Python your function runs (a loop over weights, rows or columns runs one per step),
      and a closed form that calls your brute force fails.

Write both yourself: an answer that calls xpert (foresight_scores, consumer_energy, ...) fails.

Check: python -m exercises.check 1          (or: python -m exercises.check 1 --file my_ex1.py)
"""


def foresight_bruteforce(X, U, consumer):
    raise NotImplementedError("exercise 1: zero each U[j, c] in turn, call the consumer, measure "
                              "‖ΔZ‖²_F")


def foresight_closed_form(X, U, U2):
    raise NotImplementedError("exercise 1: U² · ‖X_c‖² · e_j, no loops")
