"""Constant-memory generation: incremental logits equal teacher forcing across beacons and chunk roll-overs."""

import dataclasses

import pytest
import torch

from cometlm.state import MemoryState
from conftest import SMALL, assert_states_equal, random_ids, tiny_comet


def greedy(comet, prompt, new, **kwargs):
    return comet.generate(
        prompt, max_new_tokens=new, eos_token_id=[], return_dict_in_generate=True, output_logits=True, **kwargs
    )


@pytest.mark.parametrize("prompt_len", [13, 16, 1])  # 16 = an exact multiple of C: the answer starts a chunk
def test_incremental_decoding_equals_teacher_forcing(family, prompt_len):
    comet = tiny_comet(family)
    prompt = random_ids(1, prompt_len)
    out = greedy(comet, prompt, 30)  # 30 new tokens with C=8: at least three roll-overs, beacons every 4
    assert out.sequences.shape == (1, prompt_len + 30)
    assert int(out.memory.chunks_closed) >= (prompt_len + 30 - 1) // SMALL.chunk_size >= 3
    with torch.no_grad():
        forced = comet(out.sequences).logits
    steps = torch.stack(out.logits, dim=1)  # (1, 30, V)
    torch.testing.assert_close(steps, forced[:, prompt_len - 1 : -1], atol=1e-4, rtol=1e-4)
    # The final memory is the memory of reading the whole sequence.
    assert_states_equal(out.memory, comet.ingest(out.sequences), atol=1e-4)


@pytest.mark.parametrize(
    "variant",
    [dict(attention_sink=True), dict(gate=False), dict(global_slots=0), dict(temp_stride=0, temp_capacity=0),
     dict(global_slots=0, temp_stride=0, temp_capacity=0)],  # the last: no memory, a chunk opens with no rows
)
def test_incremental_decoding_equals_teacher_forcing_for_every_layout(variant):
    comet = tiny_comet("qwen3", dataclasses.replace(SMALL, **variant))
    out = greedy(comet, random_ids(2, 13), 22)
    with torch.no_grad():
        forced = comet(out.sequences).logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), forced[:, 12:-1], atol=1e-4, rtol=1e-4)


def test_batched_generation_equals_one_by_one():
    comet = tiny_comet()
    prompts = random_ids(3, 11)
    together = greedy(comet, prompts, 20)
    for b in range(3):
        alone = greedy(comet, prompts[b : b + 1], 20)
        assert torch.equal(together.sequences[b], alone.sequences[0])


def one_stream(state: MemoryState, b: int) -> MemoryState:
    """Stream b of a memory state, its open chunk cut to its length: comparable with the state of b alone."""
    tensors = {key: value[b : b + 1] for key, value in state.tensors().items()}
    tensors["pending"] = tensors["pending"][:, : int(state.pending_len[b])]
    return MemoryState.from_tensors(state.config, tensors)


def mask_of(lengths, width, left):
    positions = torch.arange(width)[None]
    lengths = torch.tensor(lengths)[:, None]
    return (positions >= width - lengths if left else positions < lengths).long()


@pytest.mark.parametrize(
    "left, family, variant",
    [
        (True, "llama", {}),
        (False, "llama", {}),
        (True, "qwen3", dict(attention_sink=True)),
        (True, "mistral", dict(gate=False)),
        (True, "qwen2", dict(global_slots=0)),
        (True, "llama", dict(temp_stride=0, temp_capacity=0)),
    ],
    ids=["left-padded", "right-padded", "qwen3-sink", "mistral-no-gate", "qwen2-temp-only", "global-only"],
)
def test_prompts_of_different_lengths_decode_together_as_each_would_alone(left, family, variant):
    comet = tiny_comet(family, dataclasses.replace(SMALL, **variant))
    lengths = [11, 7, 2, 16]  # open chunks of 3, 7, 2 and 8 tokens (C=8): they fill and close at different steps
    prompts = random_ids(4, 16)
    mask = mask_of(lengths, 16, left)
    out = greedy(comet, prompts, 21, attention_mask=mask)
    assert torch.equal(out.sequences[:, :16], prompts)  # the input as given, then the new tokens, as in transformers
    assert out.sequences.shape == (4, 16 + 21)
    for b, n in enumerate(lengths):
        alone = greedy(comet, prompts[b][mask[b].bool()][None], 21)
        assert torch.equal(out.sequences[b, 16:], alone.sequences[0, n:])
        torch.testing.assert_close(torch.stack(out.logits)[:, b], torch.stack(alone.logits)[:, 0], atol=1e-5, rtol=1e-5)
        assert_states_equal(one_stream(out.memory, b), one_stream(alone.memory, 0))


def test_the_repetition_penalty_never_counts_padding():
    comet = tiny_comet()
    lengths = [11, 7, 2, 16]
    prompts, mask = random_ids(4, 16), mask_of(lengths, 16, left=True)
    options = dict(max_new_tokens=10, eos_token_id=[], repetition_penalty=1.5)
    alone = [comet.generate(prompts[b][mask[b].bool()][None], **options)[0, n:] for b, n in enumerate(lengths)]
    for pad in (int(alone[1][0]), -100):  # the token stream 1 would write first; an id outside the vocabulary
        out = comet.generate(prompts.masked_fill(mask == 0, pad), attention_mask=mask, **options)
        for b in range(4):
            assert torch.equal(out[b, 16:], alone[b])


def test_the_repetition_penalty_counts_the_ids_read_before_when_given():
    """Reading a text's start into memory and generating after its end, with the start given as `read_ids`, is
    generating after the whole text, penalty included; streams that read different amounts decode together."""
    comet = tiny_comet()
    options = dict(max_new_tokens=10, eos_token_id=[], repetition_penalty=3.0)
    starts, tails = [], []
    for seed, (n_start, n_tail) in zip((3, 5), ((19, 11), (6, 4))):
        tail, start = random_ids(1, n_tail, seed=seed)[0], random_ids(1, n_start, seed=seed + 100)[0]
        # the start holds what would come first after the tail without it, so the penalty must see the start
        first = comet.generate(tail[None], memory=comet.ingest(start[None]), **options)[0, n_tail:]
        starts.append(torch.cat([first[:3], start[3:]]))
        tails.append(tail)
    whole = [comet.generate(torch.cat([a, t])[None], **options)[0, len(a) + len(t):] for a, t in zip(starts, tails)]
    memory = MemoryState.stack([comet.ingest(a[None]) for a in starts])
    width = max(map(len, tails))
    ids = torch.stack([torch.cat([torch.zeros(width - len(t), dtype=torch.long), t]) for t in tails])
    mask = torch.stack([torch.arange(width) >= width - len(t) for t in tails]).long()
    out = comet.generate(ids, memory=memory, attention_mask=mask, read_ids=[a.tolist() for a in starts], **options)
    for b in range(2):
        assert torch.equal(out[b, width:], whole[b])
        alone = comet.generate(tails[b][None], memory=memory.select(torch.tensor([b])), **options)
        assert not torch.equal(alone[0, len(tails[b]):], whole[b])  # without the start the penalty misses it
    with pytest.raises(ValueError, match="one list of ids per stream"):
        comet.generate(ids, memory=memory, attention_mask=mask, read_ids=[[1]], **options)


def test_a_stopping_criterion_must_answer_with_bools():
    comet = tiny_comet()
    with pytest.raises(ValueError, match=r"stopping_criteria must return a bool or a \(2,\) bool tensor"):
        comet.generate(random_ids(2, 5), max_new_tokens=3, stopping_criteria=lambda seq, scores: [0, 1])


def test_the_cache_of_staggered_streams_stays_bounded(monkeypatch):
    import cometlm.generation as generation

    comet = tiny_comet()
    widths, roll_over = [], generation.roll_over

    def recording(*args):
        chunk, state = roll_over(*args)
        assert bool(chunk.key_valid.any(dim=0).all())  # a slot that is no stream's key is dropped
        widths.append(chunk.key_valid.shape[1])
        return chunk, state

    monkeypatch.setattr(generation, "roll_over", recording)
    lengths = [11, 7, 2, 16]
    greedy(comet, random_ids(4, 16), 120, attention_mask=mask_of(lengths, 16, left=True))
    assert len(widths) >= 4 * 120 // SMALL.chunk_size - 4  # every stream rolled over, at its own steps
    assert max(widths) <= len(lengths) * SMALL.max_positions  # each slot is a key of some stream


@pytest.mark.parametrize("output_logits", [False, True])
def test_generation_keeps_each_steps_logits_only_when_asked(output_logits):
    """Constant memory: a vocabulary-sized tensor per generated token is kept only for ``output_logits``."""
    import gc

    comet = tiny_comet()
    vocab, live = comet.backbone.vocab_size, []

    def count(sequences, scores):
        gc.collect()
        live.append(sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.dim() == 2
                        and o.shape == (2, vocab)))
        return False

    comet.generate(random_ids(2, 5), max_new_tokens=40, eos_token_id=[], stopping_criteria=count,
                   return_dict_in_generate=True, output_logits=output_logits)
    if output_logits:
        assert live[-1] >= live[9] + 29  # one more per step
    else:
        assert live[-1] <= live[9] <= 4  # the same few, however long the output


def test_memories_that_read_different_amounts_decode_together():
    comet = tiny_comet()
    first = comet.ingest(random_ids(2, 13), attention_mask=mask_of([13, 6], 13, left=False))  # open chunks of 5, 6
    prompt = random_ids(2, 4, seed=3)
    out = greedy(comet, prompt, 12, memory=first)
    for b in range(2):
        alone = greedy(comet, prompt[b : b + 1], 12, memory=one_stream(first, b))
        assert torch.equal(out.sequences[b], alone.sequences[0])
        assert_states_equal(one_stream(out.memory, b), one_stream(alone.memory, 0))


def test_a_stream_that_ends_early_reads_nothing_after_its_eos():
    comet = tiny_comet()
    prompts = random_ids(2, 9)
    free = comet.generate(prompts, max_new_tokens=12, eos_token_id=[])
    stop_at = next(int(t) for t in free[0, 9:] if t not in free[1, 9:])  # ends stream 0 only
    out = comet.generate(prompts, max_new_tokens=12, eos_token_id=stop_at, pad_token_id=0, return_dict_in_generate=True)
    ends = []
    for b in range(2):
        alone = comet.generate(prompts[b : b + 1], max_new_tokens=12, eos_token_id=stop_at, return_dict_in_generate=True)
        n = alone.sequences.shape[1]
        ends.append(n)
        assert torch.equal(out.sequences[b, :n], alone.sequences[0]) and bool((out.sequences[b, n:] == 0).all())
        assert_states_equal(one_stream(out.memory, b), one_stream(alone.memory, 0))
    assert ends[0] < ends[1] == 9 + 12


def test_continuing_from_a_memory_equals_reading_everything():
    comet = tiny_comet()
    first, second = random_ids(1, 10), random_ids(1, 6, seed=3)
    step1 = greedy(comet, first, 7)
    step2 = greedy(comet, second, 9, memory=step1.memory)
    whole = greedy(comet, torch.cat([step1.sequences, second], dim=1), 9)
    assert torch.equal(step2.sequences[:, -9:], whole.sequences[:, -9:])


def test_closing_a_full_open_chunk_early_changes_nothing():
    """A full open chunk that `ingest` left open, closed before generating (as the command line does, to time the
    reading), gives the same answer and memory as letting `generate` close it."""
    model = tiny_comet()
    context, prompt = random_ids(1, 2 * SMALL.chunk_size, seed=5), random_ids(1, 5, seed=6)
    with torch.inference_mode():
        state = model.ingest(context)
        assert int(state.pending_len) == SMALL.chunk_size
        lazy = model.generate(prompt, memory=state, max_new_tokens=6, return_dict_in_generate=True)
        early = model.generate(prompt, memory=model.close_open_chunk(state), max_new_tokens=6,
                               return_dict_in_generate=True)
    assert torch.equal(lazy.sequences, early.sequences)
    assert_states_equal(lazy.memory, early.memory)


def test_sampling_options_and_streamer():
    comet = tiny_comet()
    prompt = random_ids(1, 9)
    sample = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, max_new_tokens=15)
    a = comet.generate(prompt, generator=torch.Generator().manual_seed(5), eos_token_id=[], **sample)
    b = comet.generate(prompt, generator=torch.Generator().manual_seed(5), eos_token_id=[], **sample)
    assert torch.equal(a, b)
    top1 = comet.generate(prompt, do_sample=True, top_k=1, max_new_tokens=15, eos_token_id=[])
    greedy = comet.generate(prompt, max_new_tokens=15, eos_token_id=[])
    assert torch.equal(top1, greedy)
    # a temperature too small for float32 samples the greedy tokens instead of overflowing the scores to NaN, and a
    # tiny repetition penalty (scores divided by it, to inf) still samples a token
    for tiny in (1e-40, 1e-300):
        assert torch.equal(comet.generate(prompt, do_sample=True, temperature=tiny, max_new_tokens=15,
                                          eos_token_id=[]), greedy)
    assert comet.generate(prompt, do_sample=True, repetition_penalty=1e-300, max_new_tokens=5,
                          eos_token_id=[]).shape == (1, 9 + 5)

    class Collect:
        def __init__(self):
            self.parts, self.ended = [], False

        def put(self, tokens):
            self.parts.append(tokens.reshape(-1))

        def end(self):
            self.ended = True

    streamer = Collect()
    out = comet.generate(prompt, max_new_tokens=15, eos_token_id=[], streamer=streamer)
    assert streamer.ended and torch.equal(torch.cat(streamer.parts), out[0])


def test_sampling_options_not_given_are_the_generation_configs_as_in_hugging_face():
    """`model.generate(do_sample=True)` takes the temperature, top-k and top-p it is not given from the backbone's
    generation_config (top-k 50 by default); with the memories off and one chunk CoMeT is the backbone, so the same
    seed must draw the same tokens as Hugging Face's own `generate`."""
    from conftest import tiny_backbone

    from cometlm import CometConfig, CometForCausalLM

    backbone = tiny_backbone("llama")
    comet = CometForCausalLM.from_backbone(backbone, CometConfig(chunk_size=64, global_slots=0, temp_stride=0,
                                                                 temp_capacity=0)).eval()
    prompt = random_ids(1, 9)

    def draw(generate, **options):
        torch.manual_seed(3)
        with torch.no_grad():
            return generate(prompt, max_new_tokens=20, do_sample=True, **options)

    for listed in ({}, {"temperature": 0.6, "top_k": 7, "top_p": 0.9}):
        for key, value in listed.items():
            setattr(backbone.generation_config, key, value)
        hf = draw(backbone.generate, eos_token_id=None, pad_token_id=0)
        assert torch.equal(draw(comet.generate, eos_token_id=[]), hf)
        assert torch.equal(draw(comet.generate, eos_token_id=[], top_p=0.5, top_k=0),
                           draw(backbone.generate, eos_token_id=None, pad_token_id=0, top_p=0.5, top_k=0))
    # greedy decoding never reads them
    greedy = comet.generate(prompt, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(greedy, backbone.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None,
                                                 pad_token_id=0))


def test_eos_stops_generation():
    comet = tiny_comet()
    prompt = random_ids(1, 9)
    free = comet.generate(prompt, max_new_tokens=6, eos_token_id=[])
    stop_at = int(free[0, 9 + 2])
    out = comet.generate(prompt, max_new_tokens=6, eos_token_id=stop_at)
    first = (free[0, 9:] == stop_at).nonzero()[0].item()
    assert out.shape[1] == 9 + first + 1 and int(out[0, -1]) == stop_at


def test_stopping_criteria_end_each_stream_like_eos():
    from transformers import MaxLengthCriteria, StoppingCriteriaList

    comet = tiny_comet()
    prompt = random_ids(2, 9)
    free = comet.generate(prompt, max_new_tokens=8, eos_token_id=[], pad_token_id=0)
    stop_at = int(free[0, 9 + 1])
    seen = []

    def last_token_is(sequences, scores):  # a per-stream criterion, as transformers' own return
        seen.append(sequences.shape[1])
        return sequences[:, -1] == stop_at

    out = comet.generate(prompt, max_new_tokens=8, eos_token_id=[], pad_token_id=0, stopping_criteria=last_token_is)
    assert seen[0] == 9 + 1  # the criteria see the prompt and the tokens generated so far
    for row in range(2):
        hits = (free[row, 9:] == stop_at).nonzero()
        end = 9 + (hits[0].item() + 1 if len(hits) else 8)
        assert torch.equal(out[row, :end], free[row, :end]) and bool((out[row, end:] == 0).all())
    capped = comet.generate(prompt, max_new_tokens=8, eos_token_id=[],
                            stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(max_length=12)]))
    assert torch.equal(capped, free[:, :12])


def test_bad_generation_options():
    comet = tiny_comet()
    with pytest.raises(ValueError, match="max_new_tokens"):
        comet.generate(random_ids(1, 4), max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        comet.generate(random_ids(1, 4), do_sample=True, temperature=0.0)
    for top_p in (1.5, float("nan"), -0.1):  # a top_p above 1 or NaN was silently no top-p at all
        with pytest.raises(ValueError, match="top_p"):
            comet.generate(random_ids(1, 4), do_sample=True, top_p=top_p)
    with pytest.raises(TypeError):
        comet.generate(random_ids(1, 4), num_beams=4)


@torch.inference_mode()
@pytest.mark.parametrize("filled_by", ["decoding", "the prompt"])
def test_closing_a_full_chunk_from_its_cache_equals_reading_it_again(family, filled_by):
    """A roll-over updates the memory from the beacons' outputs kept while decoding and the readouts' outputs (kept
    from the token that filled the chunk, or, for a chunk the prompt filled, run as new rows of its cache): the
    memory equals what `ingest` gives by running the whole chunk again, and the new open chunk holds the new memory
    rows alone: the next token's logits equal those of the chunk `open_chunk` would run with it."""
    from cometlm.generation import extend, open_chunk, roll_over

    comet = tiny_comet(family)
    c = comet.comet_config.chunk_size
    ids = random_ids(2, 2 * c + 3, seed=5)
    if filled_by == "decoding":
        state = comet.ingest(ids[:, : c + 3])  # one closed chunk, then an open chunk of 3 tokens
        chunk = open_chunk(comet, state)
        for t in range(c + 3, 2 * c):  # decode (teacher-forced tokens) until the open chunk is full
            chunk = extend(comet, chunk, ids[:, t])
        full = comet.ingest(ids[:, c + 3 : 2 * c], state)
    else:
        full = comet.ingest(ids[:, : 2 * c])
        chunk = open_chunk(comet, full)
    assert bool((full.pending_len == c).all()) and bool((chunk.n_text == c).all())
    assert (chunk.readouts is not None) == (filled_by == "decoding")  # kept by the token that filled the chunk
    opened, closed = roll_over(comet, chunk, full, torch.ones(2, dtype=torch.bool))
    reread = comet.ingest(ids[:, 2 * c : 2 * c + 1], full)  # closes the chunk by running it, opens one with the token
    assert torch.equal(closed.chunks_closed, reread.chunks_closed) and bool((closed.pending_len == 0).all())
    assert bool((opened.n_text == 0).all())
    for a, b in zip(closed.layers, reread.layers):
        for name in ("global_memory", "global_state", "temp"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)
        assert torch.equal(a.temp_valid, b.temp_valid) and torch.equal(a.has_global, b.has_global)
    stepped = extend(comet, opened, ids[:, 2 * c])
    torch.testing.assert_close(stepped.logits, open_chunk(comet, reread).logits, atol=1e-5, rtol=1e-5)
