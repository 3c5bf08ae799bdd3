"""Chat templates for base models (``student.chat_template``): the built-in ChatML, Gemma and
Llama 3 templates, or a Jinja file, written into a linked copy of the student's directory
(RUN/student/base) so training, merge, every export and eval read the same one."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from edgedistill.errors import ConfigError
from edgedistill.rundir import remove_path

log = logging.getLogger(__name__)


def link_or_copy(src: str, dst: str) -> None:
    """A hard link (nothing writes these files in place; a re-import replaces them), a copy across
    file systems: the demo's 540 MB took 3.7 s to copy on this machine."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


TEMPLATE_CHOICES = ("model", "chatml", "gemma", "llama3")
NO_TEMPLATE_HINT = ("Give it one with student.chat_template: model (its own) | chatml | gemma | "
                    "llama3 | FILE (a Jinja file), e.g. `--set student.chat_template=chatml`; the "
                    "template's turn markers must be tokens of the student's vocabulary.")
TEMPLATE_RECORD = "edgedistill_chat_template.json"

_BOS = "{%- if bos_token %}{{ bos_token }}{% endif -%}"
TEMPLATES = {
    "chatml": ("{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
               "'<|im_end|>\\n' }}{%- endfor -%}"
               "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"),
    # Gemma has no system role: the system text opens the first user turn
    "gemma": (_BOS + "{%- if messages[0]['role'] == 'system' -%}"
              "{%- set first = messages[0]['content'] + '\\n\\n' -%}{%- set rest = messages[1:] -%}"
              "{%- else -%}{%- set first = '' -%}{%- set rest = messages -%}{%- endif -%}"
              "{%- for m in rest -%}{%- set role = 'model' if m['role'] == 'assistant' else m['role'] -%}"
              "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + m['content'] + "
              "'<end_of_turn>\\n' }}{%- endfor -%}"
              "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"),
    "llama3": (_BOS + "{%- for m in messages -%}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{%- endfor -%}"
               "{%- if add_generation_prompt -%}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"),
}
# the markers each built-in template needs as single tokens of the vocabulary
TEMPLATE_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>"),
                   "gemma": ("<start_of_turn>", "<end_of_turn>"),
                   "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}


def template_text(choice: str) -> str:
    """The Jinja text of a built-in template or of a template file."""
    if choice in TEMPLATES:
        return TEMPLATES[choice]
    path = Path(choice)
    if not path.is_file():
        raise ConfigError(f"student.chat_template {choice} does not exist.", hint=NO_TEMPLATE_HINT)
    return path.read_text()


def own_template(folder: Path) -> str | None:
    """The chat template an HF directory carries (chat_template.jinja, .json, or
    tokenizer_config.json), without loading the tokenizer."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
        f = folder / name
        if f.is_file():
            value = json.loads(f.read_text()).get(key)
            if isinstance(value, list):  # named templates: the default one
                value = next((t.get("template") for t in value if t.get("name") == "default"), None)
            if value:
                return value
    return None


def check_template_tokens(folder: Path, choice: str, vocab: dict[str, int] | None = None) -> None:
    """A built-in template's turn markers must be single tokens of the student's vocabulary (as
    text they would be learnt piece by piece, and generation would never stop)."""
    if choice not in TEMPLATE_TOKENS:
        return
    if vocab is None:
        from transformers import AutoTokenizer

        vocab = AutoTokenizer.from_pretrained(folder).get_vocab()
    missing = [t for t in TEMPLATE_TOKENS[choice] if t not in vocab]
    if missing:
        fits = [c for c, toks in TEMPLATE_TOKENS.items() if all(t in vocab for t in toks)]
        raise ConfigError(
            f"student.chat_template {choice}: the student's vocabulary ({folder}) has no "
            f"{', '.join(missing)} token.",
            hint=(f"Templates whose markers it has: {', '.join(fits)}. " if fits else
                  "No built-in template fits it: give a Jinja FILE written for its tokens. ")
            + NO_TEMPLATE_HINT)


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` as a new file (never through a hard link into the model cache)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def with_chat_template(src: Path, out: Path, choice: str) -> Path:
    """``src`` (an HF directory) at ``out`` with ``choice``'s chat template in its tokenizer:
    chat_template.jinja and tokenizer_config.json's ``chat_template``, which transformers, llama.cpp's
    converter and the ORT GenAI builder read. Weights are hard links; redone only when the source
    or the template changed. The template used is recorded in ``out``/edgedistill_chat_template.json."""
    text = template_text(choice)
    record = {"chat_template": choice, "sha256": hashlib.sha256(text.encode()).hexdigest(),
              "source": str(Path(src).resolve())}
    rec_path = out / TEMPLATE_RECORD
    if rec_path.is_file() and json.loads(rec_path.read_text()) == record:
        return out
    src = Path(src).resolve()
    if src != out.resolve():
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        remove_path(tmp)
        shutil.copytree(src, tmp, copy_function=link_or_copy)
        remove_path(out)
        tmp.rename(out)
    check_template_tokens(out, choice)
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.is_file() else {}
    tc["chat_template"] = text
    _replace_text(tc_path, json.dumps(tc, ensure_ascii=False, indent=2))
    _replace_text(out / "chat_template.jinja", text)
    (out / "chat_template.json").unlink(missing_ok=True)
    _replace_text(rec_path, json.dumps(record, indent=2))
    log.info("student.chat_template %s written into %s", choice, out)
    return out
