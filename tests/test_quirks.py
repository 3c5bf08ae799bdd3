"""transformers' Mistral-regex warning: false for the other families, kept for Mistral's."""

from __future__ import annotations

import json
import logging

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


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("model_type, warned", [("gemma3", False), ("qwen2", False), ("mistral", True)])
def test_the_regex_warning_is_kept_only_for_mistral_tokenizers(tmp_path, model_type, warned):
    from packaging import version
    import transformers
    from transformers import AutoTokenizer

    folder = _big_tokenizer(tmp_path / model_type, model_type)
    quirks.install()
    quirks.install()  # once is enough: a second call adds nothing
    library, logger = logging.getLogger("transformers"), logging.getLogger("transformers.tokenization_utils_base")
    level, kept = library.level, _Kept()  # another test may have quietened transformers
    library.setLevel(logging.WARNING)
    logger.addHandler(kept)
    try:
        AutoTokenizer.from_pretrained(folder)
    finally:
        logger.removeHandler(kept)
        library.setLevel(level)
    fires = version.parse("4.57.2") < version.parse(transformers.__version__) < version.parse("5.0")
    assert any("incorrect regex pattern" in m for m in kept.messages) == (warned and fires)


def test_an_unreadable_folder_keeps_the_warning(tmp_path):
    rec = logging.LogRecord("transformers.tokenization_utils_base", logging.WARNING, __file__, 1,
                            f"The tokenizer you are loading from '{tmp_path / 'gone'}' with an incorrect "
                            "regex pattern: ...", None, None)
    assert quirks.MistralRegexFalseAlarm().filter(rec)
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "something else", None, None)
    assert quirks.MistralRegexFalseAlarm().filter(other)


def test_every_cli_command_installs_the_filter():
    from click.testing import CliRunner

    from edgedistill.cli import cli

    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.filters = [f for f in logger.filters if not isinstance(f, quirks.MistralRegexFalseAlarm)]
    res = CliRunner().invoke(cli, ["models", "list"])
    assert res.exit_code == 0, res.output
    assert any(isinstance(f, quirks.MistralRegexFalseAlarm) for f in logger.filters)
