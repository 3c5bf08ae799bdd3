"""transformers' Mistral-regex warning: false for the other families, kept for Mistral's."""

from __future__ import annotations

import json

import pytest

from edgedistill import quirks


def _big_tokenizer(folder, model_type: str):
    """A local tokenizer of more than 100,000 tokens with a pre-tokenizer, saved beside a
    config.json written by the pinned transformers: what a Gemma 3 or Qwen student folder holds."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"t{i}": i + 1 for i in range(100_050)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type,
                                                    "transformers_version": transformers.__version__}))
    return folder


@pytest.mark.parametrize("model_type, warned", [("gemma3", False), ("qwen2", False), ("mistral", True)])
def test_the_regex_warning_is_kept_only_for_mistral_tokenizers(tmp_path, capfd, model_type, warned):
    from packaging import version
    import transformers
    from transformers import AutoTokenizer

    folder = _big_tokenizer(tmp_path / model_type, model_type)
    quirks.install()
    quirks.install()  # once is enough: a second call adds nothing
    AutoTokenizer.from_pretrained(folder)
    err = capfd.readouterr().err
    fires = version.parse("4.57.2") < version.parse(transformers.__version__) < version.parse("5.0")
    assert ("incorrect regex pattern" in err) == (warned and fires)


def test_an_unreadable_folder_keeps_the_warning(tmp_path):
    import logging

    rec = logging.LogRecord("transformers.tokenization_utils_base", logging.WARNING, __file__, 1,
                            f"The tokenizer you are loading from '{tmp_path / 'gone'}' with an incorrect "
                            "regex pattern: ...", None, None)
    assert quirks.MistralRegexFalseAlarm().filter(rec)
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "something else", None, None)
    assert quirks.MistralRegexFalseAlarm().filter(other)


def test_every_cli_command_installs_the_filter():
    import logging

    from click.testing import CliRunner

    from edgedistill.cli import cli

    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.filters = [f for f in logger.filters if not isinstance(f, quirks.MistralRegexFalseAlarm)]
    res = CliRunner().invoke(cli, ["models", "list"])
    assert res.exit_code == 0, res.output
    assert any(isinstance(f, quirks.MistralRegexFalseAlarm) for f in logger.filters)
