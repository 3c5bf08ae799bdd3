"""What the converters can take, checked before a run starts any work.

A student family x format combination that a converter cannot take is refused with exit 2 naming
the family and the format before generate or train begins, never found out after training. The
checks read only the student's config.json (a local directory or the hub cache) or GGUF header,
and the converters' own source for the architectures they register; the support table in the
README (tests/test_families.py, scripts/gen_support_table.py) is what these checks were proved
against.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path
from typing import Any

from edgedistill.errors import ConfigError, NotAvailable

log = logging.getLogger(__name__)

# model_type → the family name the support table and the errors use
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi-3",
            "gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "gemma3": "Gemma 3", "mistral": "Mistral",
            "granite": "Granite", "gemma": "Gemma", "olmo": "OLMo", "smollm3": "SmolLM3",
            "phi": "Phi-2", "gpt2": "GPT-2", "qwen3_moe": "Qwen3-MoE", "phimoe": "Phi-MoE"}


def family(config: dict[str, Any]) -> str:
    mt = config.get("model_type", "?")
    name = FAMILIES.get(mt, mt)
    return f"{name} (LongRoPE)" if is_longrope(config) else name


def is_longrope(config: dict[str, Any]) -> bool:
    """Phi-3-style LongRoPE: a context longer than the one the model was pre-trained with."""
    orig = config.get("original_max_position_embeddings")
    return bool(orig) and config.get("max_position_embeddings") != orig


def refusals(config: dict[str, Any], formats: list[str], *, gguf_dir: str | None = None) -> dict[str, str]:
    """format → why its converter cannot take this model, for each format in ``formats``."""
    arch = (config.get("architectures") or ["?"])[0]
    out: dict[str, str] = {}
    if "ortgenai" in formats:
        supported = _ortgenai_architectures()
        if supported and arch not in supported:
            out["ortgenai"] = (f"the ORT GenAI model builder cannot take the {arch} architecture "
                               f"(it takes {', '.join(supported)})")
        elif is_longrope(config):
            why = _longrope_problem(config)
            if why:
                out["ortgenai"] = why
    if "gguf" in formats:
        supported = _gguf_architectures(gguf_dir)
        if supported and arch not in supported:
            out["gguf"] = f"llama.cpp's converter cannot take the {arch} architecture"
    return out


def _longrope_problem(config: dict[str, Any]) -> str | None:
    """The ORT GenAI builder's LongRoPE path reads rope_scaling's long/short factors; without them
    it fails after training (KeyError 'multi_cache')."""
    scaling = config.get("rope_scaling") or {}
    half = config.get("hidden_size", 0) // max(config.get("num_attention_heads", 1), 1) // 2
    factors = [scaling.get("long_factor"), scaling.get("short_factor")]
    if scaling.get("type", scaling.get("rope_type")) not in ("longrope", "su") or any(
            not isinstance(f, list) or len(f) != half for f in factors):
        return (f"a context of {config.get('max_position_embeddings')} over the original "
                f"{config.get('original_max_position_embeddings')} needs rope_scaling "
                f"{{type: longrope, long_factor, short_factor}} with {half} factors each, which the "
                "ORT GenAI builder's LongRoPE path reads; this config has none")
    return None


def _ortgenai_architectures() -> list[str]:
    """The architectures the installed ORT GenAI builder names, read from its source (importing
    it would load the whole builder)."""
    try:
        spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin:
        return []
    src = Path(spec.origin).read_text()
    return sorted(set(re.findall(r'config\.architectures\[0\] == "(\w+)"', src)))


def _gguf_architectures(llama_cpp_dir: str | None) -> tuple[str, ...]:
    """The converter's architectures, when it is already at hand (never downloaded here)."""
    from edgedistill.formats import gguf

    try:
        root = Path(llama_cpp_dir) if llama_cpp_dir else \
            gguf.cache_dir() / f"llama.cpp-{gguf.llama_cpp_python_version()}"
    except NotAvailable as e:  # llama-cpp-python missing: the GGUF stage says so itself
        log.debug("no GGUF converter at hand: %s", e)
        return ()
    script = root / "convert_hf_to_gguf.py"
    if not script.is_file():
        return ()
    return gguf.supported_architectures(gguf.Converter(script, root / "gguf-py", "", ""))


def student_config(ref: str) -> dict[str, Any] | None:
    """config.json of a local directory or of a hub id in the local cache; a GGUF's architecture
    as transformers would name it is not known before its import (None)."""
    p = Path(ref).expanduser()
    if (p / "config.json").is_file():
        return json.loads((p / "config.json").read_text())
    if p.exists() or ref.lower().endswith(".gguf") or ref.startswith("pypi:"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except (ValueError, OSError) as e:  # not a valid repo id: student_path says so when train starts
        log.debug("no cached config for %s: %s", ref, e)
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def check_student(recipe: Any, stages: set[str]) -> None:
    """Refuse, before any work, a student the run's formats cannot take (exit 2 naming family
    and format), and a student without a chat template when student.chat_template is ``model``."""
    student = recipe.student
    if "train" in stages:
        _check_template(student)
    if "export" not in stages and "train" not in stages:
        return
    config = student_config(student.model)
    if config is None:
        return
    formats = list(recipe.export.formats)
    refused = refusals(config, formats, gguf_dir=recipe.export.llama_cpp_dir)
    if refused:
        fam = family(config)
        left = [f for f in formats if f not in refused]
        raise ConfigError(
            f"The student {student.model} ({fam}) cannot be exported to "
            + "; ".join(f"{fmt}: {why}" for fmt, why in refused.items()) + ".",
            hint=f"Nothing was started. Leave the format(s) out, e.g. "
                 f"`--set export.formats=[{','.join(left)}]`, or pick a student of another family "
                 "(README: the support table).")


def _check_template(student: Any) -> None:
    from edgedistill.train import templates as st
    from edgedistill.train.student import is_gguf

    ref, choice = student.model, student.chat_template
    p = Path(ref).expanduser()
    if choice != "model":
        st.template_text(choice)  # a file that vanished since the recipe was read
        if (p / "config.json").is_file():
            st.check_template_tokens(p, choice)
        return
    if (p / "config.json").is_file():
        if st.own_template(p) is None:
            raise ConfigError(f"The student {p} has no chat template (a base model).",
                              hint=st.NO_TEMPLATE_HINT)
        return
    if is_gguf(ref):
        from edgedistill import models

        path = Path(models.resolve(ref))
        if path.is_file() and gguf_chat_template(path) is None:
            raise ConfigError(f"The student {ref} has no chat template in its GGUF (a base model).",
                              hint=st.NO_TEMPLATE_HINT)


def gguf_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    except (ValueError, OSError, IndexError, KeyError) as e:  # damaged: the import says so
        log.debug("could not read %s: %s", path, e)
        return "?"
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
