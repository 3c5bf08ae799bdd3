"""Parity judging: a full-precision export must be the merged model within its precision's logit
tolerance, and greedy divergences are forgiven only at near ties those logit differences explain;
a damaged model fails. Real runs on the tiny model through the HF runtime."""

from __future__ import annotations

import shutil

import pytest

from edgedistill.errors import ArtifactError
from edgedistill.formats import parity


def _parity(**over) -> dict:
    base = {"prompts": 4, "identical_generations": 4, "greedy_token_agreement": 1.0,
            "first_divergence": None, "divergence_margins": [None] * 4, "max_abs_logit_diff": 0.1,
            "chat_prompt_ids_match": True, "chat_prompt_mismatches": 0, "eos_is_stop_token": True,
            "lost_eos": 0, "stopped_at_eos": 4}
    return {**base, **over}


NEAR_TIE = {"identical_generations": 3, "greedy_token_agreement": 0.75, "first_divergence": 0,
            "divergence_margins": [None, None, None, 0.011]}


def test_an_f16_export_that_flips_a_near_tie_is_still_the_student(caplog):
    parity.judge("gguf-f16", _parity(**NEAR_TIE), parity.LOGIT_TOLERANCE["f16"])
    assert "near ties (reference margins [0.011]" in caplog.text


def test_a_divergence_its_logit_difference_cannot_explain_fails():
    with pytest.raises(ArtifactError, match="beyond what its logit difference explains"):
        parity.judge("gguf-f16", _parity(**{**NEAR_TIE, "divergence_margins": [None, None, None, 0.9]}),
                     parity.LOGIT_TOLERANCE["f16"])
    with pytest.raises(ArtifactError, match="beyond what"):  # no logits exposed: no tie can be shown
        parity.judge("ortgenai-fp32", _parity(**NEAR_TIE, max_abs_logit_diff=None), parity.LOGIT_TOLERANCE["fp32"])


def test_logits_beyond_the_precisions_tolerance_fail_even_with_equal_tokens():
    with pytest.raises(ArtifactError, match=r"differ from the merged model's by up to 0.05 \(tolerance 0.01\)"):
        parity.judge("onnx-fp32", _parity(max_abs_logit_diff=0.05), parity.LOGIT_TOLERANCE["fp32"])
    parity.judge("gguf-q4_k_m", _parity(**NEAR_TIE, max_abs_logit_diff=3.0), None)  # quantized: recorded only


def test_the_tokenizer_breaking_fails_any_artifact():
    with pytest.raises(ArtifactError, match="tokenizes differently on 1 of 4"):
        parity.judge("gguf-q4_k_m", _parity(chat_prompt_ids_match=False, chat_prompt_mismatches=1), None)


def test_a_copy_passes_and_a_damaged_copy_fails(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file, save_file

    prompts = [[{"role": "user", "content": "What is 2 + 2?"}],
               [{"role": "user", "content": "Name a river."}]]
    refs = parity.reference(tiny_model_dir, prompts, 8)
    same = shutil.copytree(tiny_model_dir, tmp_path / "same")
    result = parity.compare("hf", same, refs, 8)
    assert result["identical_generations"] == 2 and result["max_abs_logit_diff"] == 0.0
    parity.judge("onnx-fp32", result, parity.LOGIT_TOLERANCE["fp32"])

    damaged = shutil.copytree(tiny_model_dir, tmp_path / "damaged")
    weights = load_file(damaged / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    weights[name] = weights[name] + 0.05 * torch.randn(weights[name].shape, generator=torch.Generator().manual_seed(0))
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    result = parity.compare("hf", damaged, refs, 8)
    assert result["max_abs_logit_diff"] > parity.LOGIT_TOLERANCE["fp32"]
    with pytest.raises(ArtifactError, match="is not the student"):
        parity.judge("onnx-fp32", result, parity.LOGIT_TOLERANCE["fp32"])


def test_logit_difference_is_judged_where_generation_reads():
    """Prompt positions are teacher-forced, never sampled from (an f16 GGUF moved logits at the
    template's second token by 3.9): recorded, not judged. From the prompt's last token on,
    every logit counts."""
    import numpy as np

    ref = np.zeros((5, 4))
    art = ref.copy()
    art[1, 2] = 3.9  # a prompt position
    art[3, 0] = 0.05  # the prompt's last token: its logits pick the first generated token
    assert parity.logit_differences(art, ref, start=3) == pytest.approx((0.05, 3.9))
    art[4, 3] = -2.0  # a generated position, any token
    assert parity.logit_differences(art, ref, start=3) == pytest.approx((2.0, 3.9))
