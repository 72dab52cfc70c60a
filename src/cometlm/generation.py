"""Constant-memory generation (METHOD.md section 4).

The prompt is read into a ``MemoryState``; only the open chunk keeps a KV cache. Each new token is appended
to it, with a beacon after every ``s`` text tokens (inside the model, never emitted), and every layer's output at
each beacon is kept. The token that fills the open chunk (its ``C``-th text token) runs the chunk's ``M`` readouts
with it, as rows after it that it cannot see, and the chunk is closed in the same step, without running it again
(``roll_over``): each layer's memory is updated from its outputs at the readouts and the kept beacons
(``MemoryCell.update_memories``, the update ``forward`` makes), and a fresh open chunk of the new memory rows alone
is run, ready for the next token. So a chunk costs one slow step, not two. Because the open chunk is laid out
exactly like a chunk in ``forward``, incremental logits equal teacher-forced logits token by token.
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

from .progress import progress_bar
from .state import MemoryState


@dataclass
class OpenChunk:
    """The open chunks' KV cache and bookkeeping, for a batch of streams. ``logits`` (B, V) predict each stream's
    next token. Streams may hold different numbers of text tokens: the cache has one slot layout for all, and a
    slot a stream lacks is never one of its keys."""

    cache: DynamicCache
    key_valid: torch.Tensor  # (B, cached rows)
    next_position: torch.Tensor  # (B,)
    n_text: torch.Tensor  # (B,) text tokens in each stream's open chunk
    logits: torch.Tensor
    beacons: list[torch.Tensor]  # per layer (B, C/s, d): its output at the open chunk's beacon j in column j
    readouts: list[torch.Tensor] | None = None  # per layer (B, M, d): its output at the readouts of a full chunk
    readouts_ready: torch.Tensor | None = None  # (B,) bool: which streams' ``readouts`` are their full chunk's
    # (a chunk filled by ``extend`` has them; one that was already full when ``open_chunk`` ran it has not)


@dataclass
class CometGenerateOutput:
    """``logits`` (with ``output_logits``): one (B, V) tensor per step, the raw next-token logits."""

    sequences: torch.Tensor
    memory: MemoryState
    logits: tuple[torch.Tensor, ...] | None = None


def open_chunk(model, state: MemoryState) -> OpenChunk:
    """Runs every stream's open chunk (without closing it) and keeps its KV cache."""
    n_text = state.pending_len.clone()
    if bool((n_text == 0).any()):
        raise ValueError("open_chunk needs at least one token in every stream's open chunk")
    chunk, text_hidden = _run_open(model, state, state.pending, n_text)
    last = text_hidden[torch.arange(n_text.shape[0], device=n_text.device), n_text - 1]
    chunk.logits = model.backbone.logits(last)
    return chunk


def _run_open(model, state: MemoryState, text_ids: torch.Tensor, n_text: torch.Tensor):
    """Runs open chunks holding ``text_ids`` (``n_text`` tokens each, 0 for a chunk of memory rows alone) with a KV
    cache: the ``OpenChunk`` without logits, and the text rows' final hidden states."""
    config = model.comet_config
    if not bool(n_text.any()) and not config.attention_sink and not bool(state.layers[0].row_valid().any()):
        # No rows at all (both memories off): nothing to run, and the cache gets its rows from the next token.
        beacons = [text_ids.new_zeros(len(n_text), config.beacons_per_chunk, model.backbone.hidden_size,
                                      dtype=model.backbone.dtype) for _ in range(model.backbone.num_layers)]
        empty = n_text.new_zeros(len(n_text), 0, dtype=torch.bool)
        return OpenChunk(DynamicCache(), empty, n_text.clone(), n_text, None, beacons), None
    closing = torch.zeros_like(n_text, dtype=torch.bool)
    cache = DynamicCache()
    out = model.run_chunk(state, text_ids, n_text, closing, cache=cache, keep_beacons=True)
    layout = out.layout
    beacons = []
    for kept in out.beacons:  # only the complete blocks' beacons exist in an open chunk
        buffer = kept.new_zeros(kept.shape[0], config.beacons_per_chunk, kept.shape[-1])
        buffer[:, : kept.shape[1]] = kept * layout.beacon_valid[..., None].to(kept.dtype)
        beacons.append(buffer)
    chunk = OpenChunk(cache, layout.valid, layout.valid.sum(dim=1), n_text, None, beacons)
    return chunk, out.text_hidden


def _row_inputs(model, chunk: OpenChunk, hidden: torch.Tensor, new_valid: torch.Tensor, rows=None):
    """What the layers need to run ``hidden`` (B, q, d) as new rows of the open chunks' caches (of streams ``rows``,
    default all): keys are the valid cached rows and the new rows before each (``new_valid`` (B, q))."""
    key_valid = chunk.key_valid if rows is None else chunk.key_valid[rows]
    next_position = chunk.next_position if rows is None else chunk.next_position[rows]
    q, cached = hidden.shape[1], key_valid.shape[1]
    key_valid = torch.cat([key_valid, new_valid], dim=1)
    position_ids = next_position[:, None] + torch.arange(q, device=hidden.device)[None]
    causal = torch.arange(cached + q, device=hidden.device)[None] <= (cached + torch.arange(q, device=hidden.device))[:, None]
    mask = (causal[None] & key_valid[:, None, :])[:, None]  # (B, 1, q, cached + q)
    # A stream's keys are the valid rows of its open chunk, in cache order, at positions 0, 1, ... (positions count
    # valid rows only, as in ChunkLayout); a sliding-window layer needs them.
    key_positions = key_valid.long().cumsum(dim=1) - 1
    return model.backbone.layer_inputs(hidden, position_ids, mask, key_positions), key_valid


def extend(model, chunk: OpenChunk, token: torch.Tensor, active: torch.Tensor | None = None) -> OpenChunk:
    """Appends one text token to the open chunk of each ``active`` stream (default: all), and the beacon that
    completes its s-block; a stream whose open chunk this fills also runs its readouts, after the token, and keeps
    their outputs for ``close_full``. The other streams' new rows are never keys: their open chunks stay as they
    were."""
    config = model.comet_config
    if active is None:
        active = torch.ones_like(token, dtype=torch.bool)
    backbone = model.backbone
    hidden = backbone.embed(token[:, None])  # (B, 1, d)
    n_text = chunk.n_text + active.long()
    new_valid = active[:, None]
    due = None
    if config.use_temp:
        beacon_due = active & (n_text % config.temp_stride == 0)
        if bool(beacon_due.any()):
            beacon = model.memory.tokens.beacon[None].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
            hidden = torch.cat([hidden, beacon], dim=1)
            new_valid = torch.cat([new_valid, beacon_due[:, None]], dim=1)
            due = beacon_due.nonzero().squeeze(1)
            column = n_text[due] // config.temp_stride - 1
    full = active & (n_text == config.chunk_size) if config.use_global else None
    first_readout = hidden.shape[1]
    if full is not None and bool(full.any()):
        # The last s-block of a full chunk is complete (C is a multiple of s), so its beacon is among the rows above
        # and the readouts follow it, as in the chunk's layout.
        readouts = model.memory.tokens.readouts[None].to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        hidden = torch.cat([hidden, readouts], dim=1)
        new_valid = torch.cat([new_valid, full[:, None].expand(-1, readouts.shape[1])], dim=1)
    else:
        full = None
    inputs, key_valid = _row_inputs(model, chunk, hidden, new_valid)
    beacons = list(chunk.beacons)
    kept = list(chunk.readouts) if chunk.readouts is not None else [None] * backbone.num_layers
    for index in range(backbone.num_layers):
        hidden = backbone.run_layer(index, hidden, inputs, chunk.cache)
        if due is not None:
            beacons[index] = beacons[index].index_put((due, column), hidden[due, 1])
        if full is not None:
            out = hidden[:, first_readout:]
            kept[index] = out if kept[index] is None else torch.where(full[:, None, None], out, kept[index])
    ready = chunk.readouts_ready
    if full is not None:
        ready = full if ready is None else ready | full
    logits = backbone.logits(backbone.final_norm(hidden[:, 0]))
    kept = None if kept[0] is None else kept
    return OpenChunk(chunk.cache, key_valid, chunk.next_position + new_valid.sum(dim=1), n_text, logits, beacons,
                     kept, ready)


def _readout_outputs(model, chunk: OpenChunk, closing: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output at the readouts (R, M, d) of the ``closing`` streams' full open chunks: the ones kept
    by ``extend``, or, for a chunk that was already full when it was opened, the readouts run now as new rows of a
    copy of its cache."""
    backbone = model.backbone
    ready = chunk.readouts_ready if chunk.readouts_ready is not None else torch.zeros_like(closing)
    missing = closing & ~ready
    kept = chunk.readouts
    if bool(missing.any()):
        rows = missing.nonzero().squeeze(1)
        hidden = model.memory.tokens.readouts[None].to(backbone.dtype).expand(rows.numel(), -1, -1)
        every = torch.ones(rows.numel(), hidden.shape[1], dtype=torch.bool, device=rows.device)
        inputs, _ = _row_inputs(model, chunk, hidden, every, rows)
        cache = DynamicCache()
        for index, layer in enumerate(chunk.cache.layers):
            cache.update(layer.keys[rows], layer.values[rows], index)
        batch = closing.shape[0]
        filled = []
        for index in range(backbone.num_layers):
            hidden = backbone.run_layer(index, hidden, inputs, cache)
            buffer = hidden.new_zeros(batch, *hidden.shape[1:]) if kept is None else kept[index].clone()
            filled.append(buffer.index_copy(0, rows, hidden))
        kept = filled
    rows = closing.nonzero().squeeze(1)
    return [outputs[rows] for outputs in kept]


def close_full(model, chunk: OpenChunk, state: MemoryState, closing: torch.Tensor) -> MemoryState:
    """The state after the ``closing`` (B,) streams close their full open chunks (``C`` text tokens each), from what
    their open chunks kept: every layer's memory is updated from its outputs at the readouts and at the beacons. This
    is the update ``ingest`` would make by running the chunk again. The closed streams' open chunks are left empty."""
    rows = closing.nonzero().squeeze(1)
    cell, backbone, config = model.cell, model.backbone, model.comet_config
    layers = [layer.select(rows) for layer in state.layers]
    every = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)
    beacon_valid = every[:, None].expand(-1, config.beacons_per_chunk)  # a full chunk: every s-block is complete
    readouts = torch.stack(_readout_outputs(model, chunk, closing)) if config.use_global else None
    beacons = torch.stack([kept[rows] for kept in chunk.beacons]) if chunk.beacons else None
    layers = cell.update_memories(list(range(backbone.num_layers)), layers, readouts, beacons, beacon_valid, every)
    merged = [old.scatter(rows, new) for old, new in zip(state.layers, layers)]
    pending, pending_len = state.pending.masked_fill(closing[:, None], 0), state.pending_len.masked_fill(closing, 0)
    return MemoryState(state.config, tuple(merged), pending, pending_len, state.chunks_closed + closing.long())


def _append_pending(state: MemoryState, token: torch.Tensor, active: torch.Tensor) -> MemoryState:
    """The state with ``token`` appended to the open chunk of each active stream (no chunk is closed)."""
    pending_len = state.pending_len + active.long()
    width = int(pending_len.max())  # as ingest leaves it: as wide as the longest open chunk
    pending = F.pad(state.pending, (0, max(0, width - state.pending.shape[1])))[:, :width]
    rows = active.nonzero().squeeze(1)
    pending[rows, state.pending_len[rows]] = token[rows]
    return MemoryState(state.config, state.layers, pending, pending_len, state.chunks_closed)


class _ScaledFromTop(TemperatureLogitsWarper):
    """transformers' temperature (which checks it), applied to scores shifted so that each row's largest is 0: the
    same distribution (softmax, top-k and top-p do not see a shift). Unshifted, a tiny temperature, or a tiny
    repetition penalty before it, overflows the scores to inf, and the softmax then gives NaN for every token; a
    temperature below the dtype's smallest normal number divides as that number (greedy either way)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        limits = torch.finfo(scores.dtype)
        scores = scores.clamp(-limits.max, limits.max)
        return (scores - scores.amax(dim=-1, keepdim=True)) / max(self.temperature, limits.tiny)


def end_token_ids(model, tokenizer=None) -> list[int]:
    """The token ids that end an answer: the tokenizer's end-of-sequence id (if any), then every one the backbone's
    generation_config lists (instruct models such as Llama 3 and Qwen2.5 list more than one), as Hugging Face's
    `generate` and lm-eval's `hf` backend stop at."""
    listed = getattr(getattr(model.backbone_model, "generation_config", None), "eos_token_id", None)
    own = getattr(tokenizer, "eos_token_id", None)
    ids = [own] + ([listed] if isinstance(listed, int) else list(listed or []))
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


# What Hugging Face's `generate` samples with where neither the call nor the model's generation_config says
# (transformers 5 keeps them outside GenerationConfig, whose fields default to None; tests compare draws with it).
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}


def _configured(model, **given) -> tuple:
    """``given``'s values, each None replaced by the backbone's generation_config's, else Hugging Face's default."""
    config = getattr(model.backbone_model, "generation_config", None)
    listed = {key: getattr(config, key, None) for key in given}
    return tuple(
        value if value is not None else listed[key] if listed[key] is not None else SAMPLING_DEFAULTS[key]
        for key, value in given.items()
    )


def _processors(do_sample, temperature, top_k, top_p, repetition_penalty) -> LogitsProcessorList:
    processors = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if do_sample:
        processors.append(_ScaledFromTop(1.0 if temperature is None else float(temperature)))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p is not None and not 0.0 <= top_p <= 1.0:  # NaN included
            raise ValueError(f"top_p must lie in [0, 1] (got {top_p})")
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
    temperature: float | None = None,
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
    read_ids: list[list[int]] | None = None,
):
    """Hugging Face-style generation at constant memory.

    Returns ``input_ids`` as given (padding included) followed by the new tokens (B, N + new), as Hugging Face's
    ``generate`` does, with ``pad_token_id`` after a stream has ended; with ``return_dict_in_generate`` a
    ``CometGenerateOutput`` that also holds the final ``MemoryState`` (save it, or pass it back as ``memory`` to
    continue) and, with ``output_logits``, each step's logits (a stream's logits after it has ended are not
    meaningful). A batch may hold prompts of any lengths (``attention_mask``, padding on either side) and memories
    that read different amounts: every stream decodes together, and with greedy decoding each gets the tokens,
    logits (up to its end) and final memory it would get alone; the repetition penalty counts only a stream's own
    tokens, never its padding. Sampling draws from one ``generator`` for the whole batch, so sampled tokens differ
    from one-at-a-time runs with the same seed. A stream's memory ends with its last real token (its EOS, if it
    stopped at one); the padding after it is never read.

    ``stopping_criteria`` is what Hugging Face's ``generate`` takes (a ``StoppingCriteriaList``, or any callable
    ``(sequences, scores) -> bool or (B,) bool``); ``sequences`` are the ``input_ids`` given here followed by the
    tokens generated so far. A stream ends after the step on which it returns True, as at an EOS token.

    Sampling options not given (``temperature``, ``top_k``, ``top_p``) are the backbone's ``generation_config``'s,
    whose defaults are Hugging Face's (1.0, 50, 1.0), as in Hugging Face's ``generate``; ``top_k=0`` keeps every
    token. Unlike there, ``do_sample`` and ``repetition_penalty`` are never read from it: greedy decoding without a
    penalty unless asked, so that an instruct model whose config samples still answers evaluations greedily.

    ``read_ids`` (one list per stream): the ids read into ``memory`` before, which the logits processors see
    before the prompt, so that the repetition penalty counts them as Hugging Face's ``generate`` does over the
    whole text (without them it counts the prompt given here and the new tokens).
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int (got {max_new_tokens!r})")
    if do_sample:
        temperature, top_k, top_p = _configured(model, temperature=temperature, top_k=top_k, top_p=top_p)
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (got {temperature})")
    batch = model.check_batch(input_ids, attention_mask)
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model.backbone_model, "generation_config", None), "eos_token_id", None)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), dtype=torch.long)
    if pad_token_id is None:
        pad_token_id = int(eos[0]) if eos.numel() else 0
    state = memory if memory is not None else model.init_memory(batch.ids.shape[0])
    model.check_memory(state, batch.ids.shape[0])
    state = model.ingest(batch.ids, state, attention_mask=batch.mask(), progress=progress)
    seen = _real_only(batch, input_ids, attention_mask)
    if read_ids is not None:
        seen = torch.cat([_left_filled(read_ids, seen[:, 0]), seen], dim=1)
    sequences, state, logits = _decode(
        model, input_ids.long().to(batch.ids.device), seen, state,
        max_new_tokens=max_new_tokens,
        processors=_processors(do_sample, temperature, top_k, top_p, repetition_penalty), do_sample=do_sample,
        eos=eos.to(batch.ids.device), pad_token_id=pad_token_id, streamer=streamer, generator=generator,
        stopping_criteria=stopping_criteria, progress=progress, keep_logits=return_dict_in_generate and output_logits,
    )
    if return_dict_in_generate:
        return CometGenerateOutput(sequences=sequences, memory=state, logits=tuple(logits) if output_logits else None)
    return sequences


def _left_filled(rows: list[list[int]], first: torch.Tensor) -> torch.Tensor:
    """``rows`` as one (B, longest) tensor, each filled on the left with its own first id (else ``first``'s): a
    penalty on the ids present counts each stream's own ids only."""
    if len(rows) != first.shape[0]:
        raise ValueError(f"read_ids must hold one list of ids per stream ({first.shape[0]}), got {len(rows)}")
    width = max(map(len, rows), default=0)
    out = first[:, None].repeat(1, width)
    for row, ids in enumerate(rows):
        if ids:
            out[row] = torch.tensor([ids[0]] * (width - len(ids)) + list(ids), dtype=out.dtype)
    return out


def _real_only(batch, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``input_ids`` with each padding position holding the row's first real token: what the logits processors
    see, so that a penalty on tokens already present (a set of ids) counts only the stream's own tokens."""
    ids = input_ids.long().to(batch.ids.device)
    if attention_mask is None:
        return ids
    real = attention_mask.to(ids.device).bool()
    return torch.where(real, ids, batch.ids[:, :1])


def _decode(
    model, prompt, seen, state, max_new_tokens, processors, do_sample, eos, pad_token_id, streamer, generator,
    stopping_criteria, progress, keep_logits,
):
    """The decoding loop. Each step appends one token to every live stream's open chunk; a stream whose open chunk
    this fills closes it at once and opens a new one (``roll_over``): its next token is always appended (a stream
    that ends at a token still keeps it), so closing early changes nothing. Streams that have ended read nothing
    more. Each step's logits are kept only with ``keep_logits``: otherwise memory would grow with the output by a
    (B, V) tensor a token (196 KiB for one SmolLM2 stream), and the allocations it takes made roll-overs slower."""
    c = model.comet_config.chunk_size
    if streamer is not None:
        streamer.put(prompt.cpu())
    sequences, step_logits = prompt, []
    unfinished = torch.ones(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    chunk = None
    if max_new_tokens > 0:
        chunk = open_chunk(model, state)
        full = chunk.n_text == c  # the prompt filled its last chunk
        if bool(full.any()):
            chunk, state = roll_over(model, chunk, state, full)
    for step in progress_bar(range(max_new_tokens), desc="generating", unit="tok", enabled=progress):
        if keep_logits:
            step_logits.append(chunk.logits)
        scores = processors(seen, chunk.logits.float())
        if do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        live = unfinished
        token = torch.where(live, token, pad_token_id)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        seen = torch.cat([seen, torch.where(live, token, seen[:, 0])[:, None]], dim=1)
        if streamer is not None:
            streamer.put(token.cpu())
        unfinished = live & ~torch.isin(token, eos)
        if stopping_criteria is not None:
            unfinished = unfinished & ~_stopped(stopping_criteria(sequences, scores), unfinished)
        state = _append_pending(state, token, live)
        if not bool(unfinished.any()) or step == max_new_tokens - 1:
            break
        chunk = extend(model, chunk, token, unfinished)  # a stream that just ended needs no more logits
        full = unfinished & (chunk.n_text == c)
        if bool(full.any()):
            chunk, state = roll_over(model, chunk, state, full)
    if streamer is not None:
        streamer.end()
    return sequences, state, step_logits


def _stopped(done, unfinished: torch.Tensor) -> torch.Tensor:
    """A stopping criterion's answer as a (B,) bool tensor: one bool for the batch, or one per stream."""
    done = torch.as_tensor(done, device=unfinished.device)
    if done.dtype != torch.bool or done.shape not in ((), unfinished.shape):
        raise ValueError(
            f"stopping_criteria must return a bool or a ({unfinished.shape[0]},) bool tensor, one per stream "
            f"(got dtype {done.dtype}, shape {tuple(done.shape)})"
        )
    return done.expand_as(unfinished)


def roll_over(model, chunk: OpenChunk, state: MemoryState, closing: torch.Tensor) -> tuple[OpenChunk, MemoryState]:
    """Closes the ``closing`` streams' full open chunks (``close_full``; ``state`` holds their ``C`` tokens as its
    open chunks) and gives each a new open chunk of its new memory rows alone, run for those streams alone; its cache
    rows are appended to the shared cache as new slots that only it may attend to, and its old slots stop being its
    keys. Positions are in the keys (RoPE is applied before caching), so where a row sits in the cache does not
    matter, only which rows are keys. Slots that are no stream's keys any more are dropped, so the cache stays
    bounded by about two chunks plus one set of memory rows per stream, however long the output. Every stream's
    ``logits`` are kept: a closing stream's predict the token that will open its new chunk."""
    state = close_full(model, chunk, state, closing)
    rows = closing.nonzero().squeeze(1)
    part = state.select(rows)
    fresh, _ = _run_open(model, part, part.pending[:, :0], torch.zeros_like(part.pending_len))
    batch = closing.shape[0]
    for index, new in enumerate(fresh.cache.layers):
        layer = chunk.cache.layers[index]
        for name in ("keys", "values"):
            added = getattr(new, name).new_zeros(batch, *getattr(new, name).shape[1:])
            added[rows] = getattr(new, name)
            setattr(layer, name, torch.cat([getattr(layer, name), added], dim=-2))
    old_valid = chunk.key_valid.masked_fill(closing[:, None], False)
    new_valid = fresh.key_valid.new_zeros(batch, fresh.key_valid.shape[1])
    new_valid[rows] = fresh.key_valid
    key_valid = torch.cat([old_valid, new_valid], dim=1)
    next_position, n_text = chunk.next_position.clone(), chunk.n_text.clone()
    next_position[rows], n_text[rows] = fresh.next_position, fresh.n_text
    beacons = [old.index_copy(0, rows, new) for old, new in zip(chunk.beacons, fresh.beacons)]
    ready = None if chunk.readouts_ready is None else chunk.readouts_ready & ~closing  # a fresh chunk is not full
    keep = key_valid.any(dim=0)
    if not bool(keep.all()):
        for layer in chunk.cache.layers:
            layer.keys, layer.values = layer.keys[..., keep, :], layer.values[..., keep, :]
        key_valid = key_valid[:, keep]
    opened = OpenChunk(chunk.cache, key_valid, next_position, n_text, chunk.logits, beacons, chunk.readouts, ready)
    return opened, state
