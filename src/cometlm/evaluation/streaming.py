"""What answering and scoring ask of a CoMeT model: read a context so that its tail opens the chunk the answer
goes in, then generate an answer or score given continuations.

The comet and no-memory methods (`methods.MemoryMethod`), SCROLLS and the lm-evaluation-harness backend
(`harness.py`) use these. How many context tokens the open chunk holds is the layout's choice
(`methods.open_chunk_tokens`): with "primed" a short first chunk is closed early so that every later chunk is
right-aligned and the open chunk holds the question and the tokens before it with room for the answer
(METHOD.md section 4); with "fixed", chunks of C are cut from the start, as `forward`, `ingest` and `generate`
cut them.

Scoring runs the open chunk and the continuations chunk by chunk as `forward` does, but from a memory state: a
context is read once for all its continuations, and logits exist only for the positions scored, a block of
rows at a time, so memory does not grow with the length of a continuation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cometlm.inputs import Chunk
from cometlm.evaluation.settings import READ_BAR_MIN_STEPS, SNAPSHOT_SECONDS
from cometlm.progress import progress_bar
from cometlm.runtime import PeriodicTrim
from cometlm.state import MemoryState

SCORE_ROWS = 512  # positions per LM-head call when scoring: logits never exceed SCORE_ROWS x vocabulary


def read_bar(total: int, steps: int, progress: bool, initial: int = 0):
    """A nested per-read progress bar over `total` tokens (`initial` of them read before a resume), shown only for
    reads of READ_BAR_MIN_STEPS steps or more."""
    return progress_bar(total=total, initial=initial, desc="reading", unit="tok", unit_scale=True, nested=True,
                        enabled=progress and steps >= READ_BAR_MIN_STEPS)


@dataclass
class Snapshot:
    """Where a long read saves its state every `every` seconds, and what names the model (`tag`): a snapshot is
    resumed only by a read of the same ids, tail, chunk size and tag. After a read that resumed,
    `resumed_tokens` and `resumed_seconds` say how many tokens the earlier processes had read and in how long."""

    path: Path
    tag: str = ""
    every: float = SNAPSHOT_SECONDS
    resumed_tokens: int = 0
    resumed_seconds: float = 0.0


def read_context(model, ids: list[int], tail: int, progress: bool = False, snapshot: Snapshot | None = None):
    """A fresh memory after reading all of `ids` but their last `tail` tokens, chunked so that the open chunk
    holds exactly those `tail` tokens once they are read (by `generate`, `ingest` or `score_continuations`).

    A short first chunk is closed early when the length requires it; the chunks after it are full, and the last
    of them stays open until the tail arrives, as `ingest` leaves it. Long reads show a nested progress bar.

    With a `snapshot`, the state and the read position are saved to its file (atomically) every `snapshot.every`
    seconds, and a read that finds a snapshot of the same ids, tail, chunk size and tag continues from it: the
    state is the same as reading at once, so an interrupted million-token read loses at most `snapshot.every`
    seconds. A snapshot of anything else is ignored and overwritten. The caller deletes the file when it no
    longer needs it.
    """
    n, c = len(ids), model.comet_config.chunk_size
    if not 1 <= tail <= min(n, c):
        raise ValueError(f"the open chunk must hold 1..{min(n, c)} of the {n} context tokens (got {tail})")
    first = (n - tail) % c  # a short first chunk, closed early, right-aligns every later chunk
    tokens = torch.tensor([ids[: n - tail]], device=model.backbone.device)
    identity = {"ids": _digest(ids), "tail": str(tail), "chunk_size": str(c), "tag": snapshot.tag if snapshot else ""}
    state, begin, before = None, first, 0.0
    if snapshot is not None:
        state, begin, before = _resume(model, snapshot.path, identity, first, n - tail, tokens.device)
        snapshot.resumed_tokens, snapshot.resumed_seconds = (begin, before) if state is not None else (0, 0.0)
    if state is None:
        state = model.init_memory(1)
        if first:
            state = model.close_open_chunk(model.ingest(tokens[:, :first], state))
    started = saved = time.monotonic()
    steps = (n - tail - first) // c
    with read_bar(n - tail - first, steps, progress, initial=begin - first) as bar:  # in pieces: the same state
        for start in range(begin, n - tail, c):
            state = model.ingest(tokens[:, start : start + c], state)
            bar.update(min(c, n - tail - start))
            if snapshot is not None and time.monotonic() - saved >= snapshot.every and start + c < n - tail:
                Path(snapshot.path).parent.mkdir(parents=True, exist_ok=True)
                seconds = before + time.monotonic() - started
                state.save(snapshot.path, notes={**identity, "next": str(start + c), "seconds": f"{seconds:.6f}"})
                saved = time.monotonic()
    return state


def _digest(ids: list[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


def _resume(model, path, identity: dict[str, str], first: int, end: int, device):
    """(state, position to read from, seconds spent before) from a snapshot of the same read; (None, first, 0.0)
    when there is none, or it belongs to another read, or it cannot be used (torn, foreign, inconsistent)."""
    nothing = None, first, 0.0
    path = Path(path)
    if not path.is_file():
        return nothing
    try:
        notes = MemoryState.read_notes(path)
        if not isinstance(notes, dict) or any(notes.get(k) != v for k, v in identity.items()):
            return nothing
        begin, seconds = int(notes["next"]), float(notes.get("seconds", 0.0))
        c = int(identity["chunk_size"])
        if not (first < begin < end and (begin - first) % c == 0 and seconds >= 0):
            return nothing
        state = MemoryState.load(path, device=device)
        model.check_memory(state, 1)
    except (ValueError, KeyError, TypeError):
        return nothing  # read from the start; the next save overwrites the file
    return state, begin, seconds


def generate_answer(
    model, ids: list[int], tail: int, max_new_tokens: int, eos_token_id=None, progress: bool = False,
    snapshot: Snapshot | None = None, **generation,
) -> list[int]:
    """Reads `ids` with the open chunk holding their last `tail` tokens, then generates; returns the new ids.

    `generation` goes to `CometForCausalLM.generate` (do_sample, temperature, top_k, top_p, stopping_criteria,
    ...); stopping criteria see the `tail` tokens followed by the generated ones. With the "fixed" layout's tail
    this is exactly `model.generate(ids)`, since reading in pieces gives the same state as reading at once.
    `snapshot`: as in `read_context`, so a long read resumes after an interruption.
    """
    state = read_context(model, ids, tail, progress, snapshot=snapshot)
    open_ids = torch.tensor([ids[-tail:]], device=model.backbone.device)
    out = model.generate(open_ids, memory=state, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                         **generation)
    return out[0, tail:].tolist()


def _repeat(state: MemoryState, n: int) -> MemoryState:
    return MemoryState.from_tensors(state.config, {k: v.expand(n, *v.shape[1:]) for k, v in state.tensors().items()})


def _padded(pieces: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one right-padded batch and its attention mask (B, max length)."""
    width = max(len(p) for p in pieces)
    ids = torch.zeros(len(pieces), width, dtype=torch.long, device=device)
    mask = torch.zeros(len(pieces), width, dtype=torch.long, device=device)
    for row, piece in enumerate(pieces):
        ids[row, : len(piece)] = torch.tensor(piece, dtype=torch.long)
        mask[row, : len(piece)] = 1
    return ids, mask


@torch.no_grad()
def read_contexts(model, prompts: list[list[int]], tails: list[int], progress: bool = False) -> MemoryState:
    """`read_context` of several prompts of any lengths as one batch: stream i reads all of ``prompts[i]`` but its
    last ``tails[i]`` tokens, in the chunks `read_context` reads it in alone, so each stream's memory is the one it
    gets alone. Generating from it takes each prompt's tail (a padded batch: `CometForCausalLM.generate`)."""
    c = model.comet_config.chunk_size
    if len(prompts) != len(tails) or not prompts:
        raise ValueError("read_contexts takes one tail per prompt, and at least one prompt")
    for n, tail in zip(map(len, prompts), tails):
        if not 1 <= tail <= min(n, c):
            raise ValueError(f"the open chunk must hold 1..{min(n, c)} of the {n} context tokens (got {tail})")
    device = model.backbone.device
    firsts = [(len(p) - t) % c for p, t in zip(prompts, tails)]  # each stream's short first chunk, closed early
    state = model.init_memory(len(prompts))
    if any(firsts):
        ids, mask = _padded([p[:f] for p, f in zip(prompts, firsts)], device)
        state = model.close_open_chunk(model.ingest(ids, state, attention_mask=mask))
    middles = [p[f : len(p) - t] for p, f, t in zip(prompts, firsts, tails)]
    if any(middles):
        ids, mask = _padded(middles, device)
        state = model.ingest(ids, state, attention_mask=mask, progress=progress)
    return state


@torch.no_grad()
def generate_answers(
    model, prompts: list[list[int]], tail: int, max_new_tokens: list[int], eos_token_id=None, progress: bool = False,
) -> list[list[int]]:
    """`generate_answer` for prompts of one length, read and decoded as one batch: every prompt's memory is read
    as `read_context` reads it alone (the same chunks), then all answers are generated together, greedily, each
    cut at its own `max_new_tokens` and after its first EOS, as it would end alone."""
    n, c = len(prompts[0]), model.comet_config.chunk_size
    if any(len(p) != n for p in prompts) or not 1 <= tail <= min(n, c):
        raise ValueError("generate_answers takes prompts of one length, with 1..chunk_size tokens in the open chunk")
    state = read_contexts(model, prompts, [tail] * len(prompts), progress)
    ids = torch.tensor([p[n - tail :] for p in prompts], device=model.backbone.device)
    out = model.generate(ids, memory=state, max_new_tokens=max(max_new_tokens), eos_token_id=eos_token_id)
    ends = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    answers = []
    for row, limit in zip(out[:, tail:].tolist(), max_new_tokens):
        row = row[:limit]
        cut = next((i + 1 for i, token in enumerate(row) if token in ends), len(row))
        answers.append(row[:cut])
    return answers


def score_continuations(model, state: MemoryState, continuations: list[list[int]], progress: bool = False):
    """Log-probabilities of each continuation after the text read into `state`, all continuations in one batch.

    `state` holds one stream whose open chunk is not empty (its last token predicts each continuation's first).
    Returns, per continuation, `(logprobs, greedy)`: float32 (n,) log p(token | everything before) and bool (n,)
    whether it was the most likely token, on the CPU. Equal to the log-softmax of `forward` logits over the
    context followed by the continuation, chunked the way `state` was read.
    """
    model.check_memory(state, 1)
    p = int(state.pending_len[0])
    if p < 1:
        raise ValueError("score_continuations needs a state whose open chunk holds at least one token")
    c, device = model.comet_config.chunk_size, state.pending.device
    lengths = torch.tensor([p + len(cont) for cont in continuations], device=device)
    width = int(lengths.max())
    ids = torch.zeros(len(continuations), width + 1, dtype=torch.long, device=device)  # one spare target column
    ids[:, :p] = state.pending[:, :p]
    for b, cont in enumerate(continuations):
        ids[b, p : p + len(cont)] = torch.tensor(cont, dtype=torch.long)
    state = _repeat(state, len(continuations))
    logprobs = torch.zeros(len(continuations), width)
    greedy = torch.zeros(len(continuations), width, dtype=torch.bool)
    backbone = model.backbone
    starts = range(0, width, c)
    def chunks():
        for start in starts:
            text_len = (lengths - start).clamp(0, c)
            closing = lengths - start > c  # a full chunk that more text follows
            n = int(text_len.max())
            yield Chunk(ids[:, start : start + n], text_len, closing, None, None)

    trim = PeriodicTrim()
    bar = progress_bar(zip(starts, model.read_chunks(chunks(), state)), total=len(starts), desc="scoring",
                       unit="chunk", nested=True, enabled=progress and len(starts) >= READ_BAR_MIN_STEPS)
    for start, (chunk, out) in bar:
        hidden, n = out.text_hidden, chunk.text_ids.shape[1]
        position = start + torch.arange(n, device=device)  # position j predicts the token at j + 1
        scored = (position[None] >= p - 1) & (position[None] < lengths[:, None] - 1)  # (B, n)
        rows, cols = scored.nonzero(as_tuple=True)
        for a in range(0, rows.numel(), SCORE_ROWS):
            r, k = rows[a : a + SCORE_ROWS], cols[a : a + SCORE_ROWS]
            logp = torch.log_softmax(backbone.logits(hidden[r, k]).float(), dim=-1)
            target = ids[r, start + k + 1]
            logprobs[r.cpu(), start + k.cpu()] = logp.gather(1, target[:, None])[:, 0].cpu()
            greedy[r.cpu(), start + k.cpu()] = (logp.argmax(dim=-1) == target).cpu()
        trim()
    return [(logprobs[b, p - 1 : p - 1 + len(cont)], greedy[b, p - 1 : p - 1 + len(cont)])
            for b, cont in enumerate(continuations)]
