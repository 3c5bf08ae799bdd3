"""Gemma 3 270M (a base model, SentencePiece, 262k vocabulary) as the demo's student, end to end
(`pytest -m slow`): `edgedistill run --set student.model=pypi:gemma-3-270m`, nothing written by
hand. About 30 minutes on 2 cores with the models cached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgedistill.formats.parity import LOGIT_TOLERANCE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]


def test_gemma_3_270m_through_every_format(tmp_path):
    run_dir = tmp_path / "gemma"
    proc = subprocess.run([sys.executable, "-m", "edgedistill.cli", "run", "--run-dir", str(run_dir),
                           "--set", "student.model=pypi:gemma-3-270m"],
                          cwd=tmp_path, text=True, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((run_dir / "report.json").read_text())
    assert {a["format"] for a in data["artifacts"]} == {"ortgenai", "gguf"}
    for a in data["artifacts"]:
        p = a["parity"]  # the same chat ids, EOS a stop token, finite logits, on every artifact
        assert p["chat_prompt_ids_match"] and p["eos_is_stop_token"] and not p["non_finite_logits"], (a["id"], p)
        if a["id"] in ("ortgenai-fp32", "gguf-f16"):  # the merged student, converted
            assert p["max_abs_logit_diff"] <= LOGIT_TOLERANCE[a["id"].split("-")[1]]
        assert a["score"] is not None and "error" not in a["bench"]["cpu-x86"]
    assert data["student_merged"]["score"] > data["student_base"]["score"]
    # the template the run chose is the one every artifact carries
    config = (run_dir / "config.yaml").read_text()
    assert "chat_template: gemma" in config
