"""
The results grid (PAPER.md §6-7): every method of train.py at several sparsities, on both domains,
with identical data, steps, rank and seeds; each cell is a real `train.py` run whose run.json is kept,
so an interrupted grid resumes where it stopped (finished cells are skipped). Writes results.json and
a markdown table of relative performance against the dense `lora` run of the same domain and seed.

    python bench.py                               # the full grid (hours on a 2-core CPU; run it in parts)
    python bench.py --domains legal --sparsities 0.5 --methods lora,lora-wanda,xpert --seeds 0
    python bench.py --cost                        # xpert vs lora training time and peak memory, interleaved
    python bench.py --table                       # only rebuild the table from finished cells
    python bench.py --step-cost --reps 5          # one training step: plain LoRA vs the masked-LoRA forms

Every option not named here is passed through to train.py (e.g. --steps 20 --seq-len 128).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo root: train.py lives there
sys.path.insert(0, HERE)

from bench.report import relative  # noqa: E402
GRID_METHODS = ["lora", "lora-magnitude", "lora-wanda", "lora-sparsegpt", "wanda-lora", "foresight",
                "xpert:output", "xpert:diag"]


# config keys that do not make a cell a variant: what the grid itself varies, and bookkeeping. Every other
# option that differs from train.py's DEFAULTS (group, rank, calib, events, steps, seq_len, model, ...) gives
# the cell a row of its own, so cells with different settings never share a row or a mean.
NOT_VARIANT = ("domain", "method", "pbs", "sparsity", "seed", "out", "resume", "overwrite", "ckpt_every", "device",
               "data_dir", "eval_windows", "pubmedqa_n")
LORA_KEYS = ("rank", "alpha", "dropout", "lr", "warmup", "steps", "batch_size", "seq_len", "model", "data", "max_docs",
             "dtype")  # what the dense reference must share with a cell


def run_cell(out_root, domain, method, sparsity, seed, extra):
    """One train.py run; skipped when its run.json already exists (that is what makes the grid resumable).
    Extra train.py options become part of the cell's name (e.g. ...-group-in), so variants never mix."""
    tag = re.sub(r"[^\w.=-]+", "_", "".join("-" + x.lstrip("-") for x in extra))  # a flat, safe folder name
    name = f"{domain}-lora{tag}-seed{seed}" if method == "lora" else \
        f"{domain}-{method.replace(':', '-')}-s{sparsity:g}{tag}-seed{seed}"
    out = os.path.join(out_root, name)
    if os.path.exists(os.path.join(out, "run.json")):
        return out, "done"
    m, _, pbs = method.partition(":")
    cmd = [sys.executable, os.path.join(HERE, "train.py"), "--domain", domain, "--method", m, "--seed", str(seed),
           "--sparsity", str(sparsity), "--out", out, *extra]
    if pbs:
        cmd += ["--pbs", pbs]
    if os.path.exists(out + ".partial"):
        cmd.append("--resume")  # a cell killed mid-run continues from its checkpoint
    t = time.time()
    r = subprocess.run(cmd, cwd=HERE)
    if r.returncode != 0:
        raise SystemExit(f"error: cell {name} failed (exit {r.returncode}): {' '.join(cmd)}")
    return out, f"ran in {time.time() - t:.0f}s"


def table(out_root):
    """results.json + a markdown table (relative to the dense lora run of the same domain and seed)."""
    import train
    default = vars(train.resolve(train.parse_args(["--domain", "legal"])))  # the resolved defaults (domain is no variant)
    cells = {}
    for name in sorted(os.listdir(out_root)):
        f = os.path.join(out_root, name, "run.json")
        if os.path.exists(f):
            with open(f) as fh:
                j = json.load(fh)
            c = j["config"]
            variant = ",".join(f"{k}={c[k]}" for k in sorted(c) if k not in NOT_VARIANT and c[k] != default.get(k))
            lora_part = {k: c.get(k) for k in LORA_KEYS}
            cells[name] = {"domain": c["domain"], "variant": variant,
                           "method": c["method"] + (f":{c['pbs']}" if c["method"] == "xpert" else ""),
                           "sparsity": 0.0 if c["method"] == "lora" else c["sparsity"], "seed": c["seed"],
                           "lora_part": lora_part,
                           "metrics": {k: v["value"] for k, v in j["metrics"].items()},
                           "context": j["metrics"], "measured_sparsity": j["sparsity"]["overall"],
                           "wall_time_s": j["wall_time_s"], "peak_memory_mb": j["peak_memory_mb"]}
    rows = {}
    for name, c in cells.items():
        # the dense reference: the lora cell of the same domain and seed trained exactly like this cell
        # (same rank, steps, lr, ...); a variant such as group=in or calib=general shares the default one
        ref = next((r for r in cells.values() if r["domain"] == c["domain"] and r["seed"] == c["seed"]
                    and r["method"] == "lora" and r["lora_part"] == c["lora_part"]), None)
        rel = {m: relative(m, v, ref["metrics"].get(m)) for m, v in c["metrics"].items()} if ref else {}
        c["relative"] = rel
        rows.setdefault((c["domain"], c["method"], c["variant"], c["sparsity"]), []).append(c)
    lines = ["| domain | method | variant | sparsity | seeds | " + " | ".join(
        ["domain ppl", "general ppl (wikitext2)", "benchmark", "rel. (mean of the ppls)"]) + " |", "|---" * 9 + "|"]
    for (domain, method, variant, sp), cs in sorted(rows.items()):
        def fmt(metric):
            vals = [c["metrics"][metric] for c in cs if metric in c["metrics"]]
            if not vals:
                return "–"
            s = f"{statistics.mean(vals):.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")
            rels = [c["relative"].get(metric) for c in cs if c["relative"].get(metric) is not None]
            return s + (f" ({100 * statistics.mean(rels):.1f}%)" if rels else "")
        bench = ("pubmedqa_abstracts_ppl", "pubmedqa_acc") if domain == "health" else ("cuad_ppl",)
        # the mean over the perplexities only: at 135M parameters PubMedQA accuracy sits at the majority-class
        # rate (~0.5 on the sample) before and after training, so its ratio is noise, shown but not averaged
        means = [statistics.mean(v for m, v in c["relative"].items() if v is not None and m.endswith("_ppl"))
                 for c in cs if any(v is not None for m, v in c["relative"].items() if m.endswith("_ppl"))]
        bench_cells = "; ".join(f"{b}: {fmt(b)}" for b in bench)
        rel = f"{100 * statistics.mean(means):.1f}%" if means else "–"
        lines.append(f"| {domain} | {method} | {variant or 'default'} | {sp:g} | {len(cs)} | {fmt('domain_test_ppl')} | "
                     f"{fmt('wikitext2_ppl')} | {bench_cells} | {rel} |")
    with open(os.path.join(out_root, "results.json"), "w") as f:
        json.dump(cells, f, indent=2)
    md = "\n".join(lines)
    with open(os.path.join(out_root, "results.md"), "w") as f:
        f.write(md + "\n")
    return md


def cost(out_root, domain, reps, extra):
    """xpert vs lora at the same steps, interleaved (lora, xpert, lora, xpert, ...): medians and ratios of
    training wall time and peak memory, plus the median time of each part of a prune event."""
    res = {"lora": [], "xpert": []}
    for i in range(reps):
        for m in ("lora", "xpert"):
            out = os.path.join(out_root, f"cost-{domain}-{m}-{i}")
            subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--domain", domain, "--method", m,
                            "--out", out, "--overwrite", "--eval-windows", "1", "--pubmedqa-n", "1", *extra],
                           cwd=HERE, check=True)
            with open(os.path.join(out, "run.json")) as f:
                res[m].append(json.load(f))
    med = {m: (statistics.median(r["train_time_s"] for r in rs), statistics.median(r["peak_memory_mb"] for r in rs))
           for m, rs in res.items()}
    events = [ev["seconds"] for r in res["xpert"] for ev in r["timings"]]  # bench/prune_event.py splits one up
    lines = [f"cost, {domain}, {reps} interleaved repetitions, medians:",
             f"  training time: lora {med['lora'][0]:.1f}s, xpert {med['xpert'][0]:.1f}s, ratio {med['xpert'][0] / med['lora'][0]:.3f}",
             f"  peak memory:   lora {med['lora'][1]:.0f}MB, xpert {med['xpert'][1]:.0f}MB, ratio {med['xpert'][1] / med['lora'][1]:.3f}",
             f"  prune events: median {statistics.median(events):.2f}s each ({len(events)} events)"]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "grid"), help="where cells and results go")
    p.add_argument("--domains", default="legal,health")
    p.add_argument("--methods", default=",".join(GRID_METHODS), help="xpert:diag = xpert with --pbs diag")
    p.add_argument("--sparsities", default="0.4,0.5")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--table", action="store_true", help="only rebuild results.json / results.md")
    p.add_argument("--cost", action="store_true", help="measure xpert vs lora time and memory instead of the grid")
    p.add_argument("--reps", type=int, default=3)
    a, extra = p.parse_known_args()
    os.makedirs(a.out, exist_ok=True)
    if a.cost:
        print(cost(a.out, a.domains.split(",")[0], a.reps, extra))
        return
    if not a.table:
        for seed in (int(s) for s in a.seeds.split(",")):
            for domain in a.domains.split(","):
                for method in a.methods.split(","):
                    for sp in ([0.0] if method == "lora" else [float(s) for s in a.sparsities.split(",")]):
                        out, status = run_cell(a.out, domain, method, sp, seed, extra)
                        print(f"[bench] {os.path.basename(out)}: {status}", flush=True)
    print(table(a.out))


if __name__ == "__main__":
    main()
