"""
Measure a model folder or a train.py run: domain perplexity, general perplexity (WikiText-2),
PubMedQA accuracy, and the sparsity of the saved weights. Every number is printed with its context
(split, sequence length, number of windows), and relative performance follows docs/paper.md §7.

    python eval.py out/legal-xpert-s0.4                 # a run (or any Llama folder)
    python eval.py --compare out/legal-lora out/legal-xpert-s0.4 ...
    python eval.py --mask-overlap out/legal-xpert-s0.4 out/health-xpert-s0.4
    python eval.py <model folder> --domain legal --prune wanda --sparsity 0.4   # pruning alone
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

import data
import xpert
from corpora import benchmarks
from fileio import paths, report
from fileio.runs import check_eval_options, write_json
from model import LLaMA, ModelError, Tokenizer


# -----------------------------------------------------------------------------
# the measurements

@torch.no_grad()
def perplexity(model, windows, batch_size=4, desc="ppl", progress=True):
    """exp(mean next-token NLL) over non-overlapping windows (N, T) -> (ppl, number of windows)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, leave=False, disable=not progress):
        x = windows[i:i + batch_size].to(device)  # (b, T)
        logits = model(x[:, :-1]).float()  # (b, T-1, vocab)
        nll += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return math.exp(nll / count), len(windows)


class LogProb:
    """logprob(prompt, continuation): summed log-likelihood of the continuation's tokens given the
    prompt. The prompt's KV cache is kept, so scoring three answers costs one prompt pass."""

    def __init__(self, model, tok, max_len=None):
        self.model, self.tok = model, tok
        self.max_len = max_len or model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        self._prompt, self._cache, self._last = None, None, None

    @torch.no_grad()
    def __call__(self, prompt, continuation):
        cont = self.tok.encode(continuation, bos=False)
        if prompt != self._prompt:
            ids = self.tok.encode(prompt)
            ids = ids[:1] + ids[1:][-(self.max_len - len(cont) - 8):]  # keep BOS, drop the oldest
            caches = [[None, None] for _ in self.model.model.layers]
            logits = self.model(torch.tensor([ids], device=self.device), caches=caches)
            self._prompt, self._cache, self._len = prompt, caches, len(ids)
            self._last = logits[0, -1].float().log_softmax(-1)  # (vocab,) of the first new token
        caches = [[k, v] for k, v in self._cache]  # shallow copy: the model never mutates the cache
        lp = self._last[cont[0]].item()
        if len(cont) > 1:
            logits = self.model(torch.tensor([cont[:-1]], device=self.device), caches=caches,
                                start=self._len)  # (1, len-1, vocab)
            lps = logits[0].float().log_softmax(-1)  # (len-1, vocab)
            lp += lps.gather(1, torch.tensor(cont[1:], device=self.device)[:, None]).sum().item()
        return lp


@dataclass(frozen=True)
class EvalOptions:
    """What evaluate() measures on and how: every number is printed with these beside it. The
    defaults are a train.py run's (train.DEFAULTS reads them here), so a plain folder evaluated
    with eval.py's defaults compares with any run.json."""
    data_dir: Optional[str] = None  # benchmark assets (fileio.paths.assets_dir())
    seq_len: int = 256
    max_windows: Optional[int] = 16  # windows per perplexity; None = all
    pubmedqa_n: Optional[int] = 100  # PubMedQA questions (a fixed sample); None = all 500
    batch_size: int = 4
    progress: bool = True


RUN = EvalOptions()  # what a train.py run measures with by default (eval.py's CLI defaults too)


def evaluate(model, tok, domain, splits=None, options=EvalOptions(), log=print):
    """All metrics that the available data allow. Returns {name: {"value", "split", "seq_len",
    "windows"}}. Missing benchmark files are skipped with a printed reason, never silently."""
    o, metrics = options, {}

    def ppl(name, tokens, split):
        w = data.windows(tokens, o.seq_len, o.max_windows)
        v, n = perplexity(model, w, o.batch_size, desc=name, progress=o.progress)
        metrics[name] = {"value": v, "split": split, "seq_len": o.seq_len, "windows": n}
        log(f"  {name:<22} ppl {v:9.3f}   ({split}, seq_len {o.seq_len}, {n} windows)")

    if splits is not None:
        ppl("domain_test_ppl", splits.test, f"{domain} test split")
    bench, reasons = data.benchmarks(o.data_dir, domain)
    for r in reasons:
        log(f"  skipped: {r}")
    need_chars = (o.max_windows or 10**6) * (o.seq_len + 1) * 6  # tokenize only what windows need
    for name, text in bench.items():
        if isinstance(text, str):
            ids = tok.encode(text[:need_chars], bos=False)
            what = "test minus its calibration tenth" if name == "wikitext2" else "text"
            part = "prefix" if len(text) > need_chars else "all"
            ppl(f"{name}_ppl", torch.tensor(ids), f"{name} {what} ({part})")
    if "pubmedqa_items" in bench:
        metrics["pubmedqa_acc"], metrics["pubmedqa_macro_f1"] = pubmedqa(
            model, tok, bench["pubmedqa_items"], o, log)
    return metrics


def pubmedqa(model, tok, all_items, options, log=print):
    """Zero-shot PubMedQA on options.pubmedqa_n of the official test questions -> (accuracy,
    macro-F1), each a metric. Accuracy is printed beside always answering the commonest answer and
    beside the distribution of the model's answers: a shift of answer bias reads as one."""
    items = benchmarks.pubmedqa_sample(all_items, options.pubmedqa_n)
    questions = tqdm(items, desc="pubmedqa", leave=False, disable=not options.progress)
    answers = benchmarks.pubmedqa_answers(LogProb(model, tok), questions)
    gold = [it["answer"] for it in items]
    acc, f1 = benchmarks.accuracy(answers, gold), benchmarks.macro_f1(answers, gold)
    which = "all" if len(items) == len(all_items) else "a fixed random"
    split = f"PubMedQA official test, {which} {len(items)} of {len(all_items)} questions"
    count = lambda xs: {c: xs.count(c) for c in benchmarks.CHOICES}  # noqa: E731
    majority = max(count(gold).values()) / len(items)
    said = " / ".join(f"{c} {n}" for c, n in count(answers).items())
    log(f"  {'pubmedqa_acc':<22} acc {acc:9.3f}   ({split}, zero-shot; always answering the "
        f"commonest answer scores {majority:.3f}; answered {said}; gold "
        f"{' / '.join(f'{c} {n}' for c, n in count(gold).items())})")
    log(f"  {'pubmedqa_macro_f1':<22} F1  {f1:9.3f}   (macro-F1 over yes/no/maybe, same questions; "
        f"a constant answer scores at most {benchmarks.macro_f1(['yes'] * len(gold), gold):.3f}"
        f" with 'yes')")
    context = {"split": split, "questions": len(items)}
    return ({"value": acc, **context, "majority_class": majority, "answers": count(answers),
             "gold": count(gold)}, {"value": f1, **context})


# -----------------------------------------------------------------------------
# the command line (--compare and --mask-overlap: fileio/report.py)

def corpus_of(config):
    return config.get("domain") or config.get("data")


def check_same_corpus(paths):
    """--compare reads a run's ppl relative to another's: meaningless across corpora."""
    corpora = {p: corpus_of(report.read_run(p)["config"]) for p in paths}
    if len(set(corpora.values())) > 1:
        seen = ", ".join(f"{os.path.basename(p.rstrip('/'))}: {c}" for p, c in corpora.items())
        raise ModelError(f"--compare: these runs were trained on different corpora ({seen}), so "
                         "their perplexities are on different test splits; compare the runs of one "
                         "domain at a time")


def check_corpus(path, record, splits):
    """A run's domain test split is re-made from its corpus: refused if the corpus is no longer the
    one it was trained on (the split could then hold trained-on documents)."""
    if "corpus" not in record:  # a run.json from before the fingerprint
        print(f"warning: {path}/run.json records no corpus fingerprint (an older train.py): the "
              "test split is re-made from the corpus as it is now", file=sys.stderr)
    elif record["corpus"] != splits.meta["corpus"]:
        raise data.DataError(f"{splits.meta['name']}: the corpus changed since {path} was trained "
                             "(its test split would hold other documents, perhaps trained-on "
                             "ones); restore it as it was")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Evaluate a train.py run or any Llama folder; compare runs; mask overlap.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("paths", nargs="*", help="a run / model folder (or several with --compare / --mask-overlap)")
    a("--compare", action="store_true", help="markdown table of several runs' run.json metrics")
    a("--mask-overlap", action="store_true",
      help="per-matrix IoU of the pruning masks of several runs")
    a("--png", help="with --mask-overlap: save a heatmap here (needs matplotlib)")
    a("--domain", choices=data.DOMAINS, help="domain of the benchmark sets (default: the run's)")
    a("--data-dir", default=None,
      help="benchmark assets; default $XPERT_ASSETS, ../shared/assets, assets/")
    a("--seq-len", type=int, default=None,
      help=f"evaluation window length (default: the run's, else {RUN.seq_len})")
    a("--windows", type=int, default=None, help="windows per perplexity, 0 = all (default: the "
      f"run's --eval-windows, else a run's default, {RUN.max_windows})")
    a("--pubmedqa-n", type=int, default=None, help="PubMedQA questions, 0 = all 500 (default: "
      f"the run's --pubmedqa-n, else a run's default, {RUN.pubmedqa_n})")
    a("--batch-size", type=int, default=4)
    a("--device", default="auto")
    a("--dtype", default="auto")
    a("--prune", choices=xpert.ONESHOT,
      help="prune the folder one-shot first (no training): what pruning alone costs, e.g. the "
           "base model")
    a("--sparsity", type=float, default=0.4, help="with --prune")
    a("--calib-samples", type=int, default=16,
      help="with --prune: windows of the domain's calib split")
    a("--out", help="write the metrics as JSON here")
    return p.parse_args(argv)


def run_splits(path, record, domain, tok):
    """The splits of the run's corpus (or of --domain), None without one. The cache is keyed by
    vocabulary: the run's own splits come back."""
    run = record.get("config", {})
    if not (domain or run.get("data")):
        return None
    options = data.SplitOptions(seed=run.get("seed", 0), max_docs=run.get("max_docs"),
                                max_chars=run.get("max_chars", data.DEFAULT_MAX_CHARS),
                                assets=run.get("data_dir"))
    splits = data.prepare(domain=domain, data_path=None if domain else run.get("data"),
                          tokenizer=tok, options=options)
    if domain == run.get("domain"):  # the run's own corpus: its test split held out?
        check_corpus(path, record, splits)
    return splits


def prune_oneshot(model, splits, args, seq_len, seed, domain):
    """--prune: the one-shot baselines of docs/paper.md §6 on a folder's weights, calibrated on
    the domain -> the measured sparsity."""
    if splits is None:
        raise ModelError("--prune needs a domain (--domain legal/health) for its calibration text")
    calib = data.calib_windows(splits.calib, args.calib_samples, seq_len, seed)  # (N, T)
    xpert.prune_oneshot(model, calib, args.prune, args.sparsity)
    sp = xpert.sparsity_report(model)["overall"]  # measured once: the weights do not change below
    print(f"  pruned one-shot with {args.prune} at {args.sparsity:g} ({len(calib)}×{seq_len} "
          f"calibration tokens, {domain} calib split): sparsity {sp:.4f}")
    return sp


def warn_windowing(path, run, chosen):
    """Loudly, when these numbers will not compare with the run's (or a default run's) own."""
    ref = (run.get("seq_len", RUN.seq_len), run.get("eval_windows", RUN.max_windows) or None,
           run.get("pubmedqa_n", RUN.pubmedqa_n) or None)
    if chosen != ref:
        whose = f"{path}'s run.json" if run else "a train.py run's defaults"
        print(f"warning: measuring with (seq_len, windows, PubMedQA questions) = {chosen}, not "
              f"{whose} {ref}: these numbers do not compare with that run.json's (None = all)",
              file=sys.stderr)


def evaluate_path(path, args, device, dtype):
    """eval.py on one folder, with the run's own settings where it has a run.json (so the numbers
    compare with its run.json) -> {"metrics", "sparsity"[, "pruned"]}."""
    record = report.read_run(path) if os.path.exists(os.path.join(path, "run.json")) else {}
    run = record.get("config", {})
    domain = args.domain or run.get("domain")
    seq_len = args.seq_len or run.get("seq_len", RUN.seq_len)
    windows = args.windows if args.windows is not None else run.get("eval_windows", RUN.max_windows)
    pubmedqa_n = args.pubmedqa_n if args.pubmedqa_n is not None else \
        run.get("pubmedqa_n", RUN.pubmedqa_n)
    print(f"{path}: (domain {domain or 'none'}, device {device}/{dtype}, seq_len {seq_len}, "
          f"{windows or 'all'} windows per perplexity)")
    warn_windowing(path, run, (seq_len, windows or None, pubmedqa_n or None))
    model = LLaMA.from_pretrained(path, device=device, dtype=getattr(torch, dtype))
    tok = Tokenizer(path)
    splits = run_splits(path, record, domain, tok)
    if args.prune:
        sp = prune_oneshot(model, splits, args, seq_len, run.get("seed", 0), domain)
    else:
        sp = report.folder_sparsity(path)["overall"]
    options = EvalOptions(data_dir=args.data_dir or paths.assets_dir(), seq_len=seq_len,
                          max_windows=windows or None, pubmedqa_n=pubmedqa_n or None,
                          batch_size=args.batch_size)
    # a plain folder with no domain still gets the general-ability check (WikiText-2)
    m = evaluate(model, tok, domain or ("general" if splits is None else None), splits, options)
    print(f"  {'sparsity (pruned)' if args.prune else 'sparsity (saved)':<22} {sp:.4f}   "
          "(zeros / weights of the 7 projections of every block)")
    return {"metrics": m, "sparsity": sp,
            **({"pruned": [args.prune, args.sparsity]} if args.prune else {})}


def main(argv=None):
    args = parse_args(argv)
    try:
        check_eval_options(args)  # folders exist, --sparsity in [0, 1), --out writable: first
        if args.compare:
            check_same_corpus(args.paths)
            print(report.compare(args.paths))
            return 0
        if args.mask_overlap:
            print(report.mask_overlap(args.paths, args.png))
            return 0
        device, dtype = paths.device_dtype(args.device, args.dtype)
        results = {path: evaluate_path(path, args, device, dtype) for path in args.paths}
        if args.out:
            write_json(args.out, results)  # atomic: a full disk leaves no empty or half file
        return 0
    except (ModelError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {str(e.filename) + ': ' if e.filename else ''}{e.strerror or e}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
