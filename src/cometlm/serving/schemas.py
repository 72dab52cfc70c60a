"""Request bodies, checked strictly: unknown fields, wrong types (a string for a number, 1.0 for an int, 1 for a
bool) and out-of-range numbers are refused with a 400 naming the field. The OpenAI fields keep their names and
meanings; the extensions are ``top_k``, ``repetition_penalty``, ``session_id`` and ``remember``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import bad_request
from .scheduler import Sampling

MAX_STOP = 4


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, max_length=64)

    def as_dict(self) -> dict:
        """``role`` and ``content`` as a chat template takes them (text parts joined; a developer message is the
        system message of newer OpenAI models)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(Strict):
    include_usage: bool = False


class GenerationFields(Strict):
    """What every generating request takes."""

    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="tokens to generate at most")
    temperature: float | None = Field(None, ge=0, le=2, description="0 decodes greedily")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=1_000_000, description="extension: keep the k most likely tokens")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="extension: >1 discourages repeats")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings that end the answer")
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    presence_penalty: float = Field(0.0, ge=0, le=0, description="not supported: only 0")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="not supported: only 0 (see repetition_penalty)")
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP or any(not 1 <= len(s) <= 256 for s in stops):
            raise ValueError(f"stop takes up to {MAX_STOP} strings of 1 to 256 characters")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def sampling(self, default_temperature: float) -> Sampling:
        temperature = default_temperature if self.temperature is None else self.temperature
        return Sampling(temperature, 1.0 if self.top_p is None else self.top_p, self.top_k or None,
                        self.repetition_penalty, self.seed)

    def new_tokens(self, limit: int, default: int) -> int:
        want = self.max_tokens if self.max_tokens is not None else min(default, limit)
        if want > limit:
            raise bad_request(f"max_tokens is {want:,}; this server generates at most {limit:,} per request",
                              param="max_tokens", code="too_many_tokens")
        return want


class SessionFields(Strict):
    session_id: str | None = Field(None, max_length=64, description="extension: answer from this session's memory "
                                   "(or send the X-Session-Id header)")
    remember: bool | None = Field(None, description="extension: keep the prompt and the answer in the session's "
                                  "memory")


class CompletionRequest(GenerationFields, SessionFields):
    model: str
    prompt: str
    echo: bool = Field(False, description="not supported: only false")
    suffix: None = None
    logprobs: None = None
    best_of: int = Field(1, ge=1, le=1)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        if value:
            raise ValueError("echo is not supported")
        return value


class ChatRequest(GenerationFields, SessionFields):
    model: str
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = Field(False, description="not supported: only false")

    @model_validator(mode="after")
    def _one_limit(self):
        if self.max_completion_tokens is not None:
            if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; send one")
            self.max_tokens = self.max_completion_tokens
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        return self


class CreateSessionRequest(Strict):
    pass


class AppendRequest(Strict):
    """Exactly one of ``text`` (read as given), ``messages`` (through the chat template) or ``events`` (JSON objects,
    one canonical line each)."""

    text: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=10_000)
    events: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=100_000)
    expect_appends: int | None = Field(None, ge=0, le=2**63 - 1, description="refuse (409) unless the session has "
                                       "exactly this many appends: a retry after a lost answer lands at most once")

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in ("text", "messages", "events") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"send exactly one of text, messages or events (got {', '.join(given) or 'none'})")
        return self


class AskRequest(GenerationFields):
    """Exactly one of ``question`` (read as given, right after the memory) or ``messages`` (chat template)."""

    question: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=10_000)
    remember: bool = Field(False, description="keep the question and the answer in the session's memory")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.question is None) == (self.messages is None):
            raise ValueError("send exactly one of question or messages")
        return self
