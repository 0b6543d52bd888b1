"""The OpenAI chat-completions wire format: checking a request, and shaping answers and chunks.

A request names a cache as its model (`homer/<name>`, or `homer` for the most recent cache) and
carries the conversation; the last user message is the question, earlier user/assistant pairs
are re-fed after the cache. Every field is checked for its type and range here, so a wrong value
becomes a 400 naming the field, never an exception deeper down. Fields that would change the
answer and that homer does not implement (`n` > 1, penalties, logprobs, tools) are refused rather
than ignored; fields that do not change it (`user`, `metadata`, ...) are ignored.

System (and developer) messages are accepted and not used: the prompt around the document was
fixed when the cache was built. Pure functions and dataclasses; nothing here knows HTTP.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from homer_server.errors import ApiError

#: Prefix of a cache's model id (`homer/<cache name>`); the bare prefix names the latest cache.
MODEL_PREFIX = "homer"
#: OpenAI's bound on stop sequences.
MAX_STOP = 4
#: With no max_tokens, an answer may run to the end of the model's window (OpenAI's meaning).
UNBOUNDED_TOKENS = 1 << 30


def model_id(cache_name: str) -> str:
    return f"{MODEL_PREFIX}/{cache_name}"


def cache_of(model: str) -> str | None:
    """The cache a model id names (`homer/NAME` or `NAME`); None for `homer` (the latest).

    Raises:
        ApiError: an unsafe name (400, it could reach outside the store).
    """
    from homer.store import validate_name

    name = model.removeprefix(MODEL_PREFIX + "/") if model != MODEL_PREFIX else None
    if name is None:
        return None
    try:
        return validate_name(name)
    except Exception as exc:
        raise ApiError(400, str(exc), param="model", code="invalid_cache_name") from None


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request.

    Attributes:
        model: as the client wrote it.
        cache: the cache name, None for the most recent.
        history: (question, answer) pairs before the question.
        question: the last user message.
    """

    model: str
    cache: str | None
    history: tuple[tuple[str, str], ...]
    question: str
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stop_loops: bool = True
    cite: int = 0
    reread: bool | None = None


#: Most passages a request may ask to be cited.
MAX_CITE = 20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_error(param: str, wanted: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"{param} must be {wanted}, got {type(value).__name__} {value!r:.60}",
        param=param,
        code="invalid_type",
    )


def _range_error(param: str, wanted: str, value: Any) -> ApiError:
    return ApiError(
        400, f"{param} must be {wanted}, got {value!r}", param=param, code="invalid_value"
    )


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(
                    400,
                    f"{where}.content: only text parts are supported",
                    param=f"{where}.content",
                    code="unsupported_content",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise _type_error(f"{where}.content.text", "a string", text)
            texts.append(text)
        return "".join(texts)
    raise _type_error(f"{where}.content", "a string or a list of text parts", content)


def _conversation(messages: Any) -> tuple[tuple[tuple[str, str], ...], str]:
    """(history, question) from OpenAI messages; consecutive messages of a role are joined."""
    if not isinstance(messages, list):
        raise _type_error("messages", "a list of messages", messages)
    turns: list[list[str]] = []  # [role, text]
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if role in ("system", "developer"):
            continue  # the prompt around the document was fixed at ingest (module docstring)
        if role not in ("user", "assistant"):
            raise ApiError(
                400,
                f"{where}.role must be system, developer, user or assistant, got {role!r}",
                param=f"{where}.role",
                code="invalid_value",
            )
        text = _content(message, where)
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([role, text])
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(
            400,
            "messages must end with a non-empty user message (the question)",
            param="messages",
            code="invalid_value",
        )
    if turns[0][0] != "user":
        raise ApiError(
            400,
            "the conversation must start with a user message",
            param="messages",
            code="invalid_value",
        )
    history = tuple((turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2))
    return history, turns[-1][1]


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "n must be 1: homer answers one choice", param="n", code="unsupported")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value is not None and value != 0:
            raise ApiError(400, f"{name} is not supported (use 0)", param=name, code="unsupported")
    for name in ("logprobs", "tools", "functions", "tool_choice", "logit_bias"):
        if body.get(name):
            raise ApiError(400, f"{name} is not supported", param=name, code="unsupported")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise ApiError(
            400,
            "response_format: only text is supported",
            param="response_format",
            code="unsupported",
        )


def parse_chat(body: Any) -> ChatRequest:
    """Check a chat-completions request body (already parsed JSON).

    Raises:
        ApiError: 400 naming the field at fault.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a cache's model id such as homer/NAME", model)
    cache = cache_of(model)
    history, question = _conversation(body.get("messages"))
    _refuse_unsupported(body)

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _type_error("stream", "true or false", stream)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _type_error("stream_options.include_usage", "true or false", include_usage)

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = UNBOUNDED_TOKENS
    elif not _is_int(max_tokens):
        raise _type_error(param, "an integer", max_tokens)
    elif max_tokens < 1:
        raise _range_error(param, "at least 1", max_tokens)

    temperature = body.get("temperature")
    if temperature is None:
        temperature = 0.0  # homer's default is greedy, as on the command line
    elif not _is_number(temperature):
        raise _type_error("temperature", "a number", temperature)
    elif not 0 <= temperature <= 2:
        raise _range_error("temperature", "between 0 and 2", temperature)

    top_p = body.get("top_p")
    if top_p is None:
        top_p = 1.0
    elif not _is_number(top_p):
        raise _type_error("top_p", "a number", top_p)
    elif not 0 < top_p <= 1:
        raise _range_error("top_p", "in (0, 1]", top_p)

    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise _type_error("seed", "an integer", seed)

    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _type_error("stop", "a string or a list of strings", stop)
    if len(stops) > MAX_STOP:
        raise _range_error("stop", f"at most {MAX_STOP} strings", stop)
    if any(not s for s in stops):
        raise _range_error("stop", "non-empty strings", stop)

    stop_loops = body.get("stop_loops", True)  # homer's own field: False lets an answer loop
    if not isinstance(stop_loops, bool):
        raise _type_error("stop_loops", "true or false", stop_loops)

    # homer's own fields: cite the passages the answer rests on, re-read the question's.
    cite = body.get("cite", 0)
    if not _is_int(cite):
        raise _type_error("cite", "an integer", cite)
    if not 0 <= cite <= MAX_CITE:
        raise _range_error("cite", f"between 0 and {MAX_CITE}", cite)
    reread = body.get("reread")
    if reread is not None and not isinstance(reread, bool):
        raise _type_error("reread", "true or false", reread)

    return ChatRequest(
        model=model,
        cache=cache,
        history=history,
        question=question,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        stop=stops,
        stop_loops=stop_loops,
        cite=cite,
        reread=reread,
    )


# ----------------------------------------------------------------------------- responses


def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    ident: str,
    model: str,
    text: str,
    finish_reason: str,
    usage_counts: dict[str, int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A whole `chat.completion` object; `extra` is homer's own block (cache, timings)."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_counts,
        "homer": extra,
    }


def chunk(
    ident: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    usage_counts: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; with `choices=False`, the usage-only last chunk."""
    body: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": (
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
            if choices
            else []
        ),
    }
    if usage_counts is not None:
        body["usage"] = usage_counts
    if extra is not None:
        body["homer"] = extra
    return body
