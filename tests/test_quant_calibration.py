"""Calibrated quantization and its measured loss, with the tiny in-process student and real
llama.cpp, onnxruntime and ONNX Runtime GenAI: the importance matrix, GPTQ int4, the leakage
check, and the KL divergence every quantized artifact records."""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.artifacts import list_artifacts
from edgedistill.recipes import load_recipe
from edgedistill.data import read_jsonl, write_jsonl
from edgedistill.errors import ConfigError, DataError
from edgedistill.formats.export import export
from edgedistill.formats.quant_loss import Reference, measure
from edgedistill.formats.quantize import quantize
from edgedistill.rundir import Run

SYSTEM = {"role": "system", "content": "Reply with the answer only."}
EXPORT = {"parity_prompts": 2, "parity_max_new_tokens": 8,
          "quantize": {"onnx": ["int4"], "gguf": ["q8_0", "q4_k_m"], "ortgenai": ["int4"],
                       "calibration": "task", "algo": "gptq"}}


def record(i: int, split: str) -> dict:
    question = {"role": "user", "content": f"What is {i} plus {i + 3}?"}
    return {"id": f"{split}{i}", "messages": [SYSTEM, question],
            "response": str(2 * i + 3), "answer": str(2 * i + 3)}


def make_run(root: Path, model_dir: Path, **quant) -> Run:
    exp = {**EXPORT, "quantize": {**EXPORT["quantize"], **quant}}
    run = Run.create(root / "run", load_recipe(write_recipe(root / "recipe", export=exp)))
    write_jsonl(run.train_data, [record(i, "t") for i in range(24)])
    write_jsonl(run.eval_data, [record(i, "e") for i in range(100, 110)])
    with run.begin("merge") as stage:
        shutil.copytree(model_dir, stage.output(run.merged_dir))
    return run


@pytest.fixture(scope="module")
def cal_run(tmp_path_factory, tiny_model_dir) -> Run:
    run = make_run(tmp_path_factory.mktemp("calibrated"), tiny_model_dir)
    export(run)
    quantize(run)
    return run


def arts(run: Run) -> dict:
    return {a["id"]: a for a in list_artifacts(run)}


def test_calibration_is_recorded_with_source_tokens_and_sha256(cal_run):
    entry = cal_run.stage_entry("quantize:calibration")
    cal = entry["metrics"]["calibration"]
    assert cal["source"] == "task" and cal["samples"] == 24 and cal["of"] == 24
    assert cal["tokens"] > 24 * 10 and len(cal["sha256"]) == 64
    assert cal["leak_check"] == {"eval_prompts": 10, "overlap": 0}
    assert "data/train.jsonl" in entry["inputs"] and "data/eval.jsonl" in entry["inputs"]
    saved = json.loads((cal_run.export_dir / "calibration" / "calibration.json").read_text())
    assert sum(map(len, saved["ids"])) == cal["tokens"]


def test_imatrix_covers_every_quantized_tensor_with_its_input_dimension(cal_run):
    from gguf import GGUFReader

    path = cal_run.export_dir / "calibration" / "imatrix.gguf"
    model = GGUFReader(str(cal_run.gguf_dir / "model-f16.gguf"))
    matrix = {t.name: t for t in GGUFReader(str(path)).tensors}
    weights = [t for t in model.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    assert len(weights) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and output.weight
    tokens = cal_run.stage_entry("quantize:calibration")["metrics"]["calibration"]["tokens"]
    for t in weights:
        sums, counts = matrix[f"{t.name}.in_sum2"], matrix[f"{t.name}.counts"]
        assert sums.n_elements == int(t.shape[0]), t.name  # the weight's input dimension (ne[0])
        assert float(np.asarray(counts.data).reshape(-1)[0]) == tokens
        assert np.all(np.asarray(sums.data) > 0)
    # q, k and v read the same normalised hidden state
    q, v = (np.asarray(matrix[f"blk.0.attn_{x}.weight.in_sum2"].data) for x in ("q", "v"))
    assert np.allclose(q, v)
    imx = cal_run.stage_entry("quantize:imatrix")["metrics"]["imatrix"]
    assert imx["missing"] == [] and imx["entries"] == imx["matrix_weights"] == 15


def test_imatrix_file_is_what_llama_cpp_tools_read(cal_run):
    """Loaded by ggml's own GGUF reader (the one llama-quantize --imatrix uses), with the keys and
    tensor pairs tools/imatrix writes."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    lib.gguf_find_key.restype = ctypes.c_int64
    lib.gguf_find_key.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_get_val_str.restype = ctypes.c_char_p
    lib.gguf_get_val_str.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    path = cal_run.export_dir / "calibration" / "imatrix.gguf"
    ctx = lib.gguf_init_from_file(str(path).encode(), Params(True, None))
    assert ctx, "ggml could not read the imatrix file"
    try:
        assert lib.gguf_get_val_str(ctx, lib.gguf_find_key(ctx, b"general.type")) == b"imatrix"
        for key in (b"imatrix.datasets", b"imatrix.chunk_count", b"imatrix.chunk_size"):
            assert lib.gguf_find_key(ctx, key) >= 0, key
        assert lib.gguf_get_n_tensors(ctx) == 2 * 15
    finally:
        lib.gguf_free(ctx)


def test_calibrated_gguf_loads_in_llama_cpp_and_its_kld_is_recorded(cal_run, tmp_path):
    from gguf import GGUFReader

    from edgedistill.formats.variants import gguf_variant

    q4 = arts(cal_run)["gguf-q4_k_m"]
    cands = cal_run.stage_entry("quantize:gguf-q4_k_m")["metrics"]["quant_loss_candidates"]
    assert set(cands) == {"none", "task"}  # both measured, through llama.cpp
    for label, loss in cands.items():
        assert loss["calibration"] == label and loss["examples"] == 10
        assert 0 <= loss["kld"] and loss["kld_ci95"][0] <= loss["kld"] <= loss["kld_ci95"][1]
        assert 0 <= loss["top1_agreement"] <= 1 and loss["kld_whole"] >= 0
    kept = q4["quant_loss"]
    assert kept == cands[q4["calibration_source"]]
    assert kept["kld"] == min(c["kld"] for c in cands.values()) or kept["calibration"] == "none"
    assert set(kept) >= {"kld", "kld_ci95", "top1_agreement", "kld_whole", "top1_agreement_whole",
                         "calibration"}
    assert "quant_loss_candidates" not in cal_run.stage_entry("quantize:gguf-q8_0")["metrics"]  # ignores one
    assert arts(cal_run)["gguf-q8_0"]["quant_loss"]["calibration"] == "none"
    # calibrated variants themselves, low-bit ones too: llama.cpp loads each, generates, and each
    # says what it was fed (hidden size 64 is no multiple of 256: k- and i-quants fall back here)
    imx = cal_run.export_dir / "calibration" / "imatrix.gguf"
    for qtype in ("q4_0", "q3_k_s", "q2_k", "iq4_xs"):
        out = tmp_path / f"{qtype}-imatrix.gguf"
        extra = gguf_variant(cal_run, qtype, out, imx)
        assert extra["imatrix"] == "export/calibration/imatrix.gguf" and extra["tensor_types"]
        fields = GGUFReader(str(out)).fields
        assert int(fields["quantize.imatrix.entries_count"].parts[-1][0]) == 15
        with runtimes.load("gguf", out) as rt:
            assert rt.generate([SYSTEM, {"role": "user", "content": "What is 2 plus 5?"}], 4).token_ids
    with pytest.raises(ConfigError, match="needs an importance matrix"):
        gguf_variant(cal_run, "iq2_xxs", tmp_path / "iq2.gguf", None)


def test_int4_is_built_with_and_without_gptq_and_both_are_recorded(cal_run):
    a = arts(cal_run)
    for art_id, data_free in (("onnx-int4", "rtn"), ("ortgenai-int4", "k_quant")):
        metrics = cal_run.stage_entry(f"quantize:{art_id}")["metrics"]
        cands = metrics["quant_loss_candidates"]
        assert set(cands) == {"none", "task"}, art_id
        kept = a[art_id]
        assert kept["algo"] == ("gptq" if kept["calibration_source"] == "task" else data_free)
        assert kept["quant_loss"]["calibration"] == kept["calibration_source"]
        if kept["calibration_source"] == "task":  # kept only when it lowered the answer KLD
            assert cands["task"]["kld"] < cands["none"]["kld"]
            assert kept["calibration"]["sha256"] == metrics["artifact"]["calibration"]["sha256"]
    with runtimes.load("ortgenai", a["ortgenai-int4"]["path"]) as rt:
        assert rt.generate([SYSTEM, {"role": "user", "content": "What is 1 plus 4?"}], 4).token_ids


def test_gptq_int4_keeps_the_sensitive_matmuls_at_8_bits(tmp_path, cal_run):
    import onnx

    from edgedistill.formats.calibration import load
    from edgedistill.formats.variants import onnx_variant

    ids = load(cal_run.export_dir / "calibration" / "calibration.json").select_tokens(200)
    assert 0 < sum(map(len, ids)) <= 200
    path = onnx_variant(cal_run, "int4", tmp_path, "gptq", ids)
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"}
    assert bits["/model/layers.0/self_attn/v_proj/MatMul_Q8"] == 8  # the first eighth of the layers
    assert bits["/model/layers.0/mlp/down_proj/MatMul_Q8"] == 8
    assert bits["/model/layers.1/mlp/down_proj/MatMul_Q4"] == 4
    assert sum(b == 4 for b in bits.values()) == len(bits) - 2
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def test_gptq_hessians_from_one_run_per_sequence_give_the_same_weights(tmp_path, cal_run,
                                                                      monkeypatch, caplog):
    """onnxruntime runs the whole model once per MatMul input per sequence to collect GPTQ's
    Hessians; one_pass answers those from one run per sequence: the same packed weights."""
    import contextlib
    import logging
    import types

    import onnx
    from onnx import numpy_helper

    from edgedistill.formats import gptq
    from edgedistill.formats.calibration import load
    from edgedistill.formats.variants import onnx_variant

    def packed(path: Path) -> dict:
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    ids = load(cal_run.export_dir / "calibration" / "calibration.json").select_tokens(200)
    (tmp_path / "one").mkdir()
    (tmp_path / "lib").mkdir()
    monkeypatch.setattr(gptq, "WINDOW", 64)  # several sequences, each answered from its own run
    with caplog.at_level(logging.INFO, logger="edgedistill.formats.gptq"):
        fast = packed(onnx_variant(cal_run, "int4", tmp_path / "one", "gptq", ids))
    runs = [r.args for r in caplog.records if r.msg.startswith("GPTQ: %d model runs")]
    assert runs and runs[-1][0] == runs[-1][1] >= 3  # one run per calibration sequence

    @contextlib.contextmanager
    def library_runs():
        yield types.SimpleNamespace(sessions=[])

    monkeypatch.setattr(gptq, "one_pass", library_runs)
    slow = packed(onnx_variant(cal_run, "int4", tmp_path / "lib", "gptq", ids))
    assert fast.keys() == slow.keys() and any("Q4" in k for k in fast)
    for name, value in slow.items():
        np.testing.assert_array_equal(fast[name], value, err_msg=name)


def test_gptq_takes_a_model_past_2_gb_from_a_file(tmp_path, cal_run, monkeypatch):
    """onnxruntime's GPTQ has no file to write its augmented copy beside for a model past 2 GB
    given in memory (a 0.5B student in fp32: "NoneType + str"); such a model goes to it as a
    file with external data: here with the limit lowered, the same packed weights."""
    import onnx
    from onnx import numpy_helper

    from edgedistill.formats import gptq
    from edgedistill.formats.calibration import load
    from edgedistill.formats.variants import onnx_variant

    def packed(path: Path) -> dict:
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    ids = load(cal_run.export_dir / "calibration" / "calibration.json").select_tokens(200)
    (tmp_path / "memory").mkdir()
    (tmp_path / "file").mkdir()
    in_memory = packed(onnx_variant(cal_run, "int4", tmp_path / "memory", "gptq", ids))
    saved = []
    real = gptq._as_file_if_large
    from onnxruntime.quantization.neural_compressor import onnx_model as inc_model

    monkeypatch.setattr(gptq, "LARGE", 0)
    monkeypatch.setattr(inc_model, "MAXIMUM_PROTOBUF", 0)  # and onnxruntime's GPTQ takes its large-model path
    monkeypatch.setattr(gptq, "_as_file_if_large", lambda m, folder: saved.append(real(m, folder)) or saved[-1])
    from_file = packed(onnx_variant(cal_run, "int4", tmp_path / "file", "gptq", ids))
    assert saved and isinstance(saved[0], str) and not Path(saved[0]).exists()  # a temporary file, gone
    assert from_file.keys() == in_memory.keys()
    for name, value in in_memory.items():
        np.testing.assert_array_equal(from_file[name], value, err_msg=name)


def test_one_pass_session_hands_each_output_out_once_and_passes_the_rest_through():
    import types

    from edgedistill.formats.gptq import _OnePassSession

    class Session:
        def __init__(self):
            self.calls: list = []

        def get_outputs(self):
            return [types.SimpleNamespace(name=n) for n in ("a", "b")]

        def run(self, names, feed):
            self.calls.append(list(names) if names else names)
            return [np.full(2, ord(n)) for n in (names or ["a", "b"])]

    session, feed = Session(), {"x": 1}
    s = _OnePassSession(session)
    assert s.run(["a"], feed)[0][0] == ord("a") and s.run(["b"], feed)[0][0] == ord("b")
    assert session.calls == [["a", "b"]]  # one run answered both
    assert s.run(["a"], feed)[0][0] == ord("a")  # asked again: a real run, not a stale answer
    assert s.run(None, feed)[1][0] == ord("b") and s.runs == 3
    assert s.get_outputs()[0].name == "a"


def test_a_deliberately_broken_artifact_shows_a_large_kld(cal_run, tmp_path):
    from gguf import GGUFReader

    broken = tmp_path / "broken.gguf"
    shutil.copy(cal_run.gguf_dir / "model-f16.gguf", broken)
    rng = np.random.default_rng(0)
    for t in GGUFReader(str(broken), "r+").tensors:
        if t.name.endswith("ffn_down.weight"):  # every MLP writes noise into the residual stream
            t.data[...] = rng.normal(0, 1, t.data.shape).astype(t.data.dtype)
    loss = measure(Reference(cal_run), "gguf", broken, "none")
    good = arts(cal_run)["gguf-q8_0"]["quant_loss"]
    assert loss["kld"] > 0.01 and loss["kld"] > 100 * max(good["kld"], 1e-5)
    assert loss["top1_agreement"] < good["top1_agreement"]


def test_every_position_of_the_batched_logits_is_right(cal_run):
    """llama.cpp in one batch with every position's logits; ORT GenAI from one append."""
    ids = [c for c in Reference(cal_run).load()[0].ids]
    a = arts(cal_run)
    with runtimes.load("hf", cal_run.merged_dir) as hf:
        want = hf.logits(ids)
    for kind, art_id in (("gguf", "gguf-f16"), ("ortgenai", "ortgenai-fp32")):
        with runtimes.load(kind, a[art_id]["path"]) as rt:
            got = rt.logits(ids)
        assert got.shape == want.shape, kind
        assert np.abs(got - want).max() < 0.05, kind


def test_up_to_date_calibrated_artifacts_are_skipped(cal_run):
    before = cal_run.read_manifest()["stages"]
    quantize(cal_run)
    after = cal_run.read_manifest()["stages"]
    assert {k: v.get("finished_at") for k, v in before.items()} == \
        {k: v.get("finished_at") for k, v in after.items()}


def _snapshot(run: Run) -> dict:
    return {p.relative_to(run.root).as_posix(): p.stat().st_mtime_ns
            for p in run.root.rglob("*") if p.is_file() and p.name not in (".lock", ".manifest.lock")}


def test_leakage_check_refuses_an_eval_prompt_through_the_cli(tmp_path, tiny_model_dir):
    from edgedistill.cli import cli

    run = make_run(tmp_path, tiny_model_dir, onnx=[], ortgenai=[])
    export(run, formats=["gguf"])
    leaked = read_jsonl(run.eval_data)[3]
    write_jsonl(run.train_data, read_jsonl(run.train_data) + [{**leaked, "id": "sneaky"}])
    before, manifest = _snapshot(run), run.manifest_path.read_text()
    result = CliRunner().invoke(cli, ["quantize", str(run.root)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "overlaps the eval split" in result.output and "'sneaky'" in result.output
    assert "calibration=none" in result.output  # the way out
    assert _snapshot(run) == before and run.manifest_path.read_text() == manifest
    assert not (run.export_dir / "calibration").exists()


def test_generic_text_calibration_is_checked_too(tmp_path, tiny_model_dir):
    from edgedistill.formats import calibration

    run = make_run(tmp_path, tiny_model_dir)
    text = tmp_path / "generic.txt"
    text.write_text("Rivers run to the sea.\n\nMountains rise.\n" * 40)
    cal = calibration.build(run, f"text:{text}", 8, 256)
    assert cal.source == f"text:{text}" and 1 <= len(cal.ids) <= 8
    assert all(len(i) <= calibration.TEXT_WINDOW for i in cal.ids)
    text.write_text(text.read_text() + "\nQuiz: what is 104 plus 107? Think.\n")
    with pytest.raises(DataError, match="overlaps the eval split"):
        calibration.check_no_leak(run, f"text:{text}")


def test_calibration_none_builds_one_variant_and_still_measures_it(tmp_path, tiny_model_dir):
    run = make_run(tmp_path, tiny_model_dir, calibration="none", onnx=[], ortgenai=[], gguf=["q4_0"])
    export(run, formats=["gguf"])
    quantize(run)
    stages = run.read_manifest()["stages"]
    assert "quantize:calibration" not in stages and "quantize:imatrix" not in stages
    assert "quant_loss_candidates" not in stages["quantize:gguf-q4_0"]["metrics"]
    assert arts(run)["gguf-q4_0"]["quant_loss"]["calibration"] == "none"


def test_calibration_key_validates(tmp_path):
    good = load_recipe(write_recipe(tmp_path / "a", export={"quantize": {"calibration": "text:x.txt"}}))
    assert good.export.quantize.calibration == f"text:{Path('x.txt').resolve()}"
    with pytest.raises(ConfigError, match="none, task or text:FILE"):
        load_recipe(write_recipe(tmp_path / "b", export={"quantize": {"calibration": "eval"}}))
    with pytest.raises(ConfigError, match="algo"):
        load_recipe(write_recipe(tmp_path / "c", export={"quantize": {"algo": "awq"}}))


def test_gptq_as_used_propagates_rounding_error_unlike_plain_onnxruntime():
    """onnxruntime 1.32's GPTQ equals round-to-nearest (it reads a zero triangle of its inverse
    Hessian factor); the corrected call must beat RTN on a correlated layer, and leave the
    library as it was afterwards."""
    from onnxruntime.quantization.neural_compressor import weight_only as wo

    from edgedistill.formats import gptq

    plain = gptq._layer_error_ratio(wo)
    with gptq.ort_gptq():
        assert gptq._layer_error_ratio(wo) < 0.5
    assert wo.np is np and gptq._layer_error_ratio(wo) == pytest.approx(plain)
    assert gptq.pack([[1, 2, 3], [4, 5], [6]], 4) == [[1, 2, 3, 4], [5, 6]]


def test_a_tied_lm_head_gives_its_statistics_to_the_embeddings(tmp_path):
    """With tied embeddings the converter writes no output.weight; llama.cpp multiplies by
    token_embd.weight instead, so that is where the head's input statistics go."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from edgedistill.formats import gguf, imatrix
    from tiny import TINY_TOKENIZER

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, tie_word_embeddings=True))
    model.save_pretrained(tmp_path / "tied")
    tok.save_pretrained(tmp_path / "tied")
    conv = gguf.converter()
    gguf.convert(tmp_path / "tied", tmp_path / "tied.gguf", "f16", conv, tmp_path / "convert.log")
    stats = imatrix.collect(tmp_path / "tied", [list(range(5, 40))])
    written = imatrix.write(stats, tmp_path / "tied.gguf", tmp_path / "imatrix.gguf", "task", 1, 35, conv)
    assert written["mapped"]["lm_head"] == "token_embd.weight" and "output.weight" not in written["tensors"]
    cover = imatrix.coverage(written)
    assert cover["missing"] == [] and cover["entries"] == cover["matrix_weights"] == 8
    assert imatrix.read(tmp_path / "imatrix.gguf")["token_embd.weight"].shape == (32,)


def test_batched_imatrix_sums_only_real_tokens(tmp_path):
    """Sequences of different lengths collected in right-padded batches give the sums and counts
    of one forward per sequence: the padding never enters them."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgedistill.formats import imatrix

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "m")
    seqs = [list(range(3, 3 + n)) for n in (5, 17, 9, 30, 2)]
    batched = imatrix.collect(tmp_path / "m", seqs, batch_size=3)
    single = imatrix.collect(tmp_path / "m", seqs, batch_size=1)
    assert batched.keys() == single.keys() and len(batched) == 2 * 7 + 1
    for name, (total, count) in single.items():
        assert batched[name][1] == count == sum(map(len, seqs))
        np.testing.assert_allclose(batched[name][0], total, rtol=1e-4)


def test_leak_check_matches_whole_prompts_not_fragments(tmp_path):
    from edgedistill.formats.calibration import check_no_leak

    run = Run.create(tmp_path / "run", load_recipe(write_recipe(tmp_path / "recipe")))

    def chat(i, text):
        return {"id": i, "messages": [SYSTEM, {"role": "user", "content": text}], "response": "ok"}

    write_jsonl(run.eval_data, [chat("e1", "Hi"), chat("e2", "What is the capital of France?")])
    write_jsonl(run.train_data, [chat("t1", "Say this to him"), chat("t2", "What is the capital of Spain?")])
    assert check_no_leak(run, "task") == {"eval_prompts": 2, "overlap": 0}  # shared system turn ignored
    for leaking in ("  hi ", "Quiz: what is the CAPITAL of France ? Then Spain."):
        write_jsonl(run.train_data, [chat("t1", "Say this to him"), chat("t3", leaking)])
        with pytest.raises(DataError, match="'t3' holds eval prompt"):
            check_no_leak(run, "task")


def test_the_kld_gate_fails_deliberately_broken_artifacts(tmp_path, tiny_model_dir, monkeypatch):
    """Through the stages as a pipeline runs them, two artifacts broken right after llama.cpp's
    quantizer wrote them: q4_0 with the rows of its MLP output weights shuffled (valid blocks,
    wrong weights: finite logits, far from the merged model), q5_0 with random bytes there (NaN
    logits). The quantize stage measures both, and `report --check` with gates.max_kld exits 1
    naming each, while the sound q8_0 passes; no NaN reaches the manifest or report.json."""
    from gguf import GGUFReader

    from edgedistill.cli import cli
    from edgedistill.formats import gguf

    real = gguf.quantize

    def quantize_then_break(src, dst, qtype, *args, **kwargs):
        real(src, dst, qtype, *args, **kwargs)
        rng = np.random.default_rng(0)
        for t in GGUFReader(str(dst), "r+").tensors:
            if t.name.endswith("ffn_down.weight") and qtype == "q4_0":
                t.data[...] = t.data[rng.permutation(t.data.shape[0])]
            elif t.name.endswith("ffn_down.weight") and qtype == "q5_0":
                t.data[...] = rng.integers(0, 255, t.data.shape).astype(t.data.dtype)

    monkeypatch.setattr(gguf, "quantize", quantize_then_break)
    run = make_run(tmp_path, tiny_model_dir, calibration="none", onnx=[], ortgenai=[],
                   gguf=["q8_0", "q4_0", "q5_0"])
    export(run, formats=["gguf"])
    result = CliRunner().invoke(cli, ["quantize", str(run.root)])
    assert result.exit_code == 0, result.output
    loss = {k: a["quant_loss"] for k, a in arts(run).items() if a["quant_loss"]}
    sound, shuffled, noise = loss["gguf-q8_0"], loss["gguf-q4_0"], loss["gguf-q5_0"]
    limit = 10 * max(sound["kld_ci95"][1], 1e-4)
    assert shuffled["kld_ci95"][0] > limit and shuffled["top1_agreement"] < sound["top1_agreement"]
    assert noise["kld"] is None and noise["non_finite_positions"] > 0
    assert "NaN" not in run.manifest_path.read_text()
    args = ["report", str(run.root), "--check", "--set", f"gates.max_kld={limit}",
            "--set", "gates.min_retention=null", "--set", "targets=[]"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"gguf-q4_0: max_kld = " in result.output and f"> limit {limit}" in result.output
    assert "gguf-q5_0: max_kld: no value (its logits are not finite at" in result.output
    assert "NaN" not in run.report_json.read_text()
    verdicts = {a["id"]: a["gates"]["verdict"] for a in json.loads(run.report_json.read_text())["artifacts"]}
    assert verdicts == {"gguf-f16": "pass", "gguf-q8_0": "pass", "gguf-q4_0": "fail", "gguf-q5_0": "fail"}


def test_kquant_tensors_only_where_the_types_mix():
    from edgedistill.formats.gguf import kquant_tensors

    mixed = {"a.weight": "Q4_K", "b.weight": "Q5_0", "c.weight": "Q6_K", "norm": "F32", "v": "Q8_0"}
    assert kquant_tensors(mixed) == {"a.weight", "c.weight", "norm", "v"}
    assert kquant_tensors({"a": "Q4_K", "b": "Q6_K", "v": "Q8_0"}) is None  # the all-tensor one
    assert kquant_tensors({"a": "Q5_0", "b": "Q4_0", "v": "Q8_0"}) is None  # no matrix used: none
    assert kquant_tensors({"a": "IQ4_XS", "b": "IQ4_NL"}) == {"a"}
    assert kquant_tensors({}) is None


def test_mixed_gguf_gets_a_kquant_only_imatrix_candidate(tmp_path):
    """Hidden 256 takes k-quants, intermediate 320 does not (ffn_down falls back to Q5_0/Q8_0):
    q4_k_m is built and measured three ways, the third with the importance matrix on the
    k-quant tensors only, and the lowest answer-position KLD is kept."""
    from gguf import GGUFReader

    from edgedistill.formats.gguf import tensor_type_names
    from edgedistill.formats.quantize import KQUANTS
    from edgedistill.formats.variants import gguf_variant
    from tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m", hidden=256, intermediate=320)
    run = make_run(tmp_path, model, onnx=[], ortgenai=[], gguf=["q4_k_m"])
    export(run, formats=["gguf"])
    quantize(run)
    metrics = run.stage_entry("quantize:gguf-q4_k_m")["metrics"]
    cands = metrics["quant_loss_candidates"]
    assert set(cands) == {"none", "task", "task" + KQUANTS}
    kept = arts(run)["gguf-q4_k_m"]
    assert kept["quant_loss"] == cands[kept["calibration_source"]]
    comparisons = metrics["quant_loss_comparisons"]
    assert comparisons and all(c["ci95"][0] <= c["difference"] <= c["ci95"][1] for c in comparisons.values())
    if kept["calibration_source"] != "none":  # kept only when measurably closer than what it replaced
        assert any(k.startswith(kept["calibration_source"] + " - ") and c["ci95"][1] < 0
                   for k, c in comparisons.items())
        assert kept["quant_loss"]["kld"] < cands["none"]["kld"]
    assert "_per_example" not in json.dumps(run.read_manifest())
    # the third candidate hands llama.cpp the matrix of every tensor but the fallback ones
    imx = run.export_dir / "calibration" / "imatrix.gguf"
    types = tensor_type_names(run.gguf_dir / "model-q4_k_m.gguf")
    assert {t for n, t in types.items() if "ffn_down" in n} <= {"Q5_0", "Q8_0"}
    assert {t for n, t in types.items() if "attn_q" in n} == {"Q4_K"}
    only = {n for n, t in types.items() if t not in ("Q5_0",)}
    full = gguf_variant(run, "q4_k_m", tmp_path / "all.gguf", imx)
    part = gguf_variant(run, "q4_k_m", tmp_path / "part.gguf", imx, only=only)
    assert part["imatrix_tensors"] == full["imatrix_tensors"] - sum(
        t == "Q5_0" for n, t in types.items() if n.endswith(".weight") and "ffn_down" in n)
    fields = GGUFReader(str(tmp_path / "part.gguf")).fields
    assert int(fields["quantize.imatrix.entries_count"].parts[-1][0]) == part["imatrix_tensors"]


def test_the_lm_head_statistics_come_from_the_decoder_without_computing_logits(tmp_path):
    """collect() runs the decoder alone and adds its last hidden state as the LM head's input:
    the same sums and counts as hooks on every Linear of the whole model's forward, for an
    untied and a tied head."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgedistill.formats import imatrix

    seqs = [list(range(3, 3 + n)) for n in (5, 17, 9)]
    for tied in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, tie_word_embeddings=tied))
        model.save_pretrained(tmp_path / f"m{tied}")
        reference: dict[str, list] = {}

        def hook(name):
            def pre(_m, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                total, count = reference.get(name, (0, 0))
                reference[name] = ((x * x).sum(0) + total, count + x.shape[0])
            return pre

        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(hook(name))
        with torch.inference_mode():
            for ids in seqs:
                model(input_ids=torch.tensor([ids]), use_cache=False)
        stats = imatrix.collect(tmp_path / f"m{tied}", seqs)
        assert stats.keys() == reference.keys() and "lm_head" in stats
        for name, (total, count) in reference.items():
            assert stats[name][1] == count
            np.testing.assert_allclose(stats[name][0], total.numpy(), rtol=1e-4)


def test_a_candidate_building_in_the_background_is_waited_for_or_cancelled(tmp_path, tiny_model_dir,
                                                                          monkeypatch):
    """_keep starts every candidate before it waits for any (the ORT GenAI builder runs while
    GPTQ works); when a later candidate fails, the one still building is cancelled and no
    scratch folder is left behind."""
    from edgedistill.formats import quantize as qz

    run = make_run(tmp_path, tiny_model_dir, onnx=[], ortgenai=[], gguf=[])
    ctx = qz.Context(run)
    monkeypatch.setattr(qz, "measure", lambda _ref, _kind, path, label: {
        "kld": {"none": 0.1, "task": 0.2}[label], "calibration": label})
    events: list[str] = []

    def background(scratch: Path) -> qz.Started:
        events.append("started none")

        def result():
            events.append("waited none")
            (scratch / "int4").mkdir()
            return scratch / "int4", {}
        return qz.Started(result, lambda: events.append("cancelled none"))

    def foreground(scratch: Path):
        events.append("built task")
        (scratch / "int4").mkdir()
        return scratch / "int4", {}

    class Stage:
        metrics: dict = {}

    scratch, path, extra = qz._keep(ctx, Stage(), "ortgenai", "int4",
                                    [("none", background), ("task", foreground)])
    assert events == ["started none", "built task", "waited none"]
    assert extra["calibration_source"] == "none" and path == scratch / "int4"
    assert set(Stage.metrics["quant_loss_candidates"]) == {"none", "task"}
    shutil.rmtree(scratch)

    def broken(scratch: Path):
        raise RuntimeError("GPTQ failed")

    events.clear()
    with pytest.raises(RuntimeError, match="GPTQ failed"):
        qz._keep(ctx, Stage(), "ortgenai", "int4", [("none", background), ("task", broken)])
    assert events == ["started none", "cancelled none"]
    assert not [p for p in run.export_dir.iterdir() if p.name.startswith(".ortgenai")]


def test_an_ortgenai_package_runs_on_every_core_unless_told(cal_run, monkeypatch):
    """ORT GenAI's own default is one intra-op thread; the runtime asks for every core, or for
    the count it is given."""
    import os

    import onnxruntime_genai as og

    overlays: list[dict] = []
    real = og.Config.overlay

    def recording(self, text):
        overlays.append(json.loads(text))
        return real(self, text)

    monkeypatch.setattr(og.Config, "overlay", recording)
    package = arts(cal_run)["ortgenai-int4"]["path"]
    for threads, expected in ((None, os.cpu_count()), (1, 1)):
        overlays.clear()
        with runtimes.load("ortgenai", package, threads=threads) as rt:
            assert rt.generate([SYSTEM, {"role": "user", "content": "What is 1 plus 4?"}], 2).token_ids
        options = overlays[-1]["model"]["decoder"]["session_options"]
        assert options["intra_op_num_threads"] == expected


def test_gguf_tensor_types_override_the_mix_first_pattern_first(tmp_path):
    """export.quantize.gguf_tensor_types reaches llama.cpp's quantizer as llama-quantize's
    --tensor-type does: the first pattern a tensor's name matches sets its type, the others keep
    the type's own mix, and the file loads and generates in llama.cpp; the artifact records
    the overrides."""
    from edgedistill.formats.gguf import tensor_type_names
    from tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m", hidden=256, intermediate=320)
    overrides = {r"blk\.0\.": "q8_0", "ffn_(gate|up)|attn_q": "iq4_nl", "ffn_down": "IQ4_NL"}
    run = make_run(tmp_path, model, calibration="none", onnx=[], ortgenai=[], gguf=["q4_k_m"],
                   gguf_tensor_types=overrides)
    assert run.recipe.export.quantize.gguf_tensor_types["ffn_down"] == "iq4_nl"
    export(run, formats=["gguf"])
    quantize(run)
    path = run.gguf_dir / "model-q4_k_m.gguf"
    types = {n: t for n, t in tensor_type_names(path).items() if n.startswith("blk.")}
    assert types and all(t == "Q8_0" for n, t in types.items() if n.startswith("blk.0.") and ".weight" in n
                         and "norm" not in n)
    rest = {n: t for n, t in types.items() if not n.startswith("blk.0.")}
    assert {t for n, t in rest.items() if any(k in n for k in ("ffn_gate", "ffn_up", "attn_q.", "ffn_down"))} \
        == {"IQ4_NL"}
    assert {t for n, t in rest.items() if "attn_k." in n} == {"Q4_K"}  # q4_k_m's own choice
    art = arts(run)["gguf-q4_k_m"]
    assert art["tensor_type_overrides"] == {**overrides, "ffn_down": "iq4_nl"}
    assert art["tensor_types"]["IQ4_NL"] >= 4 and art["quant_loss"]["kld"] >= 0
    with runtimes.load("gguf", path) as rt:
        assert rt.generate([SYSTEM, {"role": "user", "content": "What is 2 plus 5?"}], 4).token_ids


def test_gguf_tensor_types_are_checked_before_anything_is_written(tmp_path, tiny_model_dir):
    from edgedistill.formats.variants import gguf_variant

    with pytest.raises(ConfigError, match="not a regular expression"):
        load_recipe(write_recipe(tmp_path / "r", export={"quantize": {"gguf_tensor_types": {"attn_(q": "q8_0"}}}))
    run = make_run(tmp_path, tiny_model_dir, calibration="none", onnx=[], ortgenai=[], gguf=["q4_0"],
                   gguf_tensor_types={"attn_v": "q7_0"})
    export(run, formats=["gguf"])
    with pytest.raises(ConfigError, match="Unknown GGML type 'q7_0'.*gguf_tensor_types") as e:
        gguf_variant(run, "q4_0", tmp_path / "x.gguf", None)
    assert "iq4_nl" in e.value.hint and not (tmp_path / "x.gguf").exists()
    run2 = make_run(tmp_path / "b", tiny_model_dir, calibration="none", onnx=[], ortgenai=[], gguf=["q4_0"],
                    gguf_tensor_types={"attn_v": "iq2_xxs"})
    export(run2, formats=["gguf"])
    with pytest.raises(ConfigError, match="needs an importance matrix"):
        gguf_variant(run2, "q4_0", tmp_path / "y.gguf", None)


def test_int4_matmul_types_set_each_matmuls_bits_first_pattern_first(tmp_path, cal_run):
    """export.quantize.int4_matmul_types over the sensitive-layer mix: the first pattern a MatMul's
    node name matches decides its bits (int4 can take a sensitive one down), the rest keep the
    mix, and the LM head follows int4_lm_head alone."""
    import onnx

    from edgedistill.formats import onnx as onnx_format

    types = {r"layers\.1/mlp/down_proj": "int8", "mlp/down_proj": "int4", "v_proj": "int8",
             "lm_head": "int8"}
    out = tmp_path / "model_int4.onnx"
    onnx_format.quantize(cal_run.onnx_dir / "model.onnx", out, "int4", 32, "rtn",
                         model_dir=cal_run.merged_dir, types=types)
    bits = {n.name.rsplit("/", 1)[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"}
    assert bits["/model/layers.0/mlp/down_proj"] == 4  # sensitive, taken down by the second pattern
    assert bits["/model/layers.1/mlp/down_proj"] == 8
    assert bits["/model/layers.0/self_attn/v_proj"] == bits["/model/layers.1/self_attn/v_proj"] == 8
    assert bits["/lm_head"] == 4  # last_matmul False: a pattern does not move the head
    assert {b for name, b in bits.items() if "v_proj" not in name and name != "/model/layers.1/mlp/down_proj"} == {4}


def test_ortgenai_int4_with_matmul_types_goes_through_the_onnx_quantizer(tmp_path, tiny_model_dir):
    """The model builder takes no per-MatMul list: with int4_matmul_types, ORT GenAI's data-free
    int4 is made over the fp32 package by the ONNX quantizer, with the types, the 4-bit head and
    the tied embedding reading it; the artifact records both settings, the package generates in
    ORT GenAI, and both settings are part of what the quantize job depends on."""
    import onnx

    from edgedistill.formats.quantize import Context, quantize_jobs

    kw = dict(calibration="none", onnx=[], gguf=[], ortgenai=["int4"], algo="k_quant")
    types = {"qkv_proj": "INT8", "down_proj": "int4"}  # both of the tiny model's layers are sensitive
    run = make_run(tmp_path, tiny_model_dir, int4_lm_head="int4", int4_matmul_types=types, **kw)
    export(run, formats=["ortgenai"])
    quantize(run)
    art = arts(run)["ortgenai-int4"]
    assert art["algo"] == "k_quant" and art["lm_head"] == "int4"
    assert art["matmul_type_overrides"] == {"qkv_proj": "int8", "down_proj": "int4"}
    graph = onnx.load(str(Path(art["path"]) / "model.onnx")).graph
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits")
            for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    qkv = {n: b for n, b in bits.items() if "qkv_proj" in n}
    assert len(qkv) == 2 and set(qkv.values()) == {8}
    assert {b for n, b in bits.items() if "qkv_proj" not in n} == {4}  # the down projections too
    with runtimes.load("ortgenai", art["path"]) as rt:
        assert rt.generate([SYSTEM, {"role": "user", "content": "What is 2 plus 5?"}], 4).token_ids

    def job_settings(r):
        return next(s for name, _, s, _ in quantize_jobs(r, None, [], Context(r, None))
                    if name == "quantize:ortgenai-int4")

    plain = make_run(tmp_path / "plain", tiny_model_dir, **kw)
    assert job_settings(run)["matmul_type_overrides"] == {"qkv_proj": "int8", "down_proj": "int4"}
    assert job_settings(run)["lm_head"] == "int4"
    assert "matmul_type_overrides" not in job_settings(plain) and "lm_head" not in job_settings(plain)


def test_a_failed_background_quantizer_says_so_with_its_output(tmp_path):
    """The data-free ORT GenAI candidate quantized in a process of its own: a failure is an
    ArtifactError naming the quantizer, with the end of its log."""
    from edgedistill.errors import ArtifactError
    from edgedistill.formats.ortgenai import start_quantize_package

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    building = start_quantize_package(pkg, tmp_path / "merged", 32, "int8", "k_quant", {"qkv": "int8"},
                                      tmp_path / "q.log")
    with pytest.raises(ArtifactError, match="the ONNX quantizer failed") as e:
        building.wait()
    assert "q.log" in e.value.hint and "No such file or directory" in e.value.hint  # the child's error


def test_int4_matmul_types_are_checked_when_the_recipe_loads(tmp_path):
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_recipe(write_recipe(tmp_path / "a", export={"quantize": {"int4_matmul_types": {"qkv_(": "int8"}}}))
    with pytest.raises(ConfigError, match="int4_matmul_types") as e:
        load_recipe(write_recipe(tmp_path / "b", export={"quantize": {"int4_matmul_types": {"qkv": "int3"}}}))
    assert "int8" in str(e.value) + str(e.value.hint)


def test_a_calibrated_candidate_is_kept_only_when_measurably_closer():
    """The quantize stage's choice between two builds measured on the same eval chats: a lower
    answer KLD inside the paired noise keeps the uncalibrated one; a lower one on every chat
    replaces it; a broken one loses, an unmeasurable run keeps the calibrated one as asked."""
    from edgedistill.formats.quant_loss import PER_EXAMPLE, paired_difference, public
    from edgedistill.formats.quantize import better

    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(1, 4, size=60)]

    def loss(kl):
        kl = np.asarray(kl, dtype=float)
        return {"kld": float(kl.sum() / sum(tokens)), PER_EXAMPLE: {"kl": kl.tolist(), "tokens": tokens}}

    base = rng.gamma(1.0, 0.03, size=60) * tokens
    none = loss(base)
    noisy = loss(base * rng.uniform(0.5, 1.45, size=60))  # lower on average by chance, not on every chat
    clear = loss(base * 0.6)
    take, cmp = better(clear, none)
    assert take and cmp["ci95"][1] < 0 and cmp["difference"] == pytest.approx(clear["kld"] - none["kld"], abs=1e-6)
    assert noisy["kld"] < none["kld"]  # 1.5% lower, with this seed
    take, cmp = better(noisy, none)
    assert not take and cmp["ci95"][0] < 0 < cmp["ci95"][1]
    assert better(none, none) == (False, paired_difference(none, none))
    broken = {"kld": None}
    assert better(broken, none) == (False, None) and better(none, broken) == (True, None)
    assert better(clear, None) == (True, None)
    assert PER_EXAMPLE not in public(clear) and public(None) is None
