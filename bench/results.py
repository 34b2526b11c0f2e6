"""
Every generated table of RESULTS.md and README.md, from the records in results/ alone (issue 26):

    python bench/results.py      # rewrite every <!-- results/...:start --> block, and the figure

| block | record | made by |
|---|---|---|
| results/grid.json | results/grid.json (legal, health) | python bench/grid.py |
| results/genre | results/grid.json (legal-cuad, health-pubmedqa) | bench/grid.py --domains ... |
| results/budget | results/grid.json (the +stepsN cells) | bench/grid.py --extra "--steps N" |
| results/default-runs.json | results/default-runs.json | python bench/default_runs.py |
| results/foresight-probe.json | results/foresight-probe.json | bench/foresight_probe.py --json |
| results/step-cost.json | results/step-cost.json | bench/step_cost.py --json |
| results/event-audit.json | results/event-audit.json | bench/event_audit.py --json |
| results/lm-eval | results/lm-eval-*.json | bench/lm_eval_tasks.py --out |
| README headline | results/default-runs.json, results/grid.json | the two above |

A record that is missing leaves its block as it is and says so.
"""
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench import default_runs, grid  # noqa: E402
from fileio.report import better, relative  # noqa: E402

RESULTS, README = os.path.join(HERE, "RESULTS.md"), os.path.join(HERE, "README.md")
GENRE = ("legal-cuad", "health-pubmedqa")
BUDGET_CELLS = ("lora", "wanda-lora", "xpert-eq2-early", "xpert-eq2-paper")
COLUMNS = default_runs.LABELS  # metric -> its column title


def load(name):
    path = os.path.join(HERE, "results", name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def mean(rs, metric, base=False):
    vals = [(r["base"] if base else r["metrics"]).get(metric) for r in rs]
    return None if None in vals or not vals else statistics.mean(vals)


def fmt(v):
    return "–" if v is None else f"{v:.3f}"


def genre_table(records, base_answers=None):
    """The in-genre experts against the dense base measured on the same windows, per sparsity."""
    rows = {}
    for r in records:
        if r["domain"] in GENRE and "base" in r:
            rows.setdefault((r["domain"], r["sparsity"], r["label"]), []).append(r)
    head = ["domain", "sparsity", "method", "seeds"] + list(COLUMNS.values()) + [
        "in-genre ppl, % of dense LoRA", "PubMedQA answers yes / no / maybe"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for d in GENRE:
        own = grid.BENCH_PPL[grid.DOMAINS[d].benchmarks[0]]  # the benchmark in the domain's genre
        keys = sorted((k for k in rows if k[0] == d), key=lambda k: (k[1], k[2] != "lora", k[2]))
        if not keys:
            continue
        base = rows[keys[0]]
        lines.append(f"| {d} | – | **dense base** (no training) | – | "
                     + " | ".join(fmt(mean(base, m, True)) for m in COLUMNS) + " | – | "
                     + (" / ".join(map(str, base_answers.values())) if base_answers and
                        "pubmedqa_acc" in base[0]["base"] else "–") + " |")
        for k in keys:
            rs = rows[k]
            cells = []
            for m in COLUMNS:
                v, b = mean(rs, m), mean(rs, m, True)
                bold = "**" if better(m, v, b) else ""
                cells.append(fmt(v) if v is None or b is None else f"{bold}{v:.3f}{bold}")
            rel = [r["relative_to_lora"].get(own) for r in rs]
            said = [r["metric_context"].get("pubmedqa_acc", {}).get("answers") for r in rs]
            cells.append("–" if None in rel else f"{100 * statistics.mean(rel):.1f}%")
            cells.append("; ".join(" / ".join(map(str, a.values())) for a in said if a) or "–")
            lines.append(f"| {d} | {k[1]:g} | {k[2]} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nBold: better than the dense base on that metric (same windows " \
        "and questions; PubMedQA: a fixed random 100 of the 500 official test questions). Each seed " \
        "draws its own document split, so the domain test column of the base row is the mean " \
        "over the seeds' test splits; the benchmarks are the same for every seed."


def budget_points(records):
    """{cell: [(steps, mean of the ppl ratios vs lora of that budget, domain ppl, record)]}."""
    pts = {}
    for r in records:
        label, _, tag = r["label"].partition("+")
        budget = re.fullmatch(r"(?:steps(\d+))?", tag)  # '' = the grid's pinned 24 steps
        if r["domain"] != "legal" or r["seed"] != 0 or label not in BUDGET_CELLS \
                or r["sparsity"] not in (0.0, 0.4) or budget is None:
            continue
        steps = int(budget[1] or 24)
        rel = [v for m, v in r["relative_to_lora"].items() if m.endswith("_ppl") and v is not None]
        pts.setdefault(label, []).append((steps, statistics.mean(rel) if len(rel) == 3 else None,
                                          r["metrics"]["domain_test_ppl"], r))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in pts.items()}


def budget_table(records, base):
    """The budget curve: legal, 40%, seed 0, one row per (method, steps)."""
    pts = budget_points(records)
    lines = ["| method | steps | domain test ppl | CUAD ppl | WikiText-2 ppl | mean of the ppl "
             "ratios (% of dense LoRA, same steps) | mask entries changed per event | training "
             "time | peak RSS | commit |", "|---" * 10 + "|"]
    for label in BUDGET_CELLS:
        for steps, rel, _, r in pts.get(label, []):
            changed = " / ".join(f"{c:,}" for c in r["changed_per_event"]) or "–"
            m = r["metrics"]
            lines.append(f"| {label} | {steps} | {fmt(m['domain_test_ppl'])} | "
                         f"{fmt(m.get('cuad_ppl'))} | {fmt(m.get('wikitext2_ppl'))} | "
                         f"{'–' if rel is None else f'{100 * rel:.1f}%'} | {changed} | "
                         f"{r['train_time_s']:.0f} s | {r['peak_memory_mb']:,} MB | "
                         f"{r['commit']} |")
    if base:
        lines.append(f"| dense base (no training) | 0 | {fmt(base['domain_test_ppl'])} | "
                     f"{fmt(base.get('cuad_ppl'))} | {fmt(base.get('wikitext2_ppl'))} | "
                     "– | – | – | – | – |")
    return "\n".join(lines)


def budget_figure(records, base, png=os.path.join(HERE, "docs", "figures", "budget.png")):
    """Two panels against steps: the domain test ppl (the dense base dashed) and the mean of the ppl
    ratios against dense LoRA of the same budget (the base's own ratio dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = budget_points(records)
    steps = sorted({x[0] for p in pts.values() for x in p})  # the budgets measured: the ticks
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (label, p) in enumerate(sorted(pts.items(), key=lambda kv: BUDGET_CELLS.index(kv[0]))):
        style = dict(marker="o", color=f"C{i}", label=label)  # one colour per method, both panels
        a.plot([x[0] for x in p], [x[2] for x in p], **style)
        if label != "lora":
            b.plot([x[0] for x in p if x[1]], [100 * x[1] for x in p if x[1]], **style)
    if base and "lora" in pts:
        a.axhline(base["domain_test_ppl"], ls="--", c="k", label="dense base")
        ratio = [(s, 100 * statistics.mean(relative(m, base[m], r["metrics"][m]) for m in
                  ("domain_test_ppl", "cuad_ppl", "wikitext2_ppl"))) for s, _, _, r in pts["lora"]]
        b.plot([s for s, _ in ratio], [v for _, v in ratio], "k--", label="dense base")
    for ax, title in ((a, "legal domain test ppl"), (b, "% of dense LoRA (mean of 3 ppl ratios)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.set_xlabel("training steps (× 4 × 256 tokens)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M, licence texts, 40% sparsity, seed 0 (results/grid.json)",
                 fontsize=9)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    return png


def probe_table(rec):
    names = list(dict.fromkeys(k.rsplit(" p=", 1)[0] for k in rec["summary"]))  # record order
    sps = list(dict.fromkeys(k.rsplit(" p=", 1)[1] for k in rec["summary"]))
    head = " | ".join(f"p = {p}: mean IoU vs Wanda on U | p = {p}: rel. error (geo-mean)"
                      for p in sps)
    lines = [f"| reading | {head} |", "|---" * (1 + 2 * len(sps)) + "|"]
    for n in names:
        cells = [f"{rec['summary'][f'{n} p={p}']['mean_iou_vs_wanda']:.4f} | "
                 f"{rec['summary'][f'{n} p={p}']['geomean_rel_err']:.5f}" for p in sps]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n`{rec['command']}` at {rec['commit']}: {rec['calibration']}; "
                               f"error on {rec['heldout']}; blocks {rec['blocks']}; "
                               f"{rec['seconds']:.0f} s, {rec['torch_threads']} thread(s).")


def step_table(rec):
    med, rss = rec["median_s"], rec["peak_rss_mb"]
    lines = ["| contender | median step | runs | peak RSS of the steps |", "|---" * 4 + "|"]
    for n, v in med.items():
        steps_peak = rss.get(n, {}).get("steps_peak")
        lines.append(f"| {n} | {v:.2f} s | " + " ".join(f"{t:.2f}" for t in rec["step_seconds"][n])
                     + f" | {'–' if steps_peak is None else f'{steps_peak:,.0f} MB'} |")
    return "\n".join(lines) + (
        f"\n\nmasked / plain = **{rec['masked_over_plain']:.2f}×**, masked / plain at dropout 0 = "
        f"{rec['masked_over_plain_d0']:.2f}× (`{rec['command']}` at {rec['commit']}, torch "
        f"{rec['torch']}, {rec['threads']} thread(s), load {rec['load_average_before']:.1f} "
        "before).")


def audit_table(rec):
    lines = ["| event | changed matrices | revived weights | no update | update on R only "
             "(before issue 21) | update on D = R − Rev (now) | R only worse than no update | "
             "D worse than no update | event vs recomputation (max rel.) |", "|---" * 9 + "|"]
    for ev in (e for e in rec["events"] if e["rows"]):
        rows = ev["rows"]
        total = {k: sum(r[k] for r in rows) for k in ("revived", "none", "r_only", "event")}
        lines.append(f"| {ev['event']} | {len(rows)} | {total['revived']} | {total['none']:.4f} | "
                     f"{total['r_only']:.4f} | {total['event']:.4f} | "
                     f"{sum(r['r_only'] > r['none'] for r in rows)} of {len(rows)} | "
                     f"{sum(r['event'] > r['none'] for r in rows)} of {len(rows)} | "
                     f"{max(r['recomputed'] for r in rows):.1e} |")
    return "\n".join(lines) + f"\n\n`{rec['command']}`, update `{rec['update']}`."


def lm_eval_table(recs):
    """lm-eval against eval.py on the same folders, tokens and questions
    (results/lm-eval-*.json)."""
    lines = ["| folder | metric | lm-eval | eval.py | relative difference | context |",
             "|---" * 6 + "|"]
    for rec in recs:
        folder = os.path.basename(rec["model"].rstrip("/"))
        for m, v in rec["lm_eval"].items():
            e = rec["eval_py"][m]
            ctx = f"{e['windows']} windows of {e['seq_len']}" if "windows" in e else \
                f"{e.get('questions')} questions"
            lines.append(f"| {folder} | {m} | {v['value']:.6f} | {e['value']:.6f} | "
                         f"{(v['value'] - e['value']) / e['value']:+.1e} | {ctx} |")
    cmds = "; ".join(f"`{r['command']}` (lm-eval {r['lm_eval_version']}, {r['commit']})"
                     for r in recs)
    return "\n".join(lines) + f"\n\n{cmds}."


HEAD_COLS = [("legal", "domain_test_ppl", "legal domain ppl"), ("legal", "cuad_ppl", "CUAD ppl"),
             ("legal", "wikitext2_ppl", "WikiText-2 ppl (legal run)"),
             ("health", "domain_test_ppl", "health domain ppl"),
             ("health", "pubmedqa_abstracts_ppl", "PubMedQA abstracts ppl"),
             ("health", "pubmedqa_acc", "PubMedQA acc"),
             ("health", "pubmedqa_macro_f1", "macro-F1")]
HEAD_CELLS = [("lora", "dense LoRA, 24 steps (grid `lora`)"),
              ("xpert-eq2-early", "EfficientXpert, 24 steps, one event at 4% (grid)"),
              ("xpert-eq2-paper", "EfficientXpert, 24 steps, the paper's three events (grid)"),
              ("wanda-lora", "Wanda → LoRA (grid)"), ("lora-wanda", "LoRA → Wanda, the paper's "
                                                                  "baseline (grid)"),
              ("lora-sparsegpt", "LoRA → SparseGPT (grid)"),
              ("xpert-eq2-early-sparsegpt", "ForeSight + SparseGPT's update, a variant (grid)")]


def verdict(base, expert):
    """Which metrics the expert improves over the base, in words."""
    up = [COLUMNS[m] for m, v in expert.items() if better(m, v, base.get(m))]
    down = [COLUMNS[m] for m in expert if m in base and COLUMNS[m] not in up]
    return f"better than the dense base on {', '.join(up) or 'nothing'}; worse on " \
           f"{', '.join(down) or 'nothing'}"


def headline(runs, records):
    """README's table: base, base pruned by Wanda, the default expert and the 24-step grid cells
    (40%, seed 0), every number from a record; bold = better than the dense base."""
    by = {r["name"]: r for r in runs}
    base = {d: by[d]["base"] for d in ("legal", "health") if d in by}
    rows = [("**dense base** (no training)", base)]
    rows.append(("base pruned 40% by Wanda, no training (`eval.py --prune wanda`)",
                 {d: by[f"wanda-{d}"]["metrics"] for d in base if f"wanda-{d}" in by}))
    rows.append(("**EfficientXpert, the default** (`train.py --domain legal/health`: 48 steps, "
                 "one event at 4%)", {d: by[d]["metrics"] for d in base}))
    for label, title in HEAD_CELLS:
        cell = {d: next((r["metrics"] for r in records if r["domain"] == d and r["label"] == label
                         and r["seed"] == 0 and r["sparsity"] in (0.0, 0.4)), {}) for d in base}
        rows.append((title, cell))
    lines = ["| run | " + " | ".join(c[2] for c in HEAD_COLS) + " |",
             "|---" * (1 + len(HEAD_COLS)) + "|"]
    for title, vals in rows:
        cells = []
        for d, m, _ in HEAD_COLS:
            v, b = vals.get(d, {}).get(m), base.get(d, {}).get(m)
            good = vals is not base and better(m, v, b)
            cells.append("–" if v is None else (f"**{v:.3f}**" if good else f"{v:.3f}"))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    said = {d: by[d]["base_pubmedqa_answers"] for d in ("health",) if d in by}
    words = [f"- `python train.py --domain {d}`: {verdict(base[d], by[d]['metrics'])}."
             for d in base]
    if "health" in said and "health" in by:
        ctx = by["health"]["metric_context"]["pubmedqa_acc"]
        words.append(f"- PubMedQA answers ({ctx['questions']} questions, gold "
                     f"{' / '.join(f'{c} {n}' for c, n in ctx['gold'].items())}): the base said "
                     f"{' / '.join(f'{c} {n}' for c, n in said['health'].items())}, the expert "
                     f"{' / '.join(f'{c} {n}' for c, n in ctx['answers'].items())}; always 'yes' "
                     f"scores {ctx['majority_class']:.2f}.")
    return "\n".join(lines) + "\n\n" + "\n".join(words)


def records():
    """grid.json's cells, the default-run records, and the legal default run's dense base (the
    budget table's and figure's reference row), read once."""
    grid_records, runs = load("grid.json") or [], load("default-runs.json")
    base = next((r["base"] for r in runs or [] if r["name"] == "legal"), None)
    return grid_records, runs, base


def blocks(grid_records, runs, base):
    """[(file, block name, render())] for every block whose record exists; a missing record is
    printed and its block left as it is."""
    answers = next((r["base_pubmedqa_answers"] for r in runs or [] if r["name"] == "health"), None)
    out = [(RESULTS, "results/grid.json",
            lambda: grid.tables([r for r in grid_records if r["domain"] not in GENRE])),
           (RESULTS, "results/genre", lambda: genre_table(grid_records, answers))]
    out.append((RESULTS, "results/budget", lambda: budget_table(grid_records, base)))
    for name, render in (("default-runs.json", default_runs.table),
                         ("foresight-probe.json", probe_table), ("step-cost.json", step_table),
                         ("event-audit.json", audit_table)):
        rec = load(name)
        if rec is None:
            print(f"results/{name}: no record yet, its block is left as it is")
            continue
        out.append((RESULTS, f"results/{name}", lambda rec=rec, render=render: render(rec)))
    lm = [load(f) for f in sorted(os.listdir(os.path.join(HERE, "results")))
          if f.startswith("lm-eval-") and f.endswith(".json")]
    if lm:
        out.append((RESULTS, "results/lm-eval", lambda: lm_eval_table(lm)))
    if runs:
        out.append((README, "results/headline", lambda: headline(runs, grid_records)))
    return out


def main():
    grid_records, runs, base = records()
    for path, name, render in blocks(grid_records, runs, base):
        grid.replace_block(path, name, render())
        print(f"{os.path.relpath(path, HERE)}: {name} rewritten")
    if any(r["label"].partition("+")[2] for r in grid_records):
        print(f"figure: {os.path.relpath(budget_figure(grid_records, base), HERE)}")


if __name__ == "__main__":
    main()
