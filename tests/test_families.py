"""The support matrix: a tiny random student of each family (tests/families.py, each with a
tokenizer of its family's kind: byte-level BPE or SentencePiece) through LoRA training (2 steps),
merge, every export and quantization with its parity check, and eval, as `edgedistill run` does
them; through full training (`train.method: full`, one step), merge and the ONNX fp32 export with
parity; and a tokenizer round trip (the same ids from the HF
tokenizer, llama.cpp and ORT GenAI on a text with digits, accents, emoji, whitespace runs and the
chat template's special tokens).

Each family's result (per artifact and per training method: works, or why not) is written to
docs/support-matrix.json, which scripts/gen_support_table.py renders into the README (checked by
the table test). A combination a converter cannot take must be refused before any work by
:func:`edgedistill.formats.support.check_student` (exit 2 naming family and format): the tests
fail on any failure that the preflight did not announce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_recipe
from families import (FAMILIES, TOKENIZER_KINDS, build_family_model, byte_level_tokenizer,
                      sentencepiece_tokenizer)
from trainkit import records, write_data
from edgedistill.artifacts import list_artifacts
from edgedistill.recipes import load_recipe
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.formats import support
from edgedistill.rundir import Run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "support-matrix.json"
QUANTIZE = {"onnx": ["int8", "int4"], "ortgenai": ["int4"], "gguf": ["q8_0", "q4_k_m"]}
ARTIFACTS = {"onnx": ["onnx-fp32", "onnx-int8", "onnx-int4"],
             "ortgenai": ["ortgenai-fp32", "ortgenai-int4"],
             "gguf": ["gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]}
ROUNDTRIP = "Año 2024: 3.14159 café naïve 🙂🚀  two  spaces\tand\ttabs\n\nnew lines 1234567890"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Path]:
    """The Gemma SentencePiece and the byte-level BPE tokenizers, built once for every family."""
    return {"spm_dir": sentencepiece_tokenizer(tmp_path_factory.mktemp("spm")),
            "bpe_dir": byte_level_tokenizer(tmp_path_factory.mktemp("bpe"))}


@pytest.fixture
def spm_dir(tokenizers) -> Path:
    return tokenizers["spm_dir"]


def _stage_of(art_id: str) -> str:
    fmt, precision = art_id.split("-", 1)
    full = {"onnx": "fp32", "ortgenai": "fp32", "gguf": "f16"}[fmt]
    return f"export:{fmt}" if precision == full else f"quantize:{art_id}"


def _reason(entry: dict | None, default: str) -> str:
    """One line: the exception a converter's log ends with, else the error's first line."""
    if not entry or not entry.get("error"):
        return default
    err = entry["error"]
    found = re.findall(r"^\s*(\w*(?:Error|Exception)\b[^\n]*)", err, re.M)
    return (found[-1] if found else err.splitlines()[0]).strip()[:200]


def _roundtrip(run: Run, template_text: str) -> dict:
    """The same text (and a chat prompt) through the HF tokenizer, llama.cpp and ORT GenAI."""
    from transformers import AutoTokenizer

    from edgedistill import runtimes

    tok = AutoTokenizer.from_pretrained(run.merged_dir)
    arts = {a["id"]: a for a in list_artifacts(run)}
    specials = f"{tok.bos_token or ''}{ROUNDTRIP}{tok.eos_token}"
    ids = {"hf": tok(specials, add_special_tokens=False).input_ids}
    msgs = [{"role": "user", "content": ROUNDTRIP}]
    chat = {"hf": list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))}
    if "gguf-f16" in arts:
        import llama_cpp

        llm = llama_cpp.Llama(str(arts["gguf-f16"]["path"]), vocab_only=True, verbose=False)
        ids["llama.cpp"] = llm.tokenize(specials.encode(), add_bos=False, special=True)
        llm.close()
        with runtimes.load("gguf", arts["gguf-f16"]["path"]) as rt:
            chat["llama.cpp"] = rt.chat_prompt_ids(msgs)
    if "ortgenai-fp32" in arts:
        import onnxruntime_genai as og

        model = og.Model(str(arts["ortgenai-fp32"]["path"]))
        ids["ortgenai"] = list(og.Tokenizer(model).encode(specials))
        del model
        with runtimes.load("ortgenai", arts["ortgenai-fp32"]["path"]) as rt:
            chat["ortgenai"] = rt.chat_prompt_ids(msgs)
    differ = sorted({k for k, v in ids.items() if v != ids["hf"]} | {k for k, v in chat.items() if v != chat["hf"]})
    return {"runtimes": sorted(ids), "match": not differ, "differ": differ,
            "ids": {k: v for k, v in ids.items()} if differ else None}


def _record(name: str, entry: dict) -> None:
    """``entry``'s keys into the family's row; ``training`` per method, so that either test can
    run alone."""
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    row = dict(data.get(name, {}))
    for key, value in entry.items():
        row[key] = {**row.get(key, {}), **value} if key == "training" else value
    if data.get(name) != row:
        data[name] = row
        RESULTS.write_text(json.dumps(dict(sorted(data.items())), indent=2, ensure_ascii=False) + "\n")


def _start(name: str, root: Path, tokenizers: dict, monkeypatch, train: dict,
           export: dict) -> tuple[Run, dict, dict[str, str]]:
    """The family's tiny student, its recipe through the preflight (a format it refuses must be
    refused before any work, naming family and format; the rest must pass), and a run of the
    formats left with train/eval data written as the generate stage would."""
    from edgedistill.teacher import generate

    monkeypatch.setattr(generate, "generate", lambda run, force=False: None)  # answers written below
    model = build_family_model(name, root / "model", **tokenizers)
    config = json.loads((model / "config.json").read_text())
    recipe_path = write_recipe(root / "recipe", student={"model": str(model)}, targets=[],
                               train={"batch_size": 4, "max_length": 128, **train}, export=export,
                               eval={"max_new_tokens": 8}, gates={"min_retention": None})
    recipe = load_recipe(recipe_path)
    refused = support.refusals(config, list(recipe.export.formats))
    if refused:
        with pytest.raises(ConfigError) as e:
            support.check_student(recipe, {"generate", "train", "export"})
        assert support.family(config) in str(e.value)
        assert all(f"{fmt}:" in str(e.value) for fmt in refused)
    formats = [f for f in recipe.export.formats if f not in refused]
    recipe = load_recipe(recipe_path, [f"export.formats=[{','.join(formats)}]"])
    support.check_student(recipe, {"generate", "train", "export"})
    run = Run.create(root / "run", recipe)
    write_data(run, records(12), records(4, seed=1, prefix="e"))
    return run, config, refused


def _results(run: Run, refused: dict[str, str], wanted: dict[str, list[str]]) -> dict[str, dict]:
    """Each wanted artifact: works, refused (and why), or fails (and why)."""
    arts = {a["id"] for a in list_artifacts(run)}
    stages = run.read_manifest()["stages"]
    result: dict[str, dict] = {}
    for fmt, ids in wanted.items():
        for art_id in ids:
            if fmt in refused:
                result[art_id] = {"status": "refused", "reason": refused[fmt]}
            elif art_id in arts:
                result[art_id] = {"status": "works"}
            else:
                result[art_id] = {"status": "fails", "reason": _reason(stages.get(_stage_of(art_id)),
                                                                       "not built")}
    return result


def _pipeline(run: Run, until: str) -> EdgeDistillError | None:
    from edgedistill.pipeline import run_pipeline

    try:
        run_pipeline(run, until=until)
    except EdgeDistillError as e:
        return e
    return None


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_through_every_format(name, tmp_path, tokenizers, monkeypatch):
    """LoRA (2 steps), merge, every export and quantization with parity, eval; the round trip."""
    run, config, refused = _start(name, tmp_path, tokenizers, monkeypatch,
                                  train={"max_steps": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                                  export={"parity_prompts": 2, "parity_max_new_tokens": 8,
                                          "quantize": QUANTIZE})
    failure = _pipeline(run, until="eval")
    result = _results(run, refused, ARTIFACTS)
    stages = run.read_manifest()["stages"]
    trip = _roundtrip(run, "") if "merge" in run.done_stages() else {"match": False, "differ": ["no merge"]}
    lora = {"status": "works" if "merge" in run.done_stages() else "fails"}
    if lora["status"] == "fails":
        lora["reason"] = _reason(stages.get("train") or stages.get("merge"), str(failure))
    entry = {"model_type": config["model_type"], "architecture": config["architectures"][0],
             "tokenizer": TOKENIZER_KINDS[FAMILIES[name][2]], "training": {"lora": lora},
             "artifacts": result, "tokenizer_roundtrip": {k: trip[k] for k in ("match", "differ")},
             "eval": stages.get("eval", {}).get("status")}
    _record(name, entry)
    fails = {k: v["reason"] for k, v in result.items() if v["status"] == "fails"}
    assert not fails, f"{name}: failed without being refused up front: {fails} ({failure})"
    assert entry["eval"] == "done"
    assert trip["match"], f"{name}: token ids differ in {trip['differ']}: {trip.get('ids')}"
    for art in list_artifacts(run):
        assert art["parity"]["chat_prompt_ids_match"] is True, (name, art["id"])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_full_training(name, tmp_path, tokenizers, monkeypatch):
    """train.method: full (one step, every weight), merge, and the ONNX fp32 export with its
    parity check. Every export reads only the merged directory, which merge writes the same way
    whichever method trained it, so the LoRA test's exports and quantizations stand for both; this
    one proves the method's own parts (training each architecture's every weight, merging a fully
    trained model) and that the result exports, at the cost of the cheapest format (~1 s)."""
    from safetensors.numpy import load_file

    run, _, refused = _start(name, tmp_path, tokenizers, monkeypatch,
                             train={"method": "full", "max_steps": 1},
                             export={"formats": ["onnx"], "parity_prompts": 2, "parity_max_new_tokens": 8})
    failure = _pipeline(run, until="export")
    result = _results(run, refused, {"onnx": ["onnx-fp32"]})
    full: dict = {"status": "works", "artifacts": sorted(k for k, v in result.items() if v["status"] == "works")}
    stages = run.read_manifest()["stages"]
    if "merge" not in run.done_stages():
        full = {"status": "fails", "reason": _reason(stages.get("train") or stages.get("merge"), str(failure))}
    elif any(v["status"] == "fails" for v in result.values()):
        full = {"status": "fails", "reason": "; ".join(f"{k}: {v['reason']}" for k, v in result.items()
                                                     if v["status"] == "fails")}
    _record(name, {"training": {"full": full}})
    assert full["status"] == "works", f"{name}: {full['reason']} ({failure})"
    base = load_file(tmp_path / "model" / "model.safetensors")
    merged = load_file(run.merged_dir / "model.safetensors")
    assert base.keys() == merged.keys()
    moved = [k for k in base if (base[k] != merged[k]).any()]
    assert any("embed" in k for k in moved) and any("layers.0." in k for k in moved), moved
    for art in list_artifacts(run):
        assert art["parity"]["chat_prompt_ids_match"] is True, (name, art["id"])


def test_the_readme_support_table_is_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/gen_support_table.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _phi3_longrope_without_factors(out: Path) -> Path:
    """Phi-3 with a context longer than its original one and no rope_scaling factors."""
    model = build_family_model("Phi-3", out)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(max_position_embeddings=8192, original_max_position_embeddings=4096, rope_scaling=None)
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_longrope_without_factors_is_refused_before_training(tmp_path):
    from click.testing import CliRunner

    from edgedistill.cli import cli

    model = _phi3_longrope_without_factors(tmp_path / "phi3")
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(model)})
    result = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")][0]
    assert "(Phi-3 (LongRoPE))" in error and "ortgenai:" in error and "long_factor" in error
    assert "Nothing was started" in result.stderr and "export.formats=[onnx,gguf]" in result.stderr
    assert not (tmp_path / "run").exists()
    # the other formats take it: with ortgenai left out the preflight lets it through
    ok = CliRunner().invoke(cli, ["run", str(recipe), "--run-dir", str(tmp_path / "run"),
                                  "--set", "export.formats=[onnx,gguf]", "--until", "generate"])
    assert "cannot be exported" not in ok.output


def test_the_refusal_is_what_the_builder_would_do(tmp_path):
    """Bypassing the preflight, the ORT GenAI builder does fail on that model (after training, in
    a real run): the refusal stands for a real failure, not a guess."""
    from edgedistill.errors import ArtifactError
    from edgedistill.formats.export import export

    model = _phi3_longrope_without_factors(tmp_path / "phi3")
    run = Run.create(tmp_path / "run", load_recipe(write_recipe(
        tmp_path / "recipe", export={"formats": ["ortgenai"], "parity_prompts": 1})))
    with run.begin("merge") as stage:
        shutil.copytree(model, stage.output(run.merged_dir))
    with pytest.raises(ArtifactError) as e:
        export(run)
    assert "multi_cache" in str(e.value)


def test_an_architecture_a_converter_does_not_name_is_refused():
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    refused = support.refusals(config, ["onnx", "ortgenai"])
    assert list(refused) == ["ortgenai"] and "GPT2LMHeadModel" in refused["ortgenai"]
    assert "LlamaForCausalLM" in refused["ortgenai"]  # what it takes is listed
    assert support.family(config) == "GPT-2"


def test_a_sentencepiece_gguf_student_imports_for_every_exporter(tmp_path, spm_dir, monkeypatch):
    """A Gemma 3 student given as a GGUF (written by llama.cpp's converter from the tiny model):
    its import holds a real tokenizer.model and a tokenizer.json that encodes as llama.cpp does,
    and goes through the GGUF and ORT GenAI exports with matching chat ids."""
    import sentencepiece

    from edgedistill.formats import gguf
    from edgedistill.formats.export import export
    from edgedistill.train.student import PROBE, import_gguf

    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    model = build_family_model("Gemma 3", tmp_path / "model", spm_dir=spm_dir)
    src = tmp_path / "gemma3.gguf"
    gguf.convert(model, src, "f32", gguf.converter(), tmp_path / "convert.log")
    imported = import_gguf(src, tmp_path / "imported")
    sentencepiece.SentencePieceProcessor(model_file=str(imported / "tokenizer.model"))  # parses

    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(imported)
    llm = llama_cpp.Llama(str(src), vocab_only=True, verbose=False)
    for text in (PROBE, ROUNDTRIP):
        assert tok(text, add_special_tokens=False).input_ids == llm.tokenize(
            text.encode(), add_bos=False, special=True)
    llm.close()

    run = Run.create(tmp_path / "run", load_recipe(write_recipe(
        tmp_path / "recipe", export={"formats": ["ortgenai", "gguf"], "parity_prompts": 2,
                                     "parity_max_new_tokens": 8})))
    with run.begin("merge") as stage:
        shutil.copytree(imported, stage.output(run.merged_dir))
    export(run)
    arts = {a["id"]: a for a in list_artifacts(run)}
    assert set(arts) == {"ortgenai-fp32", "gguf-f16"}
    assert all(a["parity"]["chat_prompt_ids_match"] for a in arts.values())
