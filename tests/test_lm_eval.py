"""lm-eval (EleutherAI lm-evaluation-harness, issue 26 item 3) scores exactly eval.py's tokens: the
tasks bench/lm_eval_tasks.py writes, run by the real lm-eval (HFLM, transformers, fp32 CPU) on the
default model, give eval.py's perplexities and its PubMedQA picks."""
import pytest

import eval as evaluation
from bench import lm_eval_tasks as L  # sets HF_DATASETS_OFFLINE / HF_HUB_OFFLINE if unset
from corpora import benchmarks
from fileio import gguf_convert as G, paths
from model import LLaMA, ModelError, Tokenizer

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval==0.4.13)")
import datasets  # noqa: E402  (installed with lm-eval)

SEQ_LEN, WINDOWS, PUBMEDQA_N = 32, 6, 5  # small: the test runs the real harness on 2 CPU cores


@pytest.fixture(scope="module")
def smol_dir():
    try:
        G.default_gguf_file()
    except ModelError as e:
        pytest.skip(str(e))
    return G.default_model_dir()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """datasets read its offline switch and cache at import: set them on the module, for this test
    (its Arrow cache goes to tmp_path as well: the task files say cache_dir)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.mark.slow
def test_lm_eval_scores_eval_py_tokens(smol_dir, offline, tmp_path):
    tasks = {}
    for domain in ("legal", "health"):  # CUAD, WikiText-2, PubMedQA abstracts and questions
        tasks.update(L.write_tasks(smol_dir, domain, tmp_path, SEQ_LEN, WINDOWS, PUBMEDQA_N))
    assert set(tasks) == {"xpert_cuad", "xpert_wikitext2", "xpert_pubmedqa_abstracts",
                          "xpert_pubmedqa"}
    assert all(d["exact"] for docs in tasks.values() for d in docs)  # every round trip is exact
    # CUAD's window 5 starts with a whitespace token: lm-eval's empty-context path is tested too
    assert [d["window"] for d in tasks["xpert_cuad"] if d["prefix_id"] is not None] == [5]

    results = L.run_lm_eval(smol_dir, tasks, tmp_path, batch_size=8)
    ours = L.lm_eval_metrics(tasks, results)
    theirs = {**L.eval_py_metrics(smol_dir, "legal", SEQ_LEN, WINDOWS, PUBMEDQA_N),
              **L.eval_py_metrics(smol_dir, "health", SEQ_LEN, WINDOWS, PUBMEDQA_N)}
    for name in ("cuad_ppl", "wikitext2_ppl", "pubmedqa_abstracts_ppl"):
        assert ours[name]["windows"] == theirs[name]["windows"] == WINDOWS
        assert ours[name]["value"] == pytest.approx(theirs[name]["value"], rel=1e-4), name

    # PubMedQA: the same questions in the same order, each answer's loglikelihood as eval.LogProb's
    items = benchmarks.pubmedqa_sample(benchmarks.pubmedqa_items(paths.assets_dir()), PUBMEDQA_N)
    assert [d["pmid"] for d in tasks["xpert_pubmedqa"]] == [it["pmid"] for it in items]
    logprob = evaluation.LogProb(LLaMA.from_pretrained(smol_dir), Tokenizer(smol_dir))
    for it in items:
        ll = [logprob(benchmarks.pubmedqa_prompt(it), " " + c) for c in benchmarks.CHOICES]
        assert results["xpert_pubmedqa"][it["pmid"]] == pytest.approx(ll, abs=1e-3), it["pmid"]
    picks = [benchmarks.score_choices(logprob, benchmarks.pubmedqa_prompt(it)) for it in items]
    assert ours["pubmedqa_acc"]["picks"] == picks
    assert ours["pubmedqa_acc"]["value"] == theirs["pubmedqa_acc"]["value"]
