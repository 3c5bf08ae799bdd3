"""False alarms of the libraries edgedistill drives, filtered where they are logged.

transformers 4.57.3 up to 5.0 warns, on loading any local tokenizer of more than 100,000 tokens
whose config.json was saved by such a version, that it has "an incorrect regex pattern" and "will
lead to incorrect tokenization": a check meant for Mistral tokenizers that fires for Gemma 3, Qwen
and every other family (transformers issues 42591 and 44031; fixed upstream in 5.x, past this
project's pin). The warning is dropped unless the folder's config.json names a Mistral model type;
the tokenizer round-trip tests (the same ids from transformers, llama.cpp and ORT GenAI) are what
vouch for the others.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

MISTRAL_TYPES = frozenset({"mistral", "mistral3", "voxtral", "ministral", "pixtral"})
_REGEX_WARNING = re.compile(r"The tokenizer you are loading from '(?P<path>[^']+)' with an incorrect regex pattern")


class MistralRegexFalseAlarm(logging.Filter):
    """Keep transformers' regex warning only for a folder whose model type is a Mistral one (or
    that cannot be read: then the warning stands)."""

    def filter(self, record: logging.LogRecord) -> bool:
        m = _REGEX_WARNING.search(record.getMessage())
        if not m:
            return True
        try:
            model_type = json.loads((Path(m["path"]) / "config.json").read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            return True
        return model_type in MISTRAL_TYPES


def install() -> None:
    """Attach the filters to the loggers they watch (before or after the library is imported)."""
    logger = logging.getLogger("transformers.tokenization_utils_base")
    if not any(isinstance(f, MistralRegexFalseAlarm) for f in logger.filters):
        logger.addFilter(MistralRegexFalseAlarm())
