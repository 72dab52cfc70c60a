"""How the evaluations read a long input: CoMeT and every baseline behind one interface (``base.Method``).

One module per method: ``memory`` (comet, and no-memory: the same model with both memories off), ``backbone``
(full attention, and truncation to the last window), ``sliding_window`` (StreamingLLM's sinks + recent tokens).
``build_method`` makes one by name; every evaluation task (passkey, needle, perplexity, SCROLLS, lm-eval) asks
only the ``Method`` interface, so a new method is one new module and one line here, and a new task works with
every method at once. The names, defaults and help text are plain constants in ``evaluation.settings``.
"""

from __future__ import annotations

import hashlib
import json

from cometlm.evaluation.settings import DEFAULT_PRIME_TOKENS, DEFAULT_SINK_TOKENS, LAYOUTS, MEMORY_METHODS, METHODS

from .base import Method, checksum, lora_checksum


def open_chunk_tokens(
    n_tokens: int, chunk_size: int, layout: str, question_tokens: int, answer_room: int,
    prime_tokens: int = DEFAULT_PRIME_TOKENS,
) -> int:
    """How many of the prompt's last tokens the open chunk holds when generation starts.

    "fixed": what is left after chunks of C from the start (C when the prompt is a multiple of C, so the first
    generated token closes that chunk and the answer starts a fresh one). "primed": the question plus up to
    `prime_tokens` context tokens before it, leaving `answer_room` free so the chunk never closes mid-answer.
    """
    if layout == "fixed":
        return n_tokens % chunk_size or chunk_size
    if layout != "primed":
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    room = chunk_size - answer_room
    if room < question_tokens:
        raise ValueError(
            f"the primed layout needs the question ({question_tokens} tokens) and the answer ({answer_room} "
            f"tokens) in one chunk, but the chunk size is {chunk_size}; use a larger chunk size or layout 'fixed'"
        )
    return min(prime_tokens + question_tokens, room, n_tokens)


def _count(value, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")


def build_method(
    name: str,
    model,
    layout: str = "primed",
    prime_tokens: int = DEFAULT_PRIME_TOKENS,
    window: int | None = None,
    sink_tokens: int = DEFAULT_SINK_TOKENS,
) -> Method:
    """The method `name` over a `CometForCausalLM` (whose backbone the other methods use as is).

    `layout` and `prime_tokens` apply to comet and no-memory when they answer a prompt; `window` to full (default
    and upper limit: the backbone's window), truncated (default: the backbone's window) and sliding-window
    (default: the backbone's window less the sinks and one read block); `sink_tokens` to sliding-window.
    """
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)} (got {name!r})")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if isinstance(prime_tokens, bool) or not isinstance(prime_tokens, int) or prime_tokens < 0:
        raise ValueError(f"prime_tokens must be an integer >= 0 (got {prime_tokens!r})")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be a positive token count (got {window!r})")
    _count(sink_tokens, "sink_tokens", 0)
    if name in MEMORY_METHODS:
        from .memory import MemoryMethod

        return MemoryMethod(model, name, layout, prime_tokens)
    if name == "sliding-window":
        from .sliding_window import SlidingWindowMethod

        return SlidingWindowMethod(model, window, sink_tokens)
    from .backbone import BackboneMethod

    return BackboneMethod(model, name, window)


def model_info(model, method: "Method", name: str | None) -> dict:
    """What identifies the weights a result was computed with; its hash guards resuming against mixing models."""
    info = {"name": name or model.base_model or type(model.backbone_model).__name__,
            "base_model": model.base_model, "backbone": model.backbone.describe()}
    if method.name in MEMORY_METHODS:
        info["comet_config"] = method.runner.comet_config.to_dict()
        info["comet_checksum"] = checksum(method.runner.memory.parameters())
    lora = lora_checksum(model)
    if lora is not None:  # an adapter trained with LoRA changes the backbone every method reads with
        info["lora_checksum"] = lora
    dtype = str(model.backbone.dtype).removeprefix("torch.")
    if dtype != "float32":  # the default is left out, so that the ids of float32 results stay what they were
        info["dtype"] = dtype
    identity = {k: v for k, v in info.items() if k != "name"}
    info["id"] = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return info
