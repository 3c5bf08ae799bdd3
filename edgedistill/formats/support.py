"""What the converters can take, checked before a run starts any work.

A student family x format combination that a converter cannot take is refused with exit 2 naming
the family and the format before generate or train begins, never found out after training. The
checks read the student's config.json (a local directory or the hub cache) or GGUF header, and
the converters' own source for the architectures they register; a byte-level BPE tokenizer is put
to llama.cpp's converter itself (:func:`_pretokenizer_problem`). The support table in the README
(tests/test_families.py, scripts/gen_support_table.py) is what these checks were proved against.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.errors import ConfigError, NotAvailable

if TYPE_CHECKING:
    from edgedistill.formats.gguf import Converter

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


def refusals(config: dict[str, Any], formats: list[str], *, gguf_dir: str | None = None,
             model_dir: Path | None = None) -> dict[str, str]:
    """format → why its converter cannot take this model, for each format in ``formats``
    (``model_dir``: the student's files, for the checks that read its tokenizer)."""
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
        elif supported and model_dir is not None and _byte_level_bpe(model_dir):
            why = _pretokenizer_problem(model_dir, arch, gguf_dir)
            if why:
                out["gguf"] = why
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


def _gguf_converter(llama_cpp_dir: str | None) -> Converter | None:
    """llama.cpp's converter when it is already at hand (never downloaded here), else None."""
    from edgedistill.formats import gguf

    try:
        root = Path(llama_cpp_dir) if llama_cpp_dir else \
            gguf.cache_dir() / f"llama.cpp-{gguf.llama_cpp_python_version()}"
    except NotAvailable as e:  # llama-cpp-python missing: the GGUF stage says so itself
        log.debug("no GGUF converter at hand: %s", e)
        return None
    script = root / "convert_hf_to_gguf.py"
    return gguf.Converter(script, root / "gguf-py", "", "") if script.is_file() else None


def _gguf_architectures(llama_cpp_dir: str | None) -> tuple[str, ...]:
    from edgedistill.formats import gguf

    conv = _gguf_converter(llama_cpp_dir)
    return gguf.supported_architectures(conv) if conv else ()


def _byte_level_bpe(folder: Path) -> bool:
    """Whether llama.cpp's converter takes this tokenizer down its GPT-2 BPE path, the one that
    identifies the pre-tokenizer by a hash: tokenizer.json a BPE model split by ``ByteLevel``, and
    no tokenizer.model (which sends it down the SentencePiece path first)."""
    tj_path = folder / "tokenizer.json"
    if (folder / "tokenizer.model").exists() or not tj_path.is_file():
        return False
    tj = json.loads(tj_path.read_text())
    pre = tj.get("pre_tokenizer") or {}
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or []}
    return (tj.get("model") or {}).get("type") == "BPE" and "ByteLevel" in kinds


# Asks the converter's own get_vocab_base_pre (a hash of the token ids of its fixed text, looked
# up in its table), in a process of its own: importing the converter loads torch and its
# `conversion` package from its directory, with its own gguf-py, as a real conversion does.
_ASK_PRE = """
import json, sys
root, arch, folder = sys.argv[1:4]
sys.path.insert(0, root)
import convert_hf_to_gguf as c
from transformers import AutoTokenizer
cls = c.get_model_class(arch) if hasattr(c, "get_model_class") else c.ModelBase.from_model_architecture(arch)
tok = AutoTokenizer.from_pretrained(folder)
try:
    pre = cls.get_vocab_base_pre(object.__new__(cls), tok)
except NotImplementedError:  # "BPE pre-tokenizer was not recognized"
    pre = None
print(json.dumps({"pre": pre}))
"""


def _pretokenizer_problem(folder: Path, arch: str, llama_cpp_dir: str | None) -> str | None:
    """Why the converter would fail on this byte-level BPE tokenizer (its pre-tokenizer's hash
    is not one it knows: NotImplementedError at the GGUF export, after training), or None when
    it knows it or cannot be asked (then the export finds out, as before)."""
    conv = _gguf_converter(llama_cpp_dir)
    if conv is None:
        return None
    cmd = [sys.executable, "-c", _ASK_PRE, str(conv.script.parent), arch, str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=conv.env(), timeout=300)
        answer = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        log.debug("could not ask llama.cpp's converter about %s: %s", folder, e)
        return None
    if answer is None:
        log.debug("could not ask llama.cpp's converter about %s (exit %d): %s", folder,
                  proc.returncode, proc.stderr.strip()[-500:])
        return None
    if answer["pre"] is not None:
        log.debug("llama.cpp's converter knows the pre-tokenizer of %s: %s", folder, answer["pre"])
        return None
    return (f"llama.cpp's converter does not recognize the byte-level BPE pre-tokenizer in "
            f"{folder / 'tokenizer.json'} (get_vocab_base_pre: \"BPE pre-tokenizer was not "
            "recognized\"); a student whose tokenizer llama.cpp knows converts, or a llama.cpp "
            "checkout that knows it (convert_hf_to_gguf_update.py) given as export.llama_cpp_dir")


def student_dir(ref: str) -> Path | None:
    """The folder holding the student's config.json: a local directory or a hub id's snapshot
    in the local cache; None for a GGUF student (its architecture as transformers would name it
    is not known before its import, and its tokenizer is the one llama.cpp's converter made) or
    one not at hand."""
    p = Path(ref).expanduser()
    if (p / "config.json").is_file():
        return p
    if p.exists() or ref.lower().endswith(".gguf") or ref.startswith("pypi:"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
    except (ValueError, OSError) as e:  # not a valid repo id: student_path says so when train starts
        log.debug("no cached config for %s: %s", ref, e)
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def check_student(recipe: Any, stages: set[str]) -> None:
    """Refuse, before any work, a student the run's formats cannot take (exit 2 naming family
    and format), and a student without a chat template when student.chat_template is ``model``."""
    student = recipe.student
    if "train" in stages:
        _check_template(student)
    if "export" not in stages and "train" not in stages:
        return
    folder = student_dir(student.model)
    if folder is None:
        return
    config = json.loads((folder / "config.json").read_text())
    formats = list(recipe.export.formats)
    refused = refusals(config, formats, gguf_dir=recipe.export.llama_cpp_dir, model_dir=folder)
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
