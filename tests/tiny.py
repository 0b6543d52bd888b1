"""Tiny random causal LMs saved to a folder, so tests exercise the real loading code in seconds.

`make_tiny_model_dir(path, arch=...)` writes a `save_pretrained` folder holding a random model
(hidden 64, 4 query heads, 2 kv heads (GQA), head_dim 16, 256 positions) and a byte-level BPE
tokenizer trained in memory on a small English text, with ChatML special tokens and a chat
template. Everything is seeded: the same call gives the same weights, tokenizer and fingerprints.

Nothing here knows about HOMER; the model's answers are random words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2", "qwen3", "mistral"]

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
MAX_POSITIONS = 256
VOCAB_TARGET = 400

BOS = "<|im_start|>"
EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A document has pages, chapters and sentences.
Once upon a time there was a captain who sailed the sea with his brother and a crew of ten.
The narrator's brother was called Tom; he kept the keys to the library in a small box.
Numbers matter too: 1, 2, 3, 42, 100, 2024, 3.14 and the passkey 71234 appear in text.
Answer the question using the document. Summarize the document in a few sentences.
Question: who is the narrator? Answer: the narrator is a sailor who likes reading books.
abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'"()-[]{}
"""


def make_tiny_tokenizer() -> Any:
    """A `PreTrainedTokenizerFast`: byte-level BPE (~400 tokens) with ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_config(arch: Arch, vocab_size: int, num_layers: int, tokenizer: Any) -> Any:
    """A transformers config of the tiny shape for `arch`."""
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": num_layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common)
    if arch == "mistral":
        from transformers import MistralConfig

        # Mistral v0.2+ shape: full attention (v0.1's 4k sliding window is refused by homer).
        return MistralConfig(**common, sliding_window=None)
    raise ValueError(f"unknown arch {arch!r}: use llama, qwen2, qwen3 or mistral")


def make_tiny_model_dir(
    path: Path | str,
    arch: Arch = "llama",
    num_layers: int = 6,
    attn: str = "sdpa",
    seed: int = 0,
) -> Path:
    """Write a tiny random `arch` model and its tokenizer to `path`; return `path`.

    Load it back with `AutoModelForCausalLM.from_pretrained(path)` or `homer.models.load_model`.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    config = make_tiny_config(arch, len(tokenizer), num_layers, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
