"""
The results grid (docs/paper.md §6-7, issue 12): EfficientXpert's ForeSight readings against the
baselines, at 40% and 50%, on both domains, 2 seeds, every cell a real `train.py` run with the same
data, budget and seed.

    python bench/grid.py                  # every cell not yet in results/grid.json
                                            (hours on 2 CPU cores)
    python bench/grid.py --sparsities 0.4 --seeds 0 --domains legal \
        --cells lora,wanda-lora,xpert-eq2-early
    python bench/grid.py --list           # the cells and their exact commands, nothing run
    python bench/grid.py --table          # rewrite the tables in RESULTS.md from results/grid.json
    python bench/grid.py --cost --reps 1  # xpert vs lora training time and peak memory, interleaved

results/grid.json is the record: one entry per finished cell (its exact command, resolved config,
every metric, the metric relative to the dense `lora` run of the same domain, seed and budget,
measured sparsity, mask entries changed per event, wall time, peak memory, the commit that ran it),
no weights. A cell already in it is skipped, so the grid resumes across sessions and machines; a
cell killed mid-run resumes from its checkpoint under --out.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

# the repo root: train.py lives there
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from data import DOMAINS  # noqa: E402
from fileio.report import relative  # noqa: E402
from fileio.runs import resumable  # noqa: E402

RECORD = os.path.join(HERE, "results", "grid.json")
BENCH_PPL = {"cuad": "cuad_ppl", "pubmedqa": "pubmedqa_abstracts_ppl"}  # a domain's benchmark ppl
# pinned, so a later change of train.py's defaults keeps cells comparable
BUDGET = ["--steps", "24", "--lr", "0.0005"]
BASELINES = {"wanda-lora": [], "lora-wanda": [], "lora-sparsegpt": []}  # train.py --method <name>
# docs/paper.md §4.4: the three readings of ForeSight's propagation factor, as xpert variants
READINGS = {
    # Eq. 2 literally, equal share per output row (= Wanda^2 on U under `out`)
    "eq2": ["--foresight", "eq2"],
    "code": ["--foresight", "code"],  # (a) the authors' per-module factors
    # (b) bounded row allocation, rows within p ± 0.1
    "delta0.1": ["--foresight", "eq2", "--delta", "0.1"],
}
# docs/paper.md §3; early = one event after 1 step
SCHEDULES = {"paper": "0.33,0.67,1.0", "early": "0.04,1.0"}
# a measured variant: SparseGPT's full OBS update of the kept weights on ForeSight's mask
VARIANTS = {
    "xpert-eq2-early-sparsegpt": ["--events", SCHEDULES["early"], *READINGS["eq2"], "--pbs",
                                  "sparsegpt"],
}
# cells whose records stay in grid.json but leave the tables: the option they measured is gone
REMOVED = {"xpert-eq2-early-final-sparsegpt": "--final-update sparsegpt, a no-op in all 8 cells "
                                              "(RESULTS.md)"}


def cells(domains, sparsities, seeds, only=None, extra=()):
    """[(name, label, command args)] in the order they run: per sparsity, seed and domain the dense
    `lora` reference first, then the baselines, then every reading under both schedules, then the
    VARIANTS. extra: train.py options that override the pinned budget (e.g. --steps 48); they become
    part of the name and the label (xpert-eq2-early+steps48), and such a cell is compared only with
    a lora cell of the same extra."""
    # option order does not change the budget a tag names
    pairs = sorted(zip(extra[::2], extra[1::2]))
    tag = "+" + "".join(re.sub(r"[^\w.-]+", "", k.lstrip("-")) + re.sub(r"[^\w.-]+", "", v)
                        for k, v in pairs) if extra else ""
    pinned = [x for i in range(0, len(BUDGET), 2) if BUDGET[i] not in extra
              for x in BUDGET[i:i + 2]]
    out = []
    for sp in sparsities:
        for seed in seeds:
            for d in domains:
                common = ["--domain", d, "--seed", str(seed), *pinned, *extra]
                todo = [(f"{d}-lora{tag}-seed{seed}", "lora", ["--method", "lora", *common])]
                todo += [(f"{d}-{b}-s{sp:g}{tag}-seed{seed}", b,
                          ["--method", b, "--sparsity", str(sp), *common, *a])
                         for b, a in BASELINES.items()]
                todo += [(f"{d}-xpert-{r}-{s}-s{sp:g}{tag}-seed{seed}", f"xpert-{r}-{s}",
                          ["--method", "xpert", "--sparsity", str(sp), "--events", ev, *common, *a])
                         for r, a in READINGS.items() for s, ev in SCHEDULES.items()]
                todo += [(f"{d}-{v}-s{sp:g}{tag}-seed{seed}", v,
                          ["--method", "xpert", "--sparsity", str(sp), *common, *a])
                         for v, a in VARIANTS.items()]
                out += [(n, label + tag, a) for n, label, a in todo
                        if (only is None or label in only) and n not in {o[0] for o in out}]
    return out


def load_record():
    if not os.path.exists(RECORD):
        return []
    with open(RECORD) as f:
        return json.load(f)


def save_record(records):
    """Rewrite results/grid.json atomically, sorted, with every cell's relative numbers recomputed
    (a dense reference that lands after a pruned cell still fills that cell in)."""
    budget = lambda r: r["label"].partition("+")[2]  # noqa: E731  '' = the pinned BUDGET
    refs = {(r["domain"], r["seed"], budget(r)): r["metrics"] for r in records
            if r["label"].partition("+")[0] == "lora"}
    for r in records:
        ref = refs.get((r["domain"], r["seed"], budget(r)), {})
        r["relative_to_lora"] = {m: relative(m, v, ref.get(m)) for m, v in r["metrics"].items()}
    records.sort(key=lambda r: (r["sparsity"], r["domain"], r["label"], r["seed"]))
    os.makedirs(os.path.dirname(RECORD), exist_ok=True)
    with open(RECORD + ".tmp", "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    os.replace(RECORD + ".tmp", RECORD)


def head_commit():
    """The checkout's short commit, as every record names it."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def values(metrics):
    """run.json's {metric: {"value", split, ...}} -> {metric: value}."""
    return {k: v["value"] for k, v in metrics.items()}


def contexts(metrics):
    """run.json's {metric: {"value", split, ...}} -> {metric: what it was measured on}."""
    return {k: {x: y for x, y in v.items() if x != "value"} for k, v in metrics.items()}


def record_of(name, label, args, run_dir, commit):
    """One grid.json entry from a finished run folder's run.json."""
    with open(os.path.join(run_dir, "run.json")) as f:
        j = json.load(f)
    c = j["config"]
    return {"cell": name, "label": label, "domain": c["domain"], "method": c["method"],
            "sparsity": 0.0 if c["method"] == "lora" else c["sparsity"], "seed": c["seed"],
            "command": "python train.py " + " ".join(args), "commit": commit,
            "metrics": values(j["metrics"]), "metric_context": contexts(j["metrics"]),
            "base_domain_test_ppl": j["base"]["domain_test_ppl"]["value"],
            "base": values(j["base"]),  # every metric, same windows
            "measured_sparsity": j["sparsity"]["overall"],
            # prune events only
            "changed_per_event": [t["changed"] for t in j.get("timings", []) if "changed" in t],
            "wall_time_s": round(j["wall_time_s"], 1), "train_time_s": round(j["train_time_s"], 1),
            "peak_memory_mb": round(j["peak_memory_mb"]), "config": c}


def run_cells(todo, out_root):
    commit = head_commit()
    for i, (name, label, args) in enumerate(todo):
        records = load_record()
        if any(r["cell"] == name for r in records):
            print(f"[grid] {name}: in {os.path.relpath(RECORD, HERE)}", flush=True)
            continue
        out = os.path.join(out_root, name)
        if not os.path.exists(os.path.join(out, "run.json")):
            cmd = [sys.executable, os.path.join(HERE, "train.py"), *args, "--out", out]
            if resumable(out):
                cmd.append("--resume")  # a cell killed mid-run continues from its checkpoint
            elif os.path.exists(out + ".partial"):
                # killed before its first checkpoint: nothing to resume, start it again
                cmd.append("--overwrite")
            t = time.time()
            if subprocess.run(cmd, cwd=HERE).returncode != 0:
                raise SystemExit(f"error: cell {name} failed: {' '.join(cmd)}")
            print(f"[grid] {name}: ran in {time.time() - t:.0f}s ({i + 1}/{len(todo)})", flush=True)
        records = load_record()  # re-read: another grid process may have added cells meanwhile
        records = ([r for r in records if r["cell"] != name]
                   + [record_of(name, label, args, out, commit)])
        save_record(records)


def spread(vals, fmt="{:.3f}"):
    """mean ± half the range (with 2 seeds: the distance of each seed from the mean)."""
    m = statistics.mean(vals)
    return fmt.format(m) + (" ± " + fmt.format((max(vals) - min(vals)) / 2) if len(vals) > 1
                            else "")


def tables(records):
    """The markdown tables RESULTS.md shows, computed from grid.json alone."""
    rows = {}
    for r in records:
        if r["label"].partition("+")[0] not in REMOVED:
            rows.setdefault((r["domain"], r["sparsity"], r["label"]), []).append(r)
    bench = {d: BENCH_PPL[dom.benchmarks[0]] for d, dom in DOMAINS.items()}  # the in-genre one
    lines = ["| domain | sparsity | cell | seeds | domain test ppl (% of LoRA) | benchmark ppl (%) "
             "| WikiText-2 ppl (%) | mean of the ppl ratios | mask entries changed per event | "
             "base model's domain test ppl |", "|---" * 10 + "|"]
    means = {}
    for (d, sp, label), rs in sorted(
            rows.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "lora", kv[0][2])):
        def col(metric):
            vals = [r["metrics"][metric] for r in rs if metric in r["metrics"]]
            rels = [r["relative_to_lora"].get(metric) for r in rs]
            if not vals:
                return "–"
            return spread(vals) + (f" ({100 * statistics.mean(rels):.1f}%)" if None not in rels
                                   else "")
        ratios = [statistics.mean(v for m, v in r["relative_to_lora"].items()
                                  if m.endswith("_ppl")) for r in rs
                  if all(v is not None for v in r["relative_to_lora"].values())]
        mean = 100 * statistics.mean(ratios) if len(ratios) == len(rs) else None
        means[(d, sp, label)] = (mean, len(rs))
        changed = "; ".join(" / ".join(f"{c:,}" for c in r["changed_per_event"]) for r in rs) or "–"
        lines.append(f"| {d} | {sp:g} | {label} | {len(rs)} | {col('domain_test_ppl')} | "
                     f"{col(bench[d])} | {col('wikitext2_ppl')} | "
                     f"{'–' if mean is None else spread([100 * x for x in ratios], '{:.1f}%')} | "
                     f"{changed if label.startswith('xpert') else '–'} | "
                     f"{spread([r['base_domain_test_ppl'] for r in rs])} |")
    verdict = ["| domain | sparsity | best xpert cell (mean %) | wanda-lora | lora-wanda "
               "| xpert − wanda-lora | xpert − lora-wanda |",
               "|---" * 7 + "|"]
    for d, sp in sorted({(d, sp) for d, sp, _ in means if sp > 0}):
        for tag in sorted({label.partition("+")[2] for dd, ss, label in means
                           if (dd, ss) == (d, sp)}):
            # the paper's update (PBS) apart from the SparseGPT-update VARIANTS
            for variant in (False, True):
                xs = [(m, label, n) for (dd, ss, label), (m, n) in means.items()
                      if (dd, ss) == (d, sp)
                      and label.startswith("xpert") and label.partition("+")[2] == tag
                      and m is not None
                      and (label.partition("+")[0] in VARIANTS) == variant]
                if not xs:
                    continue
                # the best cell within one budget, against the baselines of that budget
                m, label, n = max(xs)

                def other(lab):
                    o = means.get((d, sp, lab + ("+" + tag if tag else "")), (None, 0))[0]
                    return ("–", "–") if o is None else (f"{o:.1f}%", f"{m - o:+.1f} points")
                (w, bw), (lw, blw) = other("wanda-lora"), other("lora-wanda")
                verdict.append(f"| {d} | {sp:g} | {label}, {n} seed{'s' * (n > 1)} ({m:.1f}%) | "
                               f"{w} | {lw} | {bw} | {blw} |")
    return ("\n".join(lines) + "\n\nThe best ForeSight cell of each (domain, sparsity, budget) "
            "against the two Wanda baselines of the same budget, on the mean of the perplexity "
            "ratios (positive: xpert ahead); ForeSight + PBS (the paper's method) and the "
            "SparseGPT-update variants each get their row:\n\n" + "\n".join(verdict))


def replace_block(path, name, body):
    """Replace what lies between <!-- name:start --> and <!-- name:end --> in path by body: the
    generated tables of RESULTS.md and README.md (each names the record it comes from)."""
    with open(path) as f:
        text = f.read()
    a, b = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if a not in text or b not in text:
        raise SystemExit(f"error: {path}: no {a} ... {b} block to fill")
    new = text[:text.index(a) + len(a)] + "\n" + body + "\n" + text[text.index(b):]
    with open(path + ".tmp", "w") as f:
        f.write(new)
    os.replace(path + ".tmp", path)


def write_tables(records, path=os.path.join(HERE, "RESULTS.md")):
    replace_block(path, "results/grid.json", tables(records))


def cost(out_root, domain, reps, extra):
    """xpert vs lora at the same steps, interleaved (lora, xpert, lora, xpert, ...): medians and
    ratios of training wall time and peak memory, plus the median time of each part of a prune
    event."""
    res = {"lora": [], "xpert": []}
    for i in range(reps):
        for m in ("lora", "xpert"):
            out = os.path.join(out_root, f"cost-{domain}-{m}-{i}")
            subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--domain", domain,
                            "--method", m, "--out", out, "--overwrite", "--eval-windows", "1",
                            "--pubmedqa-n", "1", *extra], cwd=HERE, check=True)
            with open(os.path.join(out, "run.json")) as f:
                res[m].append(json.load(f))
    med = {m: (statistics.median(r["train_time_s"] for r in rs),
               statistics.median(r["peak_memory_mb"] for r in rs))
           for m, rs in res.items()}
    # bench/prune_event.py splits one up
    events = [ev["seconds"] for r in res["xpert"] for ev in r["timings"]]
    lines = [f"cost, {domain}, {reps} interleaved repetitions, medians:",
             f"  training time: lora {med['lora'][0]:.1f}s, xpert {med['xpert'][0]:.1f}s, ratio "
             f"{med['xpert'][0] / med['lora'][0]:.3f}",
             f"  peak memory:   lora {med['lora'][1]:.0f}MB, xpert {med['xpert'][1]:.0f}MB, ratio "
             f"{med['xpert'][1] / med['lora'][1]:.3f}",
             f"  prune events: median {statistics.median(events):.2f}s each ({len(events)} events)"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "grid"),
                   help="where the cells' run folders go")
    p.add_argument("--domains", default="legal,health")
    p.add_argument("--sparsities", default="0.4,0.5")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--cells",
                   help="only these labels, e.g. lora,wanda-lora,xpert-eq2-early (see --list)")
    p.add_argument("--extra", default="",
                   help="train.py options overriding the pinned budget, e.g. '--steps 48'")
    p.add_argument("--list", action="store_true",
                   help="print the cells and their commands, run nothing")
    p.add_argument("--table", action="store_true",
                   help="only rewrite RESULTS.md's tables from results/grid.json")
    p.add_argument("--cost", action="store_true",
                   help="measure xpert vs lora time and memory instead of the grid")
    p.add_argument("--reps", type=int, default=3)
    a, extra = p.parse_known_args()
    if a.cost:
        os.makedirs(a.out, exist_ok=True)
        print(cost(a.out, a.domains.split(",")[0], a.reps, extra))
        return
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)} (the grid pins its budget; see BUDGET)")
    todo = cells(a.domains.split(","), [float(s) for s in a.sparsities.split(",")],
                 [int(s) for s in a.seeds.split(",")], a.cells and set(a.cells.split(",")),
                 a.extra.split())
    if a.list:
        done = {r["cell"] for r in load_record()}
        for name, _, args in todo:
            print(f"{'done' if name in done else 'todo'}  {name}: python train.py {' '.join(args)}")
        return
    if not a.table:
        run_cells(todo, a.out)
    write_tables(load_record())
    print(tables(load_record()))


if __name__ == "__main__":
    main()
