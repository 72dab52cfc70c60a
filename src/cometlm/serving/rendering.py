"""What a session reads, as text: plain text as given, chat messages through the tokenizer's chat template, and
structured events as one canonical JSON line each (keys sorted, so equal events read as equal text)."""

from __future__ import annotations

import json
from typing import Sequence


def render_events(events: Sequence[dict]) -> str:
    """One line per event: ``{"item": "tea", "type": "order"}``. Key order in the request does not matter."""
    return "".join(json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(", ", ": ")) + "\n"
                   for event in events)


def new_turn(messages: Sequence[dict]) -> list[dict]:
    """The messages after the last assistant message: what a chat client sends anew each turn. With a session the
    earlier ones are in its memory already (they were read when they were new), so they are not read twice."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return list(messages[last + 1:])


def render_messages(tokenizer, messages: Sequence[dict], add_generation_prompt: bool, continuing: bool) -> str:
    """The chat template's text for ``messages`` (dicts with ``role`` and a string ``content``).

    ``continuing``: the memory has read earlier turns, so a template's default system prompt (SmolLM2 adds one when
    the first message is not a system message) is not read again: the turn is rendered after an empty system message
    and only its own part kept. A template without a chat format of its own gets plain ``role: content`` lines.
    """
    messages = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None) is None:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant: " if add_generation_prompt else "")

    def template(items, prompt):
        return tokenizer.apply_chat_template(items, add_generation_prompt=prompt, tokenize=False)

    if continuing and messages and messages[0]["role"] != "system":
        prefix = [{"role": "system", "content": ""}]
        head, full = template(prefix, False), template(prefix + messages, add_generation_prompt)
        if full.startswith(head):
            return full[len(head):]
    return template(messages, add_generation_prompt)
