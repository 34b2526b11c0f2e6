"""lm-eval (EleutherAI lm-evaluation-harness, issue 26 item 3) scores exactly eval.py's tokens: the
tasks bench/lm_eval_tasks.py writes, run by the real lm-eval (HFLM, transformers, fp32 CPU) on the
default model, give eval.py's perplexities and its PubMedQA picks."""
import numpy as np
import pytest
import torch

import eval as evaluation
from bench import lm_eval_tasks as L
from corpora import benchmarks
from fileio import gguf_convert as G, paths
from model import LLaMA, ModelError

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval==0.4.13)")
import datasets  # noqa: E402  (installed with lm-eval)
import huggingface_hub.constants  # noqa: E402

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
    """No network, no cache outside tmp_path. datasets reads its offline switch and cache folder at
    import, so they are set on its config too (the task files name a cache_dir in tmp_path)."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture
def one_thread():
    """Many small forwards: on 2 shared cores a second thread made this test 4x slower (105 s
    against 27 s, measured beside a running benchmark), so it runs on one and restores the rest."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_lm_eval_scores_eval_py_tokens(smol_dir, offline, one_thread, tmp_path, monkeypatch):
    tasks = {}
    for domain in ("legal", "health"):  # CUAD, WikiText-2, PubMedQA abstracts and questions
        tasks.update(L.write_tasks(smol_dir, domain, tmp_path, SEQ_LEN, WINDOWS, PUBMEDQA_N))
    assert set(tasks) == {"xpert_cuad", "xpert_wikitext2", "xpert_pubmedqa_abstracts",
                          "xpert_pubmedqa"}
    assert all(d["exact"] for docs in tasks.values() for d in docs)  # every round trip is exact
    # CUAD's window 5 starts with a whitespace token: lm-eval's empty-context path is tested too
    assert [d["window"] for d in tasks["xpert_cuad"] if d["prefix_id"] is not None] == [5]
    items = benchmarks.pubmedqa_sample(benchmarks.pubmedqa_items(paths.assets_dir()), PUBMEDQA_N)
    assert [d["pmid"] for d in tasks["xpert_pubmedqa"]] == [it["pmid"] for it in items]

    results = L.run_lm_eval(smol_dir, tasks, tmp_path, batch_size=8)
    ours = L.lm_eval_metrics(tasks, results)

    scores = []  # eval.py's own PubMedQA scoring records every answer's loglikelihood on the way

    class Recorded(evaluation.LogProb):
        def __call__(self, prompt, continuation):
            scores.append(super().__call__(prompt, continuation))
            return scores[-1]

    monkeypatch.setattr(evaluation, "LogProb", Recorded)
    model = LLaMA.from_pretrained(smol_dir)  # fp32 CPU, as the lm-eval side
    theirs = {**L.eval_py_metrics(smol_dir, "legal", SEQ_LEN, WINDOWS, PUBMEDQA_N, model=model),
              **L.eval_py_metrics(smol_dir, "health", SEQ_LEN, WINDOWS, PUBMEDQA_N, model=model)}
    for name in ("cuad_ppl", "wikitext2_ppl", "pubmedqa_abstracts_ppl"):
        assert ours[name]["windows"] == theirs[name]["windows"] == WINDOWS
        assert ours[name]["value"] == pytest.approx(theirs[name]["value"], rel=1e-4), name

    # PubMedQA: the same questions in the same order, each answer's loglikelihood, each pick
    assert len(scores) == 3 * PUBMEDQA_N
    picks = []
    for i, it in enumerate(items):
        ll = scores[3 * i:3 * i + 3]  # " yes", " no", " maybe", as benchmarks.score_choices asks
        assert results["xpert_pubmedqa"][it["pmid"]] == pytest.approx(ll, abs=1e-3), it["pmid"]
        picks.append(benchmarks.CHOICES[int(np.argmax(ll))])  # score_choices' rule
    assert ours["pubmedqa_acc"]["picks"] == picks
    for name in ("pubmedqa_acc", "pubmedqa_macro_f1"):
        assert ours[name]["value"] == theirs[name]["value"], name
