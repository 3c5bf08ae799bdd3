"""Exit codes (issue 15, part 1): 2 for anything the user can fix -- a corrupt or truncated GGUF,
safetensors or ONNX file wherever it is given -- and 3 for a bug: one line on stderr naming the
stage and the log file that holds the traceback (RUN/logs/, or the cache before a run exists),
the traceback on the terminal only with -v. Every command's last stdout line is one JSON object."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill import runtimes
from edgedistill.cli import cli
from edgedistill.errors import ArtifactError, EdgeDistillError, InternalError
from edgedistill.formats.jobs import raise_failures, run_all
from test_bench import gguf_artifact, make_run


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def last_json(result) -> dict:
    """The last stdout line, which every command ends with."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


# --- 3: internal errors ----------------------------------------------------------------------


def _boom(*args, **kwargs):
    return {}["no such key"]  # the bug: a stage indexing what is not there


def test_a_bug_in_a_stage_exits_3_with_one_line_and_a_log(tmp_path, monkeypatch):
    # No stage has a known bug to trigger, so one is planted: the report stage's function is
    # replaced by one that raises KeyError, as a real bug would.
    from edgedistill.report import build

    run = make_run(tmp_path)
    monkeypatch.setattr(build, "report", _boom)
    result = invoke("report", str(run.root))
    assert result.exit_code == 3
    errors = error_lines(result)
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "internal error in stage report (KeyError: 'no such key')" in errors[0]
    logs = list((run.root / "logs").glob("error-report-*.log"))
    assert len(logs) == 1 and str(logs[0]) in errors[0]
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "_boom" in text and "stage: report" in text
    out = last_json(result)
    assert out == {**out, "command": "report", "exit_code": 3, "ok": False, "stage": "report",
                   "log": str(logs[0]), "run_dir": str(run.root)}


def test_verbose_also_prints_the_traceback(tmp_path, monkeypatch):
    from edgedistill.report import build

    run = make_run(tmp_path)
    monkeypatch.setattr(build, "report", _boom)  # a planted bug, as above
    result = invoke("-v", "report", str(run.root))
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr and "KeyError" in result.stderr
    assert len(error_lines(result)) == 1


def test_run_names_the_stage_it_crashed_in(recipe_file, tmp_path, monkeypatch):
    # generate is made a no-op and train a planted bug: `run` must say it was in train
    from edgedistill.teacher import generate
    from edgedistill.train import finetune

    monkeypatch.setattr(generate, "generate", lambda run, force=False: None)
    monkeypatch.setattr(finetune, "train", _boom)
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 3
    [line] = error_lines(result)
    assert "internal error in stage train (KeyError" in line
    assert list((tmp_path / "run" / "logs").glob("error-train-*.log"))
    assert last_json(result)["stage"] == "train"


def test_before_a_run_exists_the_log_goes_to_the_cache(recipe_file, tmp_path, monkeypatch):
    from edgedistill import recipes

    monkeypatch.setenv("EDGEDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(recipes, "load_recipe", _boom)  # a planted bug before any run directory
    result = invoke("generate", str(recipe_file), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 3
    [log] = (tmp_path / "cache" / "logs").glob("error-generate-*.log")
    assert str(log) in error_lines(result)[0] and "KeyError" in log.read_text()
    assert not (tmp_path / "run").exists()


def _job(name: str, body):
    return (name, [], {"job": name}, body)


def _write_artifact(stage):
    stage.output(stage.run.export_dir / "ok.bin").write_bytes(b"x")


def test_a_crashing_job_is_exit_3_after_the_other_jobs_ran(tmp_path):
    run = make_run(tmp_path)

    def exporter_bug(stage):
        json.loads("{")  # a tool crashing on what it was given: not an EdgeDistillError

    def parity_failure(stage):
        raise ArtifactError("parity failed")

    failures = run_all([_job("export:a", exporter_bug), _job("export:b", parity_failure),
                        _job("export:c", _write_artifact)], run, force=False)
    assert len(failures) == 2
    assert run.stage_entry("export:c")["status"] == "done"  # ran after the crash
    assert run.stage_entry("export:a")["status"] == "failed"
    with pytest.raises(InternalError) as e:
        raise_failures(failures, run)
    assert e.value.exit_code == 3 and e.value.stage == "export:a"
    assert "\n" not in e.value.message and "JSONDecodeError" in e.value.message
    log = Path(e.value.log)
    assert log.parent == run.logs_dir and log.name.startswith("error-export-")
    text = log.read_text()
    assert "exporter_bug" in text and "parity failed" in text  # the traceback and the other failure

    def disk_full(stage):
        raise OSError(errno.ENOSPC, "No space left on device", str(stage.run.export_dir / "x.onnx"))

    # EdgeDistillErrors and a full disk alone stay exit 2
    only_bad_input = run_all([_job("export:d", parity_failure), _job("export:e", disk_full)], run, force=False)
    with pytest.raises(ArtifactError) as e2:
        raise_failures(only_bad_input, run)
    assert e2.value.exit_code == 2 and "parity failed" in str(e2.value)
    assert "export:e: No space left on device writing" in str(e2.value)


def test_a_real_exporter_crash_through_the_cli_is_exit_3(tmp_path, tiny_model_dir):
    """optimum's ONNX exporter meets a merged model without its weights and raises OSError; the
    GGUF job still runs after it; the command exits 3 naming the stage and the log."""
    run = make_run(tmp_path)
    with run.begin("merge") as stage:
        merged = stage.output(run.merged_dir)
        shutil.copytree(tiny_model_dir, merged)
        (merged / "model.safetensors").unlink()
    result = invoke("export", str(run.root), "--format", "onnx", "--format", "gguf")
    assert result.exit_code == 3, result.output
    [line] = error_lines(result)
    assert "internal error in stage export:onnx" in line and "(OSError: Error no file named" in line
    assert run.stage_entry("export:gguf")["status"] == "failed"  # it ran, after the crash
    assert (run.logs_dir / "gguf-convert.log").is_file()
    out = last_json(result)
    assert out["exit_code"] == 3 and out["stage"] == "export:onnx" and Path(out["log"]).is_file()
    assert out["stages"] == {"export:onnx": "failed", "export:gguf": "failed"}


# --- 2: corrupt and truncated model files ------------------------------------------------------


def test_truncated_gguf_teacher_exits_2(smollm2_gguf, tmp_path):
    bad = truncated(smollm2_gguf, tmp_path / "teacher.gguf")
    for extra in ({"backend": "gguf"}, {"backend": "openai", "serve": True}):
        recipe = write_recipe(tmp_path / f"r-{extra['backend']}", teacher={
            "model": str(bad), "base_url": None, **extra})
        result = invoke("generate", str(recipe), "--run-dir", str(tmp_path / f"run-{extra['backend']}"))
        assert result.exit_code == 2, result.output
        [line] = error_lines(result)
        assert f"teacher.model {bad}: {bad} is not a readable GGUF file" in line
        assert "Traceback" not in result.output and "corrupt or truncated" in result.stderr
        assert not (tmp_path / f"run-{extra['backend']}" / "logs" / "teacher-server.log").exists()


def test_truncated_safetensors_hf_teacher_exits_2(tiny_model_dir, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    truncated(tiny_model_dir / "model.safetensors", teacher / "model.safetensors", keep=0.7)
    recipe = write_recipe(tmp_path / "r", teacher={"backend": "hf", "model": str(teacher), "base_url": None})
    result = invoke("generate", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert f"teacher.model {teacher}: {teacher / 'model.safetensors'} is not a readable" in error_lines(result)[0]
    assert "Traceback" not in result.output


def test_truncated_gguf_student_exits_2_before_transformers_reads_it(smollm2_gguf, tmp_path):
    bad = truncated(smollm2_gguf, tmp_path / "student.gguf", keep=0.8)
    run = make_run(tmp_path, student={"model": str(bad)})
    result = invoke("train", str(run.root))
    assert result.exit_code == 2, result.output
    assert f"student.model {bad}: {bad} is" in error_lines(result)[0]
    assert "truncated" in result.stderr and "Traceback" not in result.output
    assert not run.student_base.exists()


def test_truncated_safetensors_student_exits_2(tiny_model_dir, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(tiny_model_dir, student)
    truncated(tiny_model_dir / "model.safetensors", student / "model.safetensors", keep=0.6)
    run = make_run(tmp_path, student={"model": str(student)})
    result = invoke("train", str(run.root))
    assert result.exit_code == 2, result.output
    line = error_lines(result)[0]
    assert f"student.model {student}: {student / 'model.safetensors'} is not a readable safetensors" in line
    assert "Traceback" not in result.output


def test_gguf_artifact_made_unloadable_after_export_exits_2_in_eval(smollm2_gguf, tmp_path):
    run = make_run(tmp_path, student={"model": str(smollm2_gguf)}, eval={"max_new_tokens": 4})
    art = gguf_artifact(run, smollm2_gguf)
    path = Path(art["path"])
    path.unlink()  # the fixture hard-links the cached model: break the link before writing
    shutil.copy(smollm2_gguf, path)
    with path.open("r+b") as f:  # same size (the manifest still calls it intact), magic destroyed
        f.write(b"\0\0\0\0")
    # a real process: what llama.cpp prints, at exit too, must not follow the JSON line on stdout
    proc = subprocess.run([sys.executable, "-m", "edgedistill.cli", "eval", str(run.root)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"llama.cpp cannot load {path}" in proc.stderr and "Traceback" not in proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["command"] == "eval" and out["exit_code"] == 2 and str(path) in out["error"]


def test_truncated_onnx_artifact_is_an_artifact_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.ones((64, 64), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    good = tmp_path / "good" / "model.onnx"
    good.parent.mkdir()
    onnx.save(helper.make_model(graph), str(good))
    bad = truncated(good, tmp_path / "bad" / "model.onnx")
    with pytest.raises(ArtifactError, match=f"onnxruntime cannot load {bad}") as e:
        runtimes.load("onnx", bad)
    assert e.value.exit_code == 2


def test_truncated_safetensors_artifact_is_an_artifact_error(tiny_model_dir, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(tiny_model_dir, merged)
    truncated(tiny_model_dir / "model.safetensors", merged / "model.safetensors", keep=0.3)
    with pytest.raises(ArtifactError, match="is not a readable safetensors file"):
        runtimes.load("hf", merged)


# --- the last stdout line ------------------------------------------------------------------


def test_the_last_stdout_line_is_json_for_every_outcome(tmp_path):
    run = make_run(tmp_path)
    cases = {
        0: invoke("models", "list"),
        1: invoke("report", str(run.root), "--check"),  # no artifacts to ship: a failed gate
        2: invoke("train", str(tmp_path / "nothing")),
    }
    usage = invoke("train", "--no-such-option")
    for code, result in [*cases.items(), (2, usage)]:
        assert result.exit_code == code, result.output
        out = last_json(result)
        assert out["exit_code"] == code and out["ok"] is (code == 0)
        if code:
            assert out["error"]
    assert last_json(cases[0])["command"] == "models list"
    failed = last_json(cases[1])
    assert failed["command"] == "report" and failed["run_dir"] == str(run.root)
    assert failed["report"] == str(run.report_json) and failed["gates_passed"] is False
    assert "gate(s) failed" in failed["error"]
    assert "does not exist" in last_json(cases[2])["error"]
    assert "--no-such-option" in last_json(usage)["error"]


def test_full_permissions_error_is_exit_2(recipe_file, tmp_path, monkeypatch):
    import errno

    from edgedistill import rundir

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(rundir, "save_recipe", denied)  # a read-only folder, as root cannot make one
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "Permission denied writing" in error_lines(result)[0]
    assert last_json(result)["exit_code"] == 2


def test_errors_carry_their_codes():
    assert EdgeDistillError("x").exit_code == 2 and InternalError("x").exit_code == 3
