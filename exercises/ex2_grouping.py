"""Exercise 2 — when can the propagation factor change a mask? (docs/paper.md §4.3;
xpert.select_mask, xpert.consumer_energy, xpert.foresight_scores)

ForeSight's score is s[j, c] = U[j, c]² · ‖X_c‖² · e_j: Wanda's score squared, times a
per-OUTPUT-row factor e_j (how strongly the consumers read output j). The mask keeps the top (1 − p)
of each group.

Implement:

  group_mask(scores, sparsity, group) -> bool tensor (m × n), True = keep. Prune the floor(p·size)
      LOWEST scores of every group, exactly that many whatever the values:
        'out'   : every output row (size n),
        'in'    : every input column (size m),
        'layer' : the whole matrix (size m·n).
      Use floor(p·size + 1e-6) (0.7·90 is 62.99999999999999 in floating point). Scores can tie (a
      real prune event scores exactly 0 wherever U = 0): the count must still be exact, any choice
      among tied scores is accepted. Write it yourself (argsort / topk); an answer that calls
      xpert.select_mask fails. An unknown group raises ValueError.

  groups_where_e_is_inert() -> set of group names in which multiplying the scores by ANY positive
      per-row factor e_j can never change the mask of a single prune event. Argue it on paper first;
      the checker then tests your claim on the real weights of a small LLaMA.

Check: python -m exercises.check 2          (or: python -m exercises.check 2 --file my_ex2.py)
"""


def group_mask(scores, sparsity, group):
    raise NotImplementedError("exercise 2: per-group lowest-score pruning")


def groups_where_e_is_inert():
    raise NotImplementedError("exercise 2: in which groups is e_j a constant factor?")
