"""Exercise 8 — the consumer table: how strongly is output j of each projection read? (docs/paper.md
§4.2, §4.4 (1); xpert.consumer_energy)

ForeSight multiplies Wanda² by e_j, the energy with which the CONSUMERS of output j read it
(docs/paper.md §4, §4.1: zeroing U[j, c] changes the consumer's output Z by U[j, c]·X_c ⊗ (the
consumer's read of output j), whose squared norm is U[j, c]²·‖X_c‖²·e_j). In a LLaMA block each of
the seven projections has its own consumer: read the table in docs/paper.md §4.2. Every consumer is
taken linearised: softmax, SwiGLU's other factor and RMSNorm's 1/rms are held fixed; the norm gains
γ are not. The block uses grouped-query attention (GQA): n_head query heads share n_kv < n_head
key/value heads. Query head h belongs to KV group g(h); the heads of one group are consecutive, as
model.py's repeat_kv lays them out.

Implement:

  consumer_table(U, gamma_mlp, gamma_next, readers, n_head, n_kv) -> {proj: e (m,)}, float64, one
      entry per output of each of the seven projections, keyed like model.PROJECTIONS
      ('self_attn.q_proj', ..., 'mlp.down_proj').
      U           {proj: float64 weight}: the block's seven UNMASKED effective weights U = W + s·B·A
                  (docs/paper.md §4.4 (1); plain W for a layer without adapter). Shapes (d = hidden
                  size, hd = head_dim = U['self_attn.q_proj'].shape[0] // n_head, i = intermediate
                  size):
                  q (n_head·hd × d), k and v (n_kv·hd × d), o (d × n_head·hd), gate and up (i × d),
                  down (d × i). Row h·hd + t of q is dimension t of query head h (likewise for k,
                  v).
      gamma_mlp   (d,) the gain of this block's post_attention_layernorm (in front of gate and up)
      gamma_next  (d,) the gain of the norm in front of what reads the block's output: the next
                  block's input_layernorm, or the final norm after the last block
      readers     list of weights (k × d) that read the block's output through gamma_next: the next
                  block's q, k and v, or [lm_head] after the last block
      Loops over heads are fine. Write it yourself: an answer that calls xpert (consumer_energy,
      code_factors, ...) fails.

The checker compares every entry with a brute force: for every output j of every projection it moves
output j alone by 1 and measures the squared change of what its consumer computes. It does this on
random GQA blocks (several head layouts), then on every block of a small real LLaMA (8 query heads,
4 KV heads), where your table must also equal xpert.consumer_energy, and on a block of it with
adapters after a fold (W ⊙ M = W, B·A ≠ 0). Questions: why are q_proj's e_j
equal in pairs of heads? Which e_j change when the next block is pruned? And why must the table read
the unmasked U rather than (W + s·B·A) ⊙ M (docs/paper.md §4.4 (1))?

Check: python -m exercises.check 8          (or: python -m exercises.check 8 --file my_ex8.py)
"""


def consumer_table(U, gamma_mlp, gamma_next, readers, n_head, n_kv):
    raise NotImplementedError("exercise 8: e_j of the seven projections (docs/paper.md §4.2)")
