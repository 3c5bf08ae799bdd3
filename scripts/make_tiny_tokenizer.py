"""Regenerate tests/assets/tiny-tokenizer: a 512-piece SentencePiece BPE tokenizer with ChatML
special tokens, small enough to commit, real enough for every format (HF, llama.cpp's SPM path,
ONNX Runtime GenAI).

    python scripts/make_tiny_tokenizer.py [OUT_DIR]

Deterministic: the corpus is generated from fixed word lists, and SentencePiece trains on one
thread with a fixed seed.
"""

from __future__ import annotations

import io
import itertools
import sys
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

WORDS = (
    "the a an of to and in is it that what which who where when how many much answer question "
    "capital city country river number sum plus minus times divided equals first last letter word "
    "yes no true false entailment neutral contradiction summary text sentence because therefore "
    "paris france berlin germany rome italy madrid spain tokyo japan user assistant system you are "
    "helpful please give only one short reply with just").split()


def corpus() -> str:
    lines = []
    for a, b in itertools.product(range(0, 40, 3), range(0, 40, 7)):
        lines.append(f"What is {a} + {b}? The answer is {a + b}.")
        lines.append(f"What is {a} times {b}? It equals {a * b}.")
    for i, w in enumerate(WORDS):
        rest = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))
        lines.append(f"{w.capitalize()} {rest}.")
        lines.append(f"The first letter of {w} is {w[0]}, and the word has {len(w)} letters.")
    return "\n".join(lines * 3)


def main(out: Path) -> None:
    import sentencepiece as spm
    from transformers import LlamaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus().splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=512,
        byte_fallback=True,  # <0x0A> exists: llama.cpp's SPM loader needs a newline token
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        pad_piece="<pad>",
        character_coverage=1.0,
        num_threads=1,
        seed_sentencepiece_size=100000,
        shuffle_input_sentence=False,
        normalization_rule_name="identity",  # no 240 KB NFKC table in the model file
        minloglevel=2,
    )
    spm_path = out / "tokenizer.model"
    spm_path.write_bytes(model.getvalue())
    tok = LlamaTokenizerFast(
        vocab_file=str(spm_path), legacy=False, add_bos_token=False, add_eos_token=False,
        bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
        from_slow=True,
    )
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    print(f"wrote {out} ({len(tok)} tokens)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests/assets/tiny-tokenizer")
