"""The model's one worker thread: requests of different sessions are collected for a few milliseconds and run
through the model as one padded batch.

Reads (appends) go through ``model.ingest`` together; generations with the same sampling settings go through
``model.generate`` together, each stream stopping on its own (``max_tokens``, stop strings, end of sequence, a
client that went away) and streaming its own text. States are stacked into one batch (``MemoryState.stack``) and
taken apart again (``select``). Requests of one session never meet in a batch: the service holds a session's lock
while its request is here. Greedy answers in a batch are the ones each request would get alone; the memories are
equal up to float rounding (a batch of one is bit-for-bit the single-stream computation).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..generation import end_token_ids
from ..state import MemoryState
from .decoding import TextStream

log = logging.getLogger("cometlm.serve")


@dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 decodes greedily; above 0 it samples with ``top_p`` / ``top_k``. With a ``seed`` the draw
    is reproducible for requests that run alone (one generator serves a whole batch)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` call."""
        if not self.do_sample:
            return ("greedy", self.repetition_penalty)
        return ("sample", self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.seed)


@dataclass
class Generation:
    """One request's generation. ``on_text`` (called on the event loop) receives the text as it is decided;
    setting ``cancelled`` stops the stream at its next token. ``later_prompt``: the prompt to read instead into a
    session that has read something (a chat turn rendered without the template's default system prompt)."""

    prompt: list[int]
    sampling: Sampling
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None
    cancelled: bool = False
    later_prompt: list[int] | None = None


@dataclass
class Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    state: MemoryState


@dataclass
class _Job:
    state: MemoryState
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    ids: list[int] = field(default_factory=list)  # a read
    generation: Generation | None = None

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)

    def emit(self, text: str) -> None:
        if text and self.generation.on_text is not None:
            self.loop.call_soon_threadsafe(self.generation.on_text, text)


_STOP = object()


class Scheduler:
    def __init__(self, model, window_ms: float = 5.0, max_batch: int = 16):
        self.model, self.window, self.max_batch = model, window_ms / 1000, max_batch
        self.tokenizer = model.tokenizer
        self.eos_ids = end_token_ids(model, self.tokenizer)
        self.device = model.backbone.embed_tokens.weight.device
        self.batch_sizes: Counter[int] = Counter()  # how many batches of each size ran (for stats and tests)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cometlm-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finishes what is queued, then ends the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    async def read(self, state: MemoryState, ids: list[int]) -> MemoryState:
        """``state`` after reading ``ids`` (not empty)."""
        return await self._submit(_Job(state, *self._future(), ids=list(ids)))

    async def generate(self, state: MemoryState, generation: Generation) -> Answer:
        return await self._submit(_Job(state, *self._future(), generation=generation))

    @staticmethod
    def _future():
        loop = asyncio.get_running_loop()
        return loop, loop.create_future()

    async def _submit(self, job: _Job):
        if not self._thread.is_alive():
            raise RuntimeError("the model thread is not running")
        self._queue.put(job)
        return await job.future

    # ---------------------------------------------------------------------------------------------------------
    # The worker thread

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            job = self._queue.get()
            if job is _STOP:
                break
            jobs, deadline = [job], time.monotonic() + self.window
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                jobs.append(more)
            self._run(jobs)
        while not self._queue.empty():  # anything queued behind the stop still gets its answer
            job = self._queue.get()
            if job is not _STOP:
                self._run([job])

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            key = ("read",) if job.generation is None else job.generation.sampling.batch_key()
            groups.setdefault(key, []).append(job)
        for key, group in groups.items():
            self.batch_sizes[len(group)] += 1
            try:
                with torch.inference_mode():
                    self._read(group) if key == ("read",) else self._generate(group)
            except Exception as err:  # every request of the batch gets the error; the thread lives on
                log.exception("a batch of %d failed", len(group))
                for job in group:
                    job.resolve(error=err)

    def _batch(self, jobs: list[_Job], rows: list[list[int]], left: bool):
        """The stacked states and the padded token ids of ``jobs`` (padding on the left for generation)."""
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
        state = _to(MemoryState.stack([job.state for job in jobs]), self.device)
        return state, ids.to(self.device), mask.to(self.device)

    def _read(self, jobs: list[_Job]) -> None:
        state, ids, mask = self._batch(jobs, [job.ids for job in jobs], left=False)
        after = self.model.ingest(ids, state, attention_mask=mask)
        for i, job in enumerate(jobs):
            job.resolve(_to(after.select(torch.tensor([i], device=self.device)), "cpu"))

    def _generate(self, jobs: list[_Job]) -> None:
        gens = [job.generation for job in jobs]
        streams = [TextStream(self.tokenizer, g.stop, g.max_new_tokens, self.eos_ids) for g in gens]
        state, ids, mask = self._batch(jobs, [g.prompt for g in gens], left=True)
        sampling = gens[0].sampling
        generator = torch.Generator(device=self.device).manual_seed(sampling.seed) if sampling.seed is not None else None

        def stopped(sequences, scores):
            for g, s in zip(gens, streams):
                if g.cancelled:
                    s.cancel()
            return torch.tensor([s.done for s in streams], device=sequences.device)

        out = self.model.generate(
            ids, memory=state, attention_mask=mask, max_new_tokens=max(g.max_new_tokens for g in gens),
            do_sample=sampling.do_sample, temperature=sampling.temperature if sampling.do_sample else 1.0,
            top_k=sampling.top_k or 0, top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self.eos_ids, streamer=_Streamer(jobs, streams), stopping_criteria=stopped,
            generator=generator, return_dict_in_generate=True,
        )
        for i, (job, s) in enumerate(zip(jobs, streams)):
            after = _to(out.memory.select(torch.tensor([i], device=self.device)), "cpu")
            job.resolve(Answer(s.text, s.finish_reason or "length", len(job.generation.prompt), len(s.ids), after))


class _Streamer:
    """What ``generate`` calls with each step's tokens (B,): each stream's new text goes to its own request."""

    def __init__(self, jobs: list[_Job], streams: list[TextStream]):
        self.jobs, self.streams, self.prompt_seen = jobs, streams, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for job, stream, token in zip(self.jobs, self.streams, value.tolist()):
            if not stream.done:
                job.emit(stream.push(token))

    def end(self) -> None:
        pass


def _to(state: MemoryState, device) -> MemoryState:
    if state.pending.device == torch.device(device):
        return state
    return MemoryState.from_tensors(state.config, {k: v.to(device) for k, v in state.tensors().items()})
