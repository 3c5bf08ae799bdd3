"""The command line: every command of the contract, light imports, and bad input that exits 2
with a message and no traceback."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from edgedistill.cli import cli

from conftest import write_recipe

COMMANDS = ["run", "generate", "train", "merge", "export", "quantize", "eval", "judge", "bench", "report", "doctor"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS + ["models"]:
        assert f"\n  {name} " in result.output


def test_help_imports_nothing_heavy():
    code = ("import sys; from edgedistill.cli import main; sys.argv=['edgedistill','--help'];\n"
            "try: main()\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','onnx','onnxruntime','llama_cpp','transformers','onnxruntime_genai')"
            " if m in sys.modules]; print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def _no_traceback(result):
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") or "\nError: " in result.output


def _user_error(result):
    """Exit 2 with an ``Error:`` message and no traceback."""
    assert result.exit_code == 2
    _no_traceback(result)


def test_malformed_yaml_exits_2_with_line(tmp_path):
    path = write_recipe(tmp_path, text="task: qa\n  bad: [\n")
    result = invoke("run", str(path), "--run-dir", str(tmp_path / "run"))
    _user_error(result)
    assert "line 2" in result.output
    assert not (tmp_path / "run").exists()


def test_unknown_key_exits_2_with_valid_keys(tmp_path):
    path = write_recipe(tmp_path, teacher={"endpoint": "x"})
    result = invoke("generate", str(path), "--run-dir", str(tmp_path / "run"))
    _user_error(result)
    assert "'teacher.endpoint'" in result.output and "base_url" in result.output


def test_wrong_type_in_set_exits_2(recipe_file, tmp_path):
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"), "--set", "train.epochs=many")
    _user_error(result)
    assert "train.epochs" in result.output and "'many'" in result.output


def test_missing_data_file_exits_2(tmp_path):
    path = write_recipe(tmp_path, data={"prompts": "missing.jsonl"})
    result = invoke("generate", str(path), "--run-dir", str(tmp_path / "run"))
    _user_error(result)
    assert "missing.jsonl does not exist" in result.output
    assert not (tmp_path / "run").exists()


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path):
    rows = [{"id": "a", "prompt": "hi"}]
    path = write_recipe(tmp_path, prompts=rows)
    data = tmp_path / "prompts.jsonl"
    data.write_text(data.read_text() + '{"id": "b", "prompt": "x"\n{"id": "c", "prompt": "y"}\n')
    result = invoke("generate", str(path), "--run-dir", str(tmp_path / "run"))
    _user_error(result)
    assert f"{data}, line 2: not valid JSON" in result.output


def test_prompt_record_without_prompt_names_line(tmp_path):
    path = write_recipe(tmp_path, prompts=[{"id": "a", "prompt": "hi"}, {"id": "b", "question": "x"}])
    result = invoke("generate", str(path), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "line 2" in result.output and '"prompt" or "messages"' in result.output


def test_unknown_target_exits_2_with_known_ones(recipe_file, tmp_path):
    result = invoke("bench", str(tmp_path), "--target", "pi-zero")
    _user_error(result)
    assert "pi-zero" in result.output and "jetson-orin-nano" in result.output


def test_run_dir_missing_artifact_names_the_command(recipe_file, tmp_path):
    from edgedistill.recipes import load_recipe
    from edgedistill.rundir import Run

    run = Run.create(tmp_path / "run", load_recipe(recipe_file))
    result = invoke("merge", str(run.root))
    _user_error(result)
    assert f"edgedistill train {run.root}" in result.output


def test_not_a_run_dir_exits_2(tmp_path):
    result = invoke("train", str(tmp_path / "nothing"))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "edgedistill run" in result.output


def test_verbose_shows_the_traceback(tmp_path):
    path = write_recipe(tmp_path, data={"prompts": "missing.jsonl"})
    result = CliRunner().invoke(cli, ["-v", "generate", str(path), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "Traceback" in result.output


def test_full_disk_is_a_user_error(monkeypatch, recipe_file, tmp_path):
    import errno

    from edgedistill import rundir

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(rundir, "save_recipe", no_space)
    # the disk fills while the run directory is created, before any stage function is called
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"))
    _user_error(result)
    assert "No space left on device" in result.output and "config.yaml" in result.output


def test_models_list_names_the_packaged_models():
    result = invoke("models", "list")
    assert result.exit_code == 0
    assert "pypi:smollm2-135m-instruct" in result.output
    assert "pypi:qwen2.5-coder-1.5b-instruct" in result.output


def test_doctor_reports_versions_and_llama_cpp():
    result = CliRunner().invoke(cli, ["doctor"])
    assert "Python 3." in result.output and "torch" in result.output
    assert "llama" in result.output and "GB free" in result.output
    assert result.exit_code in (0, 2)
    if result.exit_code == 2:
        assert "fix:" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "edgedistill" in result.output
