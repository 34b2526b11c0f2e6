"""Reference solution of exercise 8 (see exercises/ex8_consumers.py for the task)."""


def consumer_table(U, gamma_mlp, gamma_next, readers, n_head, n_kv):
    """docs/paper.md §4.2: e_j of the seven projections of a GQA block, on unmasked effective
    weights."""
    Uq, Uk, Uo = U["self_attn.q_proj"], U["self_attn.k_proj"], U["self_attn.o_proj"]
    hd = Uq.shape[0] // n_head
    rep = n_head // n_kv  # query heads per KV group: group g holds heads g·rep … g·rep + rep − 1
    q_rows = Uq.pow(2).sum(1).view(n_kv, rep, hd)  # ‖U_q[h·hd+t, :]‖², heads grouped by KV group
    k_rows = Uk.pow(2).sum(1).view(n_kv, 1, hd)  # ‖U_k[g·hd+t, :]‖²
    o_cols = Uo.pow(2).sum(0).view(n_kv, rep, hd)  # ‖U_o[:, h·hd+t]‖², heads grouped by KV group
    # k of the same group, same dim
    e = {"self_attn.q_proj": k_rows.expand(n_kv, rep, hd).reshape(-1),
         "self_attn.k_proj": q_rows.sum(1).reshape(-1),  # Σ over the query heads of the group
         "self_attn.v_proj": o_cols.sum(1).reshape(-1),  # o_proj columns of every head of the group
         "self_attn.o_proj": gamma_mlp.pow(2)
         * (U["mlp.gate_proj"].pow(2).sum(0) + U["mlp.up_proj"].pow(2).sum(0)),
         "mlp.down_proj": gamma_next.pow(2) * sum(R.pow(2).sum(0) for R in readers)}
    e["mlp.gate_proj"] = e["mlp.up_proj"] = U["mlp.down_proj"].pow(2).sum(0)  # down_proj column j
    return e
