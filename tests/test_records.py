"""Numbers a reader can compare: the base measured as the expert is, eval.py's defaults equal to a
run's, --compare refusing numbers of different windowing, PubMedQA's macro-F1, and the in-genre
domains' training documents disjoint from every scored one."""
import json
import os
import shutil

import pytest

from conftest import ROOT  # noqa: F401  (puts the repo on sys.path)
from test_train import messages, run

HEALTH = ["--domain", "health", "--max-docs", "80", "--steps", "4", "--batch-size", "2",
          "--seq-len", "64", "--calib-samples", "4", "--eval-windows", "3", "--pubmedqa-n", "4",
          "--events", "0.5,1.0", "--sparsity", "0.5", "--rank", "4"]
WINDOWING = ("split", "seq_len", "windows", "questions")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def health_run(tiny_model_dir, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "health-xpert"
    r = run(["train.py", "--model", tiny_model_dir, "--out", str(out), *HEALTH], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_json_has_the_base_on_every_expert_metric(health_run):
    j = json.load(open(health_run / "run.json"))
    assert set(j["base"]) == set(j["metrics"]) >= {"domain_test_ppl", "pubmedqa_acc",
                                                   "pubmedqa_macro_f1"}
    for m, v in j["metrics"].items():  # the same windows and questions, not only the same names
        assert {k: v.get(k) for k in WINDOWING} == {k: j["base"][m].get(k) for k in WINDOWING}, m
    acc = j["base"]["pubmedqa_acc"]
    assert sum(acc["answers"].values()) == sum(acc["gold"].values()) == acc["questions"] == 4
    assert acc["majority_class"] == max(acc["gold"].values()) / 4


def test_compare_refuses_mismatched_windowing(health_run, cache, tmp_path):
    other = tmp_path / "health-other"
    shutil.copytree(health_run, other)
    j = json.load(open(other / "run.json"))
    j["metrics"]["domain_test_ppl"]["windows"] = 32  # as if measured with --eval-windows 32
    json.dump(j, open(other / "run.json", "w"))
    r = run(["eval.py", "--compare", str(health_run), str(other)], cache)
    assert r.returncode == 2 and len(messages(r.stderr)) == 1, r.stderr
    assert "domain_test_ppl" in r.stderr and "32" in r.stderr and "windows 3" in r.stderr
    r = run(["eval.py", "--compare", str(health_run), str(health_run)], cache)
    assert r.returncode == 0, r.stderr  # the same windowing compares


def test_eval_on_a_plain_folder_uses_a_runs_defaults(tiny_model_dir, cache, tmp_path):
    import eval as evaluation
    import train
    opts = evaluation.EvalOptions()
    assert (train.DEFAULTS["eval_windows"], train.DEFAULTS["pubmedqa_n"]) == \
        (opts.max_windows, opts.pubmedqa_n) == (16, 100)
    r = run(["eval.py", tiny_model_dir, "--domain", "legal", "--out", str(tmp_path / "m.json")],
            cache)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(tmp_path / "m.json"))[tiny_model_dir]["metrics"]
    assert {v["windows"] for v in m.values()} == {16} and "warning" not in r.stderr
    r = run(["eval.py", tiny_model_dir, "--domain", "legal", "--windows", "3"], cache)
    assert r.returncode == 0 and "warning: measuring with" in r.stderr, r.stderr[-2000:]


def test_macro_f1_against_a_hand_computed_case():
    from corpora.benchmarks import accuracy, macro_f1
    gold = ["yes", "yes", "yes", "no", "no", "maybe"]
    said = ["yes", "yes", "no", "no", "yes", "yes"]
    # yes: TP 2, FP 2, FN 1 -> 4/7; no: TP 1, FP 1, FN 1 -> 1/2; maybe: TP 0, FN 1 -> 0
    assert macro_f1(said, gold) == pytest.approx((4 / 7 + 1 / 2 + 0) / 3)
    assert accuracy(said, gold) == pytest.approx(3 / 6)
    # a constant answer: accuracy = its class's share, macro-F1 a third of that class's F1
    assert macro_f1(["yes"] * 6, gold) == pytest.approx((2 * 3 / (2 * 3 + 3)) / 3)
    assert macro_f1(gold, gold) == 1.0


def test_in_genre_training_documents_are_disjoint_from_the_scored_ones(assets):
    from corpora import benchmarks as b
    scored = b.cuad_docs(assets, b.BENCH_MAX_CHARS)  # every contract evaluation may score
    train = b.cuad_training_docs(assets)
    assert len(train) == 470 and not set(scored) & set(train)
    cuad_text = b.benchmarks(assets, ("cuad",))[0]["cuad"]
    assert not any(doc[:2000] in cuad_text for doc in train)  # not even a contract's opening

    items = b.pubmedqa_items(assets, "test")
    test_abstracts = {it["context"] for it in items}
    docs = b.pubmedqa_training_docs(assets)
    assert len(docs) == 500 and len(items) == 500
    assert not any(d.split("\n")[0] in test_abstracts for d in docs)
    scored = b.benchmarks(assets, ("pubmedqa",))[0]["pubmedqa_abstracts"]
    assert not any(d.split("\n")[0][:500] in scored for d in docs)


def test_in_genre_domains_need_the_full_assets(tiny_model_dir, cache, tmp_path):
    committed = os.path.join(ROOT, "assets")  # the subsets hold only what is scored
    for domain in ("legal-cuad", "health-pubmedqa"):
        r = run(["train.py", "--model", tiny_model_dir, "--domain", domain, "--data-dir",
                 committed, "--out", str(tmp_path / domain)], cache)
        assert r.returncode == 2 and len(messages(r.stderr)) == 1, r.stderr
        assert "full" in r.stderr and not os.path.exists(tmp_path / domain)
