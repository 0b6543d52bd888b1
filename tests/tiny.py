"""Tiny random causal LMs saved to a folder, so tests exercise the real loading code in seconds.

`make_tiny_model_dir(path, arch=...)` writes a `save_pretrained` folder holding a random model
(hidden 64, 4 query heads, 2 kv heads (GQA), head_dim 16, 256 positions) and a byte-level BPE
tokenizer trained in memory on a small English text, with ChatML special tokens and a chat
template. Everything is seeded: the same call gives the same weights, tokenizer and fingerprints.

Nothing here knows about HOMER; the model's answers are random words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Arch = Literal[
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "mistral-sliding",
    "qwen2-sliding",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "helium",
    "starcoder2",
]

#: Every family `make_tiny_model_dir` builds (one per supported `model_type`, and the sliding-window
#: variants of Mistral and Qwen2).
ARCHS: tuple[str, ...] = Arch.__args__  # type: ignore[attr-defined]

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
MAX_POSITIONS = 256
VOCAB_TARGET = 400
#: Families transformers runs with eager attention only (Gemma 2: soft-capped attention logits).
EAGER_ONLY = ("gemma2",)
#: Sliding window of the tiny hybrid models: shorter than every chunk the tests compress, so the
#: window is what their sliding layers see.
WINDOW = 24

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
    # Hybrid models: two sliding layers, then a full-attention one (Gemma 3's 5:1, shortened).
    hybrid = ["sliding_attention", "sliding_attention", "full_attention"] * num_layers
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if arch == "qwen2-sliding":
        from transformers import Qwen2Config

        # Qwen2's own switch: layers from `max_window_layers` on use the window.
        return Qwen2Config(
            **common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2
        )
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(**common)
    if arch == "mistral":
        from transformers import MistralConfig

        # Mistral v0.2+ shape: full attention.
        return MistralConfig(**common, sliding_window=None)
    if arch == "mistral-sliding":
        from transformers import MistralConfig

        # Mistral v0.1 shape: every layer attends to the last `WINDOW` tokens only.
        return MistralConfig(**common, sliding_window=WINDOW)
    if arch == "gemma":
        from transformers import GemmaConfig

        return GemmaConfig(**common)
    if arch == "gemma2":
        from transformers import Gemma2Config

        return Gemma2Config(
            **common,
            sliding_window=WINDOW,
            layer_types=hybrid[:num_layers],
            query_pre_attn_scalar=HEAD_DIM,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        )
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            **{k: v for k, v in common.items() if k != "rope_theta"},
            sliding_window=WINDOW,
            layer_types=hybrid[:num_layers],
            query_pre_attn_scalar=HEAD_DIM,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
            },
        )
    if arch == "phi3":
        from transformers import Phi3Config

        # Partial rotary (Phi-4-mini's shape): only half of each head carries position.
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
        return Phi3Config(
            **{k: v for k, v in common.items() if k not in ("head_dim", "rope_theta")},
            rope_parameters=rope,
        )
    if arch == "olmo":
        from transformers import OlmoConfig

        return OlmoConfig(**common, clip_qkv=8.0)
    if arch == "olmo2":
        from transformers import Olmo2Config

        return Olmo2Config(**common)
    if arch == "granite":
        from transformers import GraniteConfig

        return GraniteConfig(
            **common,
            embedding_multiplier=12.0,
            logits_scaling=8.0,
            residual_multiplier=0.22,
            attention_multiplier=0.0625,
        )
    if arch == "helium":
        from transformers import HeliumConfig

        return HeliumConfig(**common)
    if arch == "starcoder2":
        from transformers import Starcoder2Config

        return Starcoder2Config(**common, sliding_window=None)
    raise ValueError(f"unknown arch {arch!r}: use one of {', '.join(ARCHS)}")


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
    if arch in EAGER_ONLY:
        attn = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    model.eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def _llama_cpp_permute(weights: Any, heads: int) -> Any:
    """llama.cpp's row order for a q/k projection (transformers undoes it when reading GGUF)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(path: Path | str, num_layers: int = 2, seed: int = 0) -> tuple[Path, Any]:
    """Write a tiny random Llama with its tokenizer as a GGUF file (float32 tensors), the way
    llama.cpp's converter would; return the file and the source model (float32, eval mode).

    Tensor names follow `gguf.get_tensor_name_map`, which transformers also reads them by; q and k
    projections are permuted as llama.cpp does. The tokenizer is the byte-level BPE of
    `make_tiny_tokenizer`, stored as a `gpt2` GGUF tokenizer with its merges, special tokens and
    chat template.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = make_tiny_tokenizer()
    config = make_tiny_config("llama", len(tokenizer), num_layers, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(num_layers)
    writer.add_context_length(MAX_POSITIONS)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(2 * HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(len(tokenizer))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(SPECIAL_TOKENS)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, num_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied to the embeddings: llama.cpp stores it once
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        weights = tensor.numpy()
        if stem.endswith("q_proj"):
            weights = _llama_cpp_permute(weights, HEADS)
        elif stem.endswith("k_proj"):
            weights = _llama_cpp_permute(weights, KV_HEADS)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model
