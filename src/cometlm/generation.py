"""Constant-memory generation (METHOD.md section 4).

The prompt is read into a ``MemoryState``; only the open chunk keeps a KV cache. Each new token is appended
to it, with a beacon after every ``s`` text tokens (inside the model, never emitted). When the open chunk
holds ``C`` text tokens and another token arrives, the chunk is closed through the same ``ingest`` path that
streaming uses, and a fresh open chunk starts behind the updated memory rows. Because the open chunk is laid
out exactly like a chunk in ``forward``, incremental logits equal teacher-forced logits token by token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .state import MemoryState


@dataclass
class OpenChunk:
    """The open chunk's KV cache and bookkeeping. ``logits`` (B, V) predict the next token."""

    cache: DynamicCache
    key_valid: torch.Tensor  # (B, cached rows)
    next_position: torch.Tensor  # (B,)
    n_text: int
    logits: torch.Tensor


@dataclass
class CometGenerateOutput:
    """``logits`` (with ``output_logits``): one (B, V) tensor per step, the raw next-token logits."""

    sequences: torch.Tensor
    memory: MemoryState
    logits: tuple[torch.Tensor, ...] | None = None


def open_chunk(model, state: MemoryState) -> OpenChunk:
    """Runs the state's open chunk (without closing it) and keeps its KV cache."""
    n_text = int(state.pending_len[0])
    if n_text == 0 or bool((state.pending_len != n_text).any()):
        raise ValueError("open_chunk needs every stream's open chunk to hold the same number (>= 1) of tokens")
    closing = torch.zeros_like(state.pending_len, dtype=torch.bool)
    cache = DynamicCache()
    text_hidden, _, layout = model._run_chunk(state, state.pending, state.pending_len, closing, cache=cache)
    logits = model.backbone.lm_head(text_hidden[:, -1])
    return OpenChunk(cache, layout.valid, layout.valid.sum(dim=1), n_text, logits)


def extend(model, chunk: OpenChunk, token: torch.Tensor) -> OpenChunk:
    """Appends one text token per stream (and the beacon that completes its s-block) to the open chunk."""
    config = model.comet_config
    hidden = model.backbone.embed_tokens(token[:, None])  # (B, 1, d)
    n_text = chunk.n_text + 1
    if config.use_temp and n_text % config.temp_stride == 0:
        beacon = model.memory.tokens.beacon[None].expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([hidden, beacon], dim=1)
    q = hidden.shape[1]
    batch, cached = chunk.key_valid.shape
    key_valid = torch.cat([chunk.key_valid, chunk.key_valid.new_ones(batch, q)], dim=1)
    position_ids = chunk.next_position[:, None] + torch.arange(q, device=hidden.device)[None]
    causal = torch.arange(cached + q, device=hidden.device)[None] <= (cached + torch.arange(q, device=hidden.device))[:, None]
    mask = (causal[None] & key_valid[:, None, :])[:, None]  # (B, 1, q, cached + q)
    mask = model.backbone.attention_mask(mask, hidden.dtype, cached + q, hidden.device)
    rope = model.backbone.rope(hidden, position_ids)
    for layer in model.backbone.layers:
        hidden = layer(
            hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rope, cache=chunk.cache, use_cache=True
        )
    logits = model.backbone.lm_head(model.backbone.norm(hidden[:, 0]))
    return OpenChunk(chunk.cache, key_valid, chunk.next_position + q, n_text, logits)


def _append_pending(state: MemoryState, token: torch.Tensor) -> MemoryState:
    return MemoryState(
        state.config, state.layers, torch.cat([state.pending, token[:, None]], dim=1), state.pending_len + 1,
        state.chunks_closed,
    )


def _processors(do_sample, temperature, top_k, top_p, repetition_penalty) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if do_sample:
        if temperature is not None and temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


def generate(
    model,
    input_ids: torch.Tensor,
    memory: MemoryState | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    streamer=None,
    stopping_criteria=None,
    generator: torch.Generator | None = None,
    return_dict_in_generate: bool = False,
    output_logits: bool = False,
    progress: bool = False,
):
    """Hugging Face-style generation at constant memory.

    Returns the prompt followed by the new tokens (B, N + new), right-padded with ``pad_token_id`` after a
    stream ends; with ``return_dict_in_generate`` a ``CometGenerateOutput`` that also holds the final
    ``MemoryState`` (save it, or pass it back as ``memory`` to continue) and, with ``output_logits``, each
    step's logits. Prompts of different lengths in one batch are generated one stream at a time.

    ``stopping_criteria`` is what Hugging Face's ``generate`` takes (a ``StoppingCriteriaList``, or any callable
    ``(sequences, scores) -> bool or (B,) bool``); ``sequences`` are the ``input_ids`` given here followed by the
    tokens generated so far. A stream ends after the step on which it returns True, as at an EOS token.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int (got {max_new_tokens!r})")
    if do_sample and temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (got {temperature})")
    batch = model._batch(input_ids, attention_mask)
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model.backbone_model, "generation_config", None), "eos_token_id", None)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.numel() else 0
    options = dict(
        max_new_tokens=max_new_tokens, processors=_processors(do_sample, temperature, top_k, top_p, repetition_penalty),
        do_sample=do_sample, eos=eos.to(batch.ids.device), pad_token_id=pad_token_id, streamer=streamer,
        generator=generator, stopping_criteria=stopping_criteria, progress=progress,
    )
    state = memory if memory is not None else model.init_memory(batch.ids.shape[0])
    model.check_memory(state, batch.ids.shape[0])
    state = model.ingest(batch.ids, state, attention_mask=_mask_of(batch), progress=progress)
    if bool((state.pending_len == state.pending_len[0]).all()):
        sequences, state, logits = _generate_aligned(model, batch.ids, state, **options)
    else:
        if streamer is not None:
            raise ValueError("a streamer needs a batch of one stream, or of streams with equally long open chunks")
        rows, states, row_logits = [], [], []
        for b in range(batch.ids.shape[0]):
            row_ids = batch.ids[b : b + 1, : int(batch.lengths[b])]
            seq, row_state, steps = _generate_aligned(model, row_ids, _select(state, b), **options)
            rows.append(seq[0])
            states.append(row_state)
            row_logits.append(steps)
        width = max(r.numel() for r in rows)
        sequences = torch.stack([F.pad(r, (0, width - r.numel()), value=pad_token_id) for r in rows])
        state = _concat(states)
        n_steps = max(len(steps) for steps in row_logits)
        logits = [
            torch.cat([steps[i] if i < len(steps) else torch.zeros_like(steps[0]) for steps in row_logits])
            for i in range(n_steps)
        ]
    if return_dict_in_generate:
        return CometGenerateOutput(sequences=sequences, memory=state, logits=tuple(logits) if output_logits else None)
    return sequences


def _mask_of(batch) -> torch.Tensor | None:
    if bool((batch.lengths == batch.ids.shape[1]).all()):
        return None
    return (torch.arange(batch.ids.shape[1], device=batch.ids.device)[None] < batch.lengths[:, None]).long()


def _generate_aligned(
    model, prompt, state, max_new_tokens, processors, do_sample, eos, pad_token_id, streamer, generator,
    stopping_criteria, progress,
):
    """Generation for streams whose open chunks are equally long (so they close chunks at the same steps)."""
    c = model.comet_config.chunk_size
    if streamer is not None:
        streamer.put(prompt.cpu())
    sequences, step_logits = prompt, []
    unfinished = torch.ones(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    chunk = open_chunk(model, state) if max_new_tokens > 0 else None
    steps = range(max_new_tokens)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="generating", unit="tok", dynamic_ncols=True)
    for step in steps:
        step_logits.append(chunk.logits)
        scores = processors(sequences, chunk.logits.float())
        if do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        token = torch.where(unfinished, token, pad_token_id)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        if streamer is not None:
            streamer.put(token.cpu())
        unfinished = unfinished & ~torch.isin(token, eos)
        if stopping_criteria is not None:
            unfinished = unfinished & ~torch.as_tensor(stopping_criteria(sequences, scores), device=unfinished.device)
        if not bool(unfinished.any()) or step == max_new_tokens - 1:
            state = model.ingest(token[:, None], state)
            break
        if chunk.n_text == c:
            state = model.ingest(token[:, None], state)  # closes the full chunk; the token opens the next
            chunk = open_chunk(model, state)
        else:
            state = _append_pending(state, token)
            chunk = extend(model, chunk, token)
    if streamer is not None:
        streamer.end()
    return sequences, state, step_logits


def _select(state: MemoryState, b: int) -> MemoryState:
    tensors = {k: v[b : b + 1] for k, v in state.tensors().items()}
    width = int(state.pending_len[b])
    tensors["pending"] = tensors["pending"][:, :width]
    return MemoryState.from_tensors(state.config, tensors)


def _concat(states: list[MemoryState]) -> MemoryState:
    width = max(s.pending.shape[1] for s in states)
    parts = [s.tensors() for s in states]
    tensors = {}
    for key in parts[0]:
        if key == "pending":
            tensors[key] = torch.cat([F.pad(p[key], (0, width - p[key].shape[1])) for p in parts])
        else:
            tensors[key] = torch.cat([p[key] for p in parts])
    return MemoryState.from_tensors(states[0].config, tensors)
