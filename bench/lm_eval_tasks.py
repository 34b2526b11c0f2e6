"""lm-eval (EleutherAI lm-evaluation-harness) on this project's benchmarks, with exactly the tokens
eval.py scores: every perplexity window of eval.py becomes one lm-eval document, the fixed PubMedQA
sample a multiple-choice task, all from the local benchmark files (nothing from a hub). Then lm-eval
runs on a model folder and its numbers are printed beside eval.py's. lm-eval is a test-only tool
(requirements-test.txt): train.py, eval.py and model.py never import it.

    pip install lm-eval==0.4.13
    python bench/lm_eval_tasks.py out/legal-xpert-s0.4                     # CUAD, WikiText-2
    python bench/lm_eval_tasks.py out/health-xpert-s0.4 --pubmedqa-n 100   # PubMedQA too
    python bench/lm_eval_tasks.py ~/.cache/efficientxpert/SmolLM2-135M-Instruct --domain legal \
        --windows 16 --seq-len 256 --tasks-dir /tmp/xpert_tasks --out lm_eval.json

The task files (`<tasks-dir>/xpert_<name>.yaml` + `.jsonl`) are plain lm-eval tasks:

    python bench/lm_eval_tasks.py out/legal-xpert-s0.4 --write-only --tasks-dir xpert_tasks
    lm_eval --model hf --tasks xpert_cuad,xpert_wikitext2 --include_path xpert_tasks \
        --model_args pretrained=out/legal-xpert-s0.4,dtype=float32,add_bos_token=False \
        --device cpu --log_samples --output_path lm_eval_out
    lm_eval --model hf --model_args pretrained=out/health-xpert-s0.4,dtype=float32 \
        --tasks xpert_pubmedqa --include_path xpert_tasks --device cpu

The perplexity tasks report `token_perplexity`: lm-eval's own weighted_perplexity over every
window's (loglikelihood, scored tokens), i.e. eval.py's exp(sum NLL / sum tokens) (lm-eval's
built-in loglikelihood "perplexity" is per document). One detail stays this script's: a window
whose first token is whitespace has an empty context (lm-eval strips trailing whitespace off a
context, which would leave nothing) and is exact only with `prefix_token_id=<its prefix_id>` in
--model_args; the script scores those windows in a pass of their own (lm-eval's `samples`).
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import torch  # noqa: E402

import data  # noqa: E402
import eval as xeval  # noqa: E402  (eval.py: the numbers lm-eval is checked against)
from bench.grid import head_commit  # noqa: E402
from corpora import benchmarks  # noqa: E402
from fileio import paths  # noqa: E402
from model import LLaMA, Tokenizer  # noqa: E402


# -----------------------------------------------------------------------------
# the task files

def lm_eval_ids(hf_tok, context, target, prefix_id, bos=False):
    """(context ids, scored ids) exactly as lm-eval's HFLM makes them from a loglikelihood request
    (lm_eval/api/model.py: `loglikelihood` and `_encode_pair`, 0.4.13), to check a document
    before lm-eval runs. bos: HFLM's add_bos_token (False: no special tokens; None: the
    tokenizer's own rule)."""
    def enc(s, special=bos is not False):
        return hf_tok.encode(s, add_special_tokens=special)
    if context == "":  # lm-eval conditions on prefix_token_id, or on the text's own first token
        cont = enc(target, special=False)
        return ([prefix_id], cont) if cont[:1] != [prefix_id] else (cont[:1], cont[1:])
    n = len(context) - len(context.rstrip())  # trailing whitespace moves to the continuation
    if n:
        context, target = context[:-n], context[-n:] + target
    whole, ctx = enc(context + target), enc(context)
    return ctx, whole[len(ctx):]


def window_doc(hf_tok, row, index):
    """One eval.py window (list of T ids) -> a loglikelihood document whose scored tokens are the
    window's tokens 1..T-1 given the ones before them, no BOS (eval.perplexity)."""
    first = hf_tok.decode(row[:1])
    if first != first.rstrip():
        # lm-eval would strip a whitespace-only context to nothing; an empty context with
        # prefix_token_id = the first token gives the same input instead
        doc = {"context": "", "target": hf_tok.decode(row), "prefix_id": row[0]}
    else:
        doc = {"context": first, "target": hf_tok.decode(row[1:]), "prefix_id": None}
    ctx, cont = lm_eval_ids(hf_tok, doc["context"], doc["target"], doc["prefix_id"])
    # a decode -> encode round trip can differ (a character cut between windows, sentencepiece's
    # leading space): such a window is flagged, and lm-eval scores its own tokens for it
    exact = ctx + cont == row and len(cont) == len(row) - 1
    return {"window": index, **doc, "n_tokens": len(cont), "exact": exact}


def pubmedqa_doc(hf_tok, item):
    """One PubMedQA question as eval.LogProb scores it: the prompt with the tokenizer's special
    tokens, each answer " yes"/" no"/" maybe" tokenized on its own."""
    prompt = benchmarks.pubmedqa_prompt(item)
    ctx = hf_tok.encode(prompt)  # = eval.py's tok.encode(prompt): transformers' own BOS rule
    exact = all(lm_eval_ids(hf_tok, prompt, " " + c, None, bos=None)
                == (ctx, hf_tok.encode(" " + c, add_special_tokens=False))
                for c in benchmarks.CHOICES)
    label = benchmarks.CHOICES.index(item["answer"])
    return {"pmid": item["pmid"], "prompt": prompt, "label": label, "exact": exact}


def task_yaml(name, jsonl, cache_dir, fields, process_results=None):
    """An lm-eval task reading one local .jsonl (datasets' json builder: no hub, no network)."""
    import yaml
    cfg = {"task": name, "dataset_path": "json",
           "dataset_kwargs": {"data_files": {"test": jsonl}, "cache_dir": cache_dir},
           "test_split": "test", **fields}
    text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    # lm-eval's own tag for a Python function beside the YAML (safe_dump cannot write tags)
    return text + (f"process_results: !function {process_results}\n" if process_results else "")


# lm-eval's built-in "perplexity" of a loglikelihood task is per document, exp(-mean document
# loglikelihood) (and overflows on 255-token windows); pairing each document's loglikelihood with
# its scored-token count makes lm-eval's own weighted_perplexity aggregation the token perplexity
# exp(-sum loglikelihood / sum tokens), eval.py's number.
METRICS_PY = '''"""Written by bench/lm_eval_tasks.py: a window's loglikelihood with its number
of scored tokens, so that lm-eval's weighted_perplexity is the token perplexity."""


def token_nll(doc, results):
    loglikelihood, _is_greedy = results[0]
    return {"token_perplexity": (loglikelihood, doc["n_tokens"])}
'''
PPL_FIELDS = {"output_type": "loglikelihood", "doc_to_text": "context", "doc_to_target": "target",
              "target_delimiter": "", "metric_list": [{"metric": "token_perplexity",
                                                       "aggregation": "weighted_perplexity",
                                                       "higher_is_better": False}]}
PUBMEDQA_FIELDS = {"output_type": "multiple_choice", "doc_to_text": "prompt",
                   "doc_to_choice": list(benchmarks.CHOICES), "doc_to_target": "label",
                   "target_delimiter": " ", "metric_list": [
                       {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}


def write_tasks(model_dir, domain, out_dir, seq_len=256, windows=16, pubmedqa_n=100,
                data_dir=None):
    """Write `xpert_<name>.yaml` + `.jsonl` for every benchmark of the domain that data.benchmarks
    finds (`xpert_pubmedqa`: the questions, where the domain has them). windows / pubmedqa_n: 0 or
    None = all, as eval.py. Returns {task name: [documents]}."""
    from transformers import AutoTokenizer  # lm-eval's HFLM loads the folder's tokenizer this way
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    tok = Tokenizer(model_dir)  # eval.py's tokenizer: the windows are made from its ids
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cache = os.path.join(out_dir, ".datasets_cache")  # datasets' Arrow cache stays beside the tasks
    with open(os.path.join(out_dir, "xpert_metrics.py"), "w") as f:
        f.write(METRICS_PY)
    bench, reasons = data.benchmarks(data_dir or paths.assets_dir(), domain or "general")
    for r in reasons:
        print(f"  skipped: {r}")
    need_chars = (windows or 10**6) * (seq_len + 1) * 6  # as eval.evaluate: the same token ids
    tasks = {}
    for name, text in bench.items():
        if isinstance(text, str):
            ids = tok.encode(text[:need_chars], bos=False)
            rows = data.windows(torch.tensor(ids), seq_len, windows or None).tolist()
            docs = [window_doc(hf_tok, row, i) for i, row in enumerate(rows)]
            fields, function = PPL_FIELDS, "xpert_metrics.token_nll"
        elif name == "pubmedqa_items":
            name, items = "pubmedqa", benchmarks.pubmedqa_sample(text, pubmedqa_n)
            docs = [pubmedqa_doc(hf_tok, it) for it in items]
            fields, function = PUBMEDQA_FIELDS, None
        else:
            continue
        jsonl = os.path.join(out_dir, f"xpert_{name}.jsonl")
        with open(jsonl, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
        with open(os.path.join(out_dir, f"xpert_{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(task_yaml(f"xpert_{name}", jsonl, cache, fields, function))
        tasks[f"xpert_{name}"] = docs
    return tasks


# -----------------------------------------------------------------------------
# running lm-eval, and eval.py beside it

def passes(tasks):
    """The lm-eval runs the documents need: {(add_bos_token, prefix_token_id): {task: [doc ids]}}.
    Perplexity windows score no BOS (as eval.perplexity); PubMedQA prompts take the tokenizer's
    special tokens (as eval.LogProb); whitespace-first windows run with their own prefix token."""
    runs = {}
    for task, docs in tasks.items():
        for i, d in enumerate(docs):
            key = (None, None) if task == "xpert_pubmedqa" else (False, d["prefix_id"])
            runs.setdefault(key, {}).setdefault(task, []).append(i)
    return runs


def run_lm_eval(model_dir, tasks, tasks_dir, device="cpu", batch_size=4):
    """lm-eval's HFLM (float32) on the written tasks -> {task: {document index: result}}, a
    result being the summed loglikelihood (perplexity tasks) or the list of the choices' ones."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    manager = TaskManager(include_path=os.path.abspath(tasks_dir), include_defaults=False)
    base = HFLM(pretrained=model_dir, dtype="float32", device=device, batch_size=batch_size)
    out = {t: {} for t in tasks}
    for (bos, prefix), chosen in passes(tasks).items():
        # one loaded model; each pass only changes how lm-eval tokenizes (its own model options)
        lm = HFLM(pretrained=base.model, tokenizer=base.tokenizer, batch_size=batch_size,
                  add_bos_token=bos, prefix_token_id=prefix)
        res = simple_evaluate(model=lm, tasks=list(chosen), samples=chosen, task_manager=manager,
                              log_samples=True, bootstrap_iters=0, verbosity="WARNING")
        for task, samples in res["samples"].items():
            for s in samples:
                # with `samples`, lm-eval numbers the chosen docs 0.. again: use our own keys
                key = s["doc"].get("window", s["doc"].get("pmid"))
                lls = [r[0] for r in s["filtered_resps"]]  # [(loglikelihood, is_greedy), ...]
                out[task][key] = lls[0] if "window" in s["doc"] else lls
    return out


def lm_eval_metrics(tasks, results):
    """From lm-eval's per-document results: the token perplexity exp(-sum loglikelihood / sum
    scored tokens) of every perplexity task; PubMedQA's picks, accuracy and macro-F1."""
    m = {}
    for task, docs in tasks.items():
        if task == "xpert_pubmedqa":
            # argmax, ties to the first choice: lm-eval's acc (and eval.py's score_choices)
            picks = [benchmarks.CHOICES[max(range(3), key=results[task][d["pmid"]].__getitem__)]
                     for d in docs]
            gold = [benchmarks.CHOICES[d["label"]] for d in docs]
            m["pubmedqa_acc"] = {"value": benchmarks.accuracy(picks, gold), "picks": picks}
            m["pubmedqa_macro_f1"] = {"value": benchmarks.macro_f1(picks, gold)}
            continue
        nll = -sum(results[task][d["window"]] for d in docs)
        m[f"{task[len('xpert_'):]}_ppl"] = {
            "value": math.exp(nll / sum(d["n_tokens"] for d in docs)), "windows": len(docs),
            "inexact": sum(not d["exact"] for d in docs)}
    return m


def eval_py_metrics(model_dir, domain, seq_len, windows, pubmedqa_n, data_dir=None, model=None,
                    device="cpu"):
    """eval.evaluate on the folder (or on its loaded `model`) with the same options, fp32: the
    other column."""
    if model is None:
        model = LLaMA.from_pretrained(model_dir, device=device, dtype=torch.float32)
    opts = xeval.EvalOptions(data_dir=data_dir or paths.assets_dir(), seq_len=seq_len,
                             max_windows=windows or None, pubmedqa_n=pubmedqa_n or None,
                             progress=False)
    return xeval.evaluate(model, Tokenizer(model_dir), domain or "general", None, opts,
                          log=lambda *a: None)


def table(ours, theirs):
    lines = [f"{'metric':<22} {'lm-eval':>12} {'eval.py':>12} {'difference':>12}"]
    for k, v in ours.items():
        if k in theirs:
            a, b = v["value"], theirs[k]["value"]
            lines.append(f"{k:<22} {a:12.6f} {b:12.6f} {a - b:12.2e}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", help="a Hugging Face folder (a train.py output, or any Llama)")
    p.add_argument("--domain", choices=[*data.DOMAINS, "general"],
                   help="benchmarks of this domain (default: the run's run.json, else general)")
    p.add_argument("--windows", type=int, default=16, help="windows per perplexity, 0 = all")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window, as eval.py")
    p.add_argument("--pubmedqa-n", type=int, default=100, help="PubMedQA questions, 0 = all")
    p.add_argument("--tasks-dir", default=None, help="where the tasks go (default: a temp dir)")
    p.add_argument("--data-dir", default=None, help="benchmark assets (default: as eval.py)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write-only", action="store_true", help="write the task files, run nothing")
    p.add_argument("--out", help="write the numbers as JSON here")
    return p.parse_args(argv)


def main(argv=None):
    import tempfile
    a = parse_args(argv)
    # local files only: datasets and the hub client never try the network (read at their import)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_json = os.path.join(a.model_dir, "run.json")
    domain = a.domain
    if domain is None and os.path.exists(run_json):  # a train.py run: its own domain, as eval.py
        with open(run_json) as f:
            domain = json.load(f)["config"].get("domain")
    tasks_dir = a.tasks_dir or tempfile.mkdtemp(prefix="xpert_lm_eval_")
    tasks = write_tasks(a.model_dir, domain, tasks_dir, a.seq_len, a.windows, a.pubmedqa_n,
                        a.data_dir)
    for t, docs in tasks.items():
        bad = sum(not d["exact"] for d in docs)
        own = sum(d.get("prefix_id") is not None for d in docs)
        print(f"{tasks_dir}/{t}.yaml: {len(docs)} documents"
              + (f", {own} whitespace-first (scored with prefix_token_id)" if own else "")
              + (f", {bad} NOT token-exact (lm-eval scores other tokens for them)" if bad else ""))
    if a.write_only:
        return 0
    ours = lm_eval_metrics(tasks, run_lm_eval(a.model_dir, tasks, tasks_dir, a.device))
    theirs = eval_py_metrics(a.model_dir, domain, a.seq_len, a.windows, a.pubmedqa_n, a.data_dir,
                             device=a.device)
    print(f"{a.model_dir} (domain {domain or 'general'}, seq_len {a.seq_len}, "
          f"{a.windows or 'all'} windows, fp32)\n" + table(ours, theirs))
    if a.out:  # a record: what ran on which folder, at which commit, and both harnesses' numbers
        import lm_eval
        rec = {"command": "python bench/lm_eval_tasks.py " + " ".join(argv or sys.argv[1:]),
               "model": a.model_dir, "domain": domain, "commit": head_commit(),
               "lm_eval_version": getattr(lm_eval, "__version__", "?"), "lm_eval": ours,
               "eval_py": theirs}
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
