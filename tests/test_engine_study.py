"""The engine study rehearsed on the CPU: variants run in capped workers, failures are recorded, the study goes on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("open_clip")

ROOT = Path(__file__).resolve().parent.parent


def test_study_records_each_variant_and_survives_a_hang_a_crash_and_an_error(model_dir, tmp_path):
    out = tmp_path / "study"
    tasks = "setup,ort-baseline,selftest-sleep,selftest-crash,selftest-raise,ort-baseline-again"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "engine_study.py"),
            "--model-dir",
            str(model_dir),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch",
            "2",
            "--quick",
            "--min-time-s",
            "0.1",
            "--budget-s",
            "240",
            "--only",
            tasks,
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    study = json.loads((out / "engine_study.json").read_text())
    results = study["results"]
    assert results["selftest-sleep"]["status"] == "timeout"  # killed at its cap, the next task still ran
    assert results["selftest-crash"]["status"] == "crashed" and "code 3" in results["selftest-crash"]["error"]
    assert results["selftest-raise"]["status"] == "error" and "a failing variant" in results["selftest-raise"]["error"]
    baseline = results["ort-baseline"]["rows"][0]
    assert baseline["images_per_s"] > 0 and baseline["batch"] == 2
    assert baseline["parity"]["min_cosine"] > 0.999  # against open_clip fp32, on structured images
    assert "MatMul" in baseline["ort_nodes"]
    assert [r["variant"] for r in results["ort-baseline"]["rows"]] == ["", "host"]
    assert results["ort-baseline-again"]["status"] == "ok"
    summary = study["summary"]
    assert summary["baseline_spread"] is not None
    assert summary["targets"]["best_variant"] in ("ort-baseline", "ort-baseline-again")
    assert {"onnxruntime", "onnxruntime-gpu"} & set(study["environment"]["versions"])
    text = (out / "engine_study.txt").read_text()
    assert "ort-baseline" in text and "timeout" in text and "baseline timed twice" in text
    assert text.strip() in proc.stdout
