"""
The commands the README tells a user to run, measured and recorded: the two default runs, the
tiny preset and the base pruned one-shot by Wanda, each under GNU time (peak RSS, bytes written),
into results/default-runs.json; the README's headline and RESULTS.md's default-run tables are
generated from that record (issue 26).

    python bench/default_runs.py              # every command not yet recorded (~20 min, 2 cores)
    python bench/default_runs.py --only tiny     # one of them
    python bench/default_runs.py --table         # rewrite the tables from the record, run nothing

Every record holds the exact command, the commit, the base's and the expert's metrics on the same
windows and questions, the measured sparsity, the mask entries changed per event, wall and training
time, peak RSS and the bytes the run wrote (its checkpoints, event files and output folder).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.getloadavg()[0]  # the record says whether the machine was quiet
sys.path.insert(0, HERE)
from bench.grid import contexts, head_commit, replace_block, values  # noqa: E402
from fileio.report import better  # noqa: E402

RECORD = os.path.join(HERE, "results", "default-runs.json")
BASE = "<default model>"  # eval.py's folder argument: the converted SmolLM2 (fileio.paths)
COMMANDS = {  # name -> the command, exactly as README.md gives it
    "legal": ["train.py", "--domain", "legal"],
    "health": ["train.py", "--domain", "health"],
    "tiny": ["train.py", "--preset", "tiny", "--domain", "legal"],  # cold token cache: a new user's
    "wanda-legal": ["eval.py", BASE, "--domain", "legal", "--prune", "wanda",
                    "--sparsity", "0.4"],
    "wanda-health": ["eval.py", BASE, "--domain", "health", "--prune", "wanda",
                     "--sparsity", "0.4"],
}
LABELS = {"domain_test_ppl": "domain test", "cuad_ppl": "CUAD",
          "pubmedqa_abstracts_ppl": "PubMedQA abstracts", "wikitext2_ppl": "WikiText-2",
          "pubmedqa_acc": "PubMedQA acc", "pubmedqa_macro_f1": "PubMedQA macro-F1"}


def measure(name, out_root):
    """Run one command under /usr/bin/time -v -> its record (train.py: its run.json; eval.py: the
    metrics it writes with --out)."""
    from fileio.gguf_convert import default_model_dir
    out = os.path.join(out_root, name)
    args = [default_model_dir() if a == BASE else a for a in COMMANDS[name]]
    cmd = [sys.executable, *args, "--out", out + (".json" if args[0] == "eval.py" else "")]
    env = dict(os.environ)
    if name == "tiny":  # the converted default model is reused; a cold *token* cache is what counts
        env["XPERT_CACHE"] = os.path.join(out_root, "cache-" + name)
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=HERE, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    gnu = dict(re.findall(r"^\s*(.+?): (\S+)$", r.stderr, re.M))
    rec = {"name": name, "command": "python " + " ".join(COMMANDS[name]), "commit": head_commit(),
           "token_cache": "cold" if name == "tiny" else "warm",
           "process_wall": gnu.get("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
           "peak_rss_mb": round(int(gnu["Maximum resident set size (kbytes)"]) / 1024),
           "bytes_written": int(gnu["File system outputs"]) * 512,  # Linux counts 512 B blocks
           "load_average_before": LOAD, "omp_threads": os.environ.get("OMP_NUM_THREADS", "all")}
    if args[0] == "eval.py":
        with open(out + ".json") as f:
            j = next(iter(json.load(f).values()))
        return {**rec, "metrics": values(j["metrics"]), "metric_context": contexts(j["metrics"]),
                "measured_sparsity": j["sparsity"]}
    with open(os.path.join(out, "run.json")) as f:
        j = json.load(f)
    return {**rec, "base": values(j["base"]), "metrics": values(j["metrics"]),
            "metric_context": contexts(j["metrics"]),
            "base_pubmedqa_answers": j["base"].get("pubmedqa_acc", {}).get("answers"),
            "measured_sparsity": j["sparsity"]["overall"],
            "changed_per_event": [t["changed"] for t in j["timings"] if "changed" in t],
            "wall_time_s": round(j["wall_time_s"], 1), "train_time_s": round(j["train_time_s"], 1)}


def table(records):
    """One row per metric of every recorded train.py command: base -> expert on the same windows
    and questions; then the cost of each command."""
    lines = ["| command | metric | base | expert | change | context |", "|---" * 6 + "|"]
    for r in (r for r in records if "base" in r):
        for i, (m, v) in enumerate(r["metrics"].items()):
            b, c = r["base"][m], r["metric_context"][m]
            ctx = f"{c['split']}, " + (f"seq_len {c['seq_len']}, {c['windows']} windows"
                                       if "windows" in c else f"{c['questions']} questions")
            lines.append(f"| {'`' + r['command'] + '`' if i == 0 else ''} | {LABELS.get(m, m)} | "
                         f"{b:.3f} | {v:.3f} | {100 * (v - b) / b:+.1f}% "
                         f"({'better' if better(m, v, b) else 'worse'}) | {ctx} |")
    cost = ["| command | sparsity (saved) | mask entries changed per event | wall | training | "
            "peak RSS | written to disk | load before | commit |", "|---" * 9 + "|"]
    for r in records:
        changed = " / ".join(f"{c:,}" for c in r.get("changed_per_event", [])) or "–"
        cost.append(f"| `{r['command']}` | {r['measured_sparsity']:.4f} | {changed} | "
                    f"{r['process_wall']} | "
                    f"{str(round(r['train_time_s'])) + ' s' if 'train_time_s' in r else '–'} | "
                    f"{r['peak_rss_mb']:,} MB | {r['bytes_written'] / 1e9:.2f} GB | "
                    f"{r['load_average_before']:.1f} | {r['commit']} |")
    return "\n".join(lines) + "\n\n" + "\n".join(cost)


def load():
    if not os.path.exists(RECORD):
        return []
    with open(RECORD) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=COMMANDS, help="measure this command only (again)")
    p.add_argument("--table", action="store_true", help="only rewrite the tables from the record")
    a = p.parse_args()
    records = load()
    if not a.table:
        with tempfile.TemporaryDirectory() as root:
            for name in [a.only] if a.only else COMMANDS:
                if a.only or not any(r["name"] == name for r in records):
                    rec = measure(name, root)
                    records = [r for r in records if r["name"] != name] + [rec]
                    records.sort(key=lambda r: list(COMMANDS).index(r["name"]))
                    with open(RECORD + ".tmp", "w") as f:
                        json.dump(records, f, indent=1)
                    os.replace(RECORD + ".tmp", RECORD)
    replace_block(os.path.join(HERE, "RESULTS.md"), "results/default-runs.json", table(records))
    print(table(records))


if __name__ == "__main__":
    main()
