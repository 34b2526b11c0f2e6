"""The benchmark sets, read from an assets folder (fileio.paths.assets_dir: $XPERT_ASSETS,
../shared/assets, or the small subsets committed in assets/), and PubMedQA's zero-shot scoring."""
import json
import os

import numpy as np
from tqdm import tqdm

from corpora import DataError
from corpora.text import _read_text

CUAD_FILE = os.path.join("data", "legal", "cuad_contracts.jsonl")
PUBMEDQA_DIR = os.path.join("data", "health", "pubmedqa")
WIKITEXT2_FILE = os.path.join("data", "general", "wikitext-2-raw", "wiki.test.raw")
# Perplexity texts are cut (by whole documents) at this many characters: all of WikiText-2 test
# (1.3 M) and the PubMedQA test abstracts (~0.7 M) fit; CUAD (26.8 M) is cut to its first contracts.
BENCH_MAX_CHARS = 2_000_000
CHOICES = ("yes", "no", "maybe")


def _read_json(file):
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{file}: cannot read it as JSON ({getattr(e, 'strerror', None) or e})")


def cuad_docs(data_dir, max_chars=None):
    """CUAD v1 contracts (510 in all), in file order, whole contracts up to max_chars."""
    return _whole_prefix(_cuad_all(data_dir), max_chars)


def _cuad_all(data_dir):
    file = os.path.join(data_dir, CUAD_FILE)
    docs = []
    for i, line in enumerate(_read_text(file, "CUAD").split("\n"), 1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line)["text"].replace("\r\n", "\n").strip())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(f"{file}: line {i} is not a JSON object with a \"text\" field")
    return docs


def _whole_prefix(docs, max_chars):
    """The first documents whose lengths add up to at most max_chars (always the first one)."""
    total = 0
    for n, text in enumerate(docs):
        if max_chars is not None and n and total + len(text) > max_chars:
            return docs[:n]
        total += len(text)
    return docs


def pubmedqa_items(data_dir, split="test"):
    """PubMedQA PQA-L questions -> [{pmid, question, context, answer}]. split="test": the 500
    official test questions (test_ground_truth.json, in its order); "train": the other 500
    (train/dev side), each with its long_answer too."""
    d = os.path.join(data_dir, PUBMEDQA_DIR)
    ori = _read_json(os.path.join(d, "ori_pqal.json"))
    truth = _read_json(os.path.join(d, "test_ground_truth.json"))
    if split == "test":
        pmids = list(truth)
    elif split == "train":
        pmids = [p for p in ori if p not in truth]
    else:
        raise DataError(f"unknown PubMedQA split {split!r}: use 'test' or 'train'")
    items = []
    for p in pmids:
        if p not in ori:
            raise DataError(f"{d}: test question {p} is missing from ori_pqal.json")
        q = ori[p]
        answer = truth.get(p, q.get("final_decision"))
        if answer not in CHOICES:
            raise DataError(f"{d}: question {p} has answer {answer!r}, "
                            f"not one of {'/'.join(CHOICES)}")
        item = dict(pmid=p, question=q["QUESTION"], context=" ".join(q["CONTEXTS"]), answer=answer)
        if split == "train":  # the conclusions, trained on (health-pubmedqa); never the test ones
            item["long_answer"] = q.get("LONG_ANSWER", "")
        items.append(item)
    return items


def pubmedqa_sample(items, n=None):
    """n of the test questions for a quicker score: a fixed random sample (the same for every run
    and seed), in file order. Never the first n: test_ground_truth.json lists all 276 'yes' answers
    first, so its first 100 questions are one class and a model that always says 'yes' would score
    1.0. n=None or 0: all."""
    if not n or n >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(0x9B3D).choice(len(items), size=n, replace=False))
    return [items[i] for i in keep]


# The in-genre training corpora (data.DOMAINS "legal-cuad", "health-pubmedqa"): the same benchmark
# files, minus everything the evaluation scores, so an expert trained on them is measured on unseen
# documents of its own genre. They need the full sets: the subsets committed in assets/ hold only
# what is scored, and are refused in one line.

def cuad_training_docs(data_dir):
    """The CUAD contracts after the ones benchmarks() scores (the first BENCH_MAX_CHARS of the
    file, whole contracts), minus any that opens like a scored one: CUAD holds the same agreement
    filed twice under two names (an Armstrong Flooring IP agreement is contract 22 and 40, texts not
    equal). 470 of the 510 with the full set."""
    every = _cuad_all(data_dir)  # read once: the scored prefix and the rest
    scored = _whole_prefix(every, BENCH_MAX_CHARS)
    text = "\n\n".join(scored)
    docs = [d for d in every[len(scored):] if d[:1000] not in text]
    if not docs:
        raise DataError(f"{os.path.join(data_dir, CUAD_FILE)} holds only the {len(scored)} scored "
                        "contracts: the legal-cuad domain needs the full CUAD (set XPERT_ASSETS "
                        "or put ../shared/assets beside the repo)")
    return docs


def pubmedqa_training_docs(data_dir):
    """The abstracts (CONTEXTS) and conclusions (LONG_ANSWER) of the PQA-L questions outside the
    official test split: the 500 test questions and their abstracts stay unseen."""
    docs = [it["context"] + "\n" + it["long_answer"] for it in pubmedqa_items(data_dir, "train")]
    if not docs:
        raise DataError(f"{os.path.join(data_dir, PUBMEDQA_DIR)} holds only the test questions: "
                        "the health-pubmedqa domain needs the full PQA-L (set XPERT_ASSETS or "
                        "put ../shared/assets beside the repo)")
    return [d.strip() for d in docs]


def wikitext2_text(data_dir):
    """WikiText-2 raw test as Wanda/SparseGPT feed it: the Hugging Face dataset's rows (one per
    line, whitespace-only lines as "") joined with "\\n\\n"; CRLF normalised to LF first."""
    raw = _read_text(os.path.join(data_dir, WIKITEXT2_FILE), "WikiText-2")  # CRLF -> LF
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


# --calib general calibrates on WikiText-2 as well, so its last tenth is set aside for calibration
# and the general perplexity is measured on the rest: the two never share a token, whatever
# --eval-windows says.
WIKITEXT2_CALIB_FRACTION = 0.1


def wikitext2_parts(data_dir):
    """(evaluation text, calibration text) of WikiText-2 test: the first 90% and the last 10%."""
    text = wikitext2_text(data_dir)
    # at a row boundary
    cut = text.rfind("\n\n", 0, int(len(text) * (1 - WIKITEXT2_CALIB_FRACTION)))
    return text[:cut], text[cut + 2:]


def benchmarks(data_dir, names, max_chars=BENCH_MAX_CHARS):
    """The evaluation sets `names` ("cuad", "pubmedqa", "pubmedqa_abstracts" = without the
    questions, "wikitext2": data.DOMAINS says which go with a domain) that exist under data_dir ->
    (found, skipped). found: name -> str (a perplexity text) or list (PubMedQA items, for
    yes/no/maybe accuracy); skipped: one line per missing set, saying why (print them)."""
    found, skipped = {}, []
    if data_dir is None:
        skipped.append("benchmarks: no assets folder (set XPERT_ASSETS): skipping "
                       + ", ".join(names))
        return found, skipped

    def have(rel, what):
        if os.path.exists(os.path.join(data_dir, rel)):
            return True
        skipped.append(f"{what}: skipped, {os.path.join(data_dir, rel)} not found")
        return False

    if "cuad" in names and have(CUAD_FILE, "cuad (legal perplexity)"):
        found["cuad"] = "\n\n".join(cuad_docs(data_dir, max_chars))
    wanted = {"pubmedqa", "pubmedqa_abstracts"} & set(names)  # the latter: the abstracts' ppl only
    if wanted and have(os.path.join(PUBMEDQA_DIR, "ori_pqal.json"), "pubmedqa") and \
            have(os.path.join(PUBMEDQA_DIR, "test_ground_truth.json"), "pubmedqa"):
        items = pubmedqa_items(data_dir, "test")
        found["pubmedqa_abstracts"] = _cap("\n\n".join(it["context"] for it in items), max_chars)
        if "pubmedqa" in wanted:
            found["pubmedqa_items"] = items
    if "wikitext2" in names and have(WIKITEXT2_FILE, "wikitext2 (general perplexity)"):
        # never the calibration tenth
        found["wikitext2"] = _cap(wikitext2_parts(data_dir)[0], max_chars)
    return found, skipped


def _cap(text, max_chars):
    return text if max_chars is None else text[:max_chars]


# PubMedQA zero-shot, as lm-evaluation-harness's `pubmedqa` task: the prompt below, each answer
# scored as the continuation " yes" / " no" / " maybe" (target delimiter " "), highest summed
# log-likelihood wins (its "acc").

def pubmedqa_prompt(item):
    return f"Abstract: {item['context']}\nQuestion: {item['question']}\nAnswer:"


def score_choices(logprob_fn, prompt, choices=CHOICES):
    """The choice whose continuation " <choice>" has the highest logprob_fn(prompt, continuation)
    (summed log-likelihood, supplied by the caller's model); ties go to the earlier choice."""
    scores = [float(logprob_fn(prompt, " " + c)) for c in choices]
    return choices[int(np.argmax(scores))]


def pubmedqa_answers(logprob_fn, items, progress=False):
    """The predicted answer of every item, in order."""
    answers = [score_choices(logprob_fn, pubmedqa_prompt(it))
               for it in tqdm(items, desc="pubmedqa", disable=not progress, leave=False)]
    if not answers:
        raise DataError("PubMedQA accuracy: no questions to score")
    return answers


def accuracy(predicted, gold):
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def macro_f1(predicted, gold, classes=CHOICES):
    """The mean over classes of F1 = 2·TP / (2·TP + FP + FN), 0 for a class never predicted nor
    present (the PubMedQA paper's second score: a constant answer gets F1 > 0 in one class only)."""
    f1 = []
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        wrong = sum((p == c) != (g == c) for p, g in zip(predicted, gold))  # FP + FN
        f1.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return sum(f1) / len(classes)


def pubmedqa_accuracy(logprob_fn, items, progress=False):
    """Fraction of items whose predicted answer equals item['answer']."""
    return accuracy(pubmedqa_answers(logprob_fn, items, progress), [it["answer"] for it in items])
