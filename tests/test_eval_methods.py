"""The evaluation methods: each one reads exactly what it claims to, checked against the plain backbone."""

import pytest
import torch
import torch.nn.functional as F
from conftest import COMMON, SMALL, random_ids, tiny_comet
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import cometlm.evaluation.methods.sliding_window as sliding_window
import cometlm.evaluation.settings as settings
from cometlm import CometConfig, CometForCausalLM
from cometlm.evaluation.methods import build_method
from cometlm.evaluation.streaming import generate_answer


pytestmark = pytest.mark.usefixtures("one_thread")


def target_losses(backbone, context: list[int], target: int) -> float:
    """Loss of `target` after `context`, read fresh by the backbone at positions 0..len-1."""
    logits = backbone(torch.tensor([context])).logits[0, -1]
    return float(F.cross_entropy(logits[None].float(), torch.tensor([target])))


def one_layer(family: str):
    """A 1-layer backbone: its keys and values depend only on the token and its position, so a streamed cache
    can be checked against reading the kept tokens fresh."""
    torch.manual_seed(0)
    one = {**COMMON, "num_hidden_layers": 1}
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**one, head_dim=8))
    elif family == "gemma3_text":  # a local-RoPE layer: its keys must be re-rotated with the local RoPE
        model = Gemma3ForCausalLM(Gemma3TextConfig(
            **one, head_dim=8, query_pre_attn_scalar=8, layer_types=["sliding_attention"], sliding_window=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        ))
    elif family == "phi3":  # partial rotary (as Phi-4-mini): only the first half of each head turns
        model = Phi3ForCausalLM(Phi3Config(**one, partial_rotary_factor=0.5, pad_token_id=0, eos_token_id=2))
    else:
        model = LlamaForCausalLM(LlamaConfig(**{**COMMON, "num_hidden_layers": 1}))
    return CometForCausalLM.from_backbone(model.eval(), SMALL).eval()


@torch.inference_mode()
def test_sliding_window_with_a_window_larger_than_the_input_is_full_attention(family):
    model = tiny_comet(family)
    ids = random_ids(300).tolist()
    full = build_method("full", model)
    sliding = build_method("sliding-window", model, window=400, sink_tokens=4)
    torch.testing.assert_close(sliding.token_losses(ids), full.token_losses(ids), atol=1e-5, rtol=1e-5)
    want = model.backbone_model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
    torch.testing.assert_close(full.token_losses(ids).mean(), want, atol=1e-5, rtol=1e-5)
    answer, facts = sliding.answer(ids, 5, 12, None, False)
    assert answer == full.answer(ids, 5, 12, None, False)[0] and len(answer) == 12 and facts["read_tokens"] == 300
    narrow = build_method("full", model, window=310)  # an answer that would push the prompt's start out of view
    with pytest.raises(ValueError, match="exceeds the backbone's window"):
        narrow.answer(ids, 5, 12, None, False)
    with pytest.raises(ValueError, match="window must exceed the answer"):
        build_method("truncated", model, window=12).answer(ids, 5, 12, None, False)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "phi3"])
@pytest.mark.parametrize("sinks", [0, 4])
@torch.inference_mode()
def test_sliding_window_keeps_sinks_and_recent_tokens_at_positions_within_the_cache(family, sinks, monkeypatch):
    """StreamingLLM's definition, with evictions: a token's loss equals reading fresh the sinks, the recent
    tokens kept before its block and its block up to itself, at positions 0..n-1 (keys re-rotated exactly)."""
    block, window, n = 16, 20, 150
    monkeypatch.setattr(sliding_window, "READ_BLOCK", block)
    model = one_layer(family)
    ids = random_ids(n, seed=3).tolist()
    sliding = build_method("sliding-window", model, window=window, sink_tokens=sinks)
    losses = sliding.token_losses(ids)
    for i in range(n - 1):  # position i predicts token i + 1
        start = i // block * block
        kept = ids[: min(sinks, i + 1)] + ids[max(sinks, start - window) : i + 1]
        # (Without re-rotating the kept keys the error is ~1e-3 on this tiny model; with it, ~5e-7.)
        assert abs(float(losses[i]) - target_losses(model.backbone_model, kept, ids[i + 1])) < 2e-5, i

    # Decoding continues the blocks: a new token sees what it would see had the prompt and the answer so far been
    # read (the sinks, `window` tokens before its block, its block up to itself), across a block boundary too.
    for prompt in (ids[:100], ids[:90]):  # the answer crosses into a new block after 12 tokens, or after 6
        answer, _ = sliding.answer(prompt, 5, 14, None, False)
        sequence = prompt + answer
        assert len(answer) == 14
        for k in range(1, len(answer)):
            at = len(prompt) + k - 1  # the position that predicts answer[k]
            start = at // block * block
            context = sequence[:sinks] + sequence[max(sinks, start - window) : at + 1]
            logits = model.backbone_model(torch.tensor([context])).logits[0, -1]
            assert int(logits.argmax()) == answer[k], (len(prompt), k)


@torch.inference_mode()
def test_sliding_window_cache_stays_bounded(monkeypatch):
    block, window, sinks = 16, 24, 4
    monkeypatch.setattr(sliding_window, "READ_BLOCK", block)
    model = tiny_comet("llama")
    sliding = build_method("sliding-window", model, window=window, sink_tokens=sinks)
    cache, sizes = sliding.new_cache(), []
    for start, hidden in sliding._read(random_ids(1, 700), cache, False):
        sizes.append(cache.get_seq_length())
        assert hidden.shape[1] == min(block, 700 - start)
        assert all(layer.keys.shape[-2] == sizes[-1] for layer in cache.layers)
    assert max(sizes) == sinks + window + block and sizes[-1] == sinks + window + 700 % block
    assert len(sizes) == -(-700 // block)


@torch.inference_mode()
def test_no_memory_is_the_backbone_on_each_chunk_and_comet_scores_as_forward(family):
    model = tiny_comet(family)
    c, ids = SMALL.chunk_size, random_ids(45, seed=5).tolist()
    losses = build_method("no-memory", model).token_losses(ids)
    for i in range(len(ids) - 1):  # position i predicts token i + 1 from its own chunk only
        chunk = i // c * c
        assert abs(float(losses[i]) - target_losses(model.backbone_model, ids[chunk : i + 1], ids[i + 1])) < 1e-4, i

    comet = build_method("comet", model).token_losses(ids)
    tokens = torch.tensor([ids])
    torch.testing.assert_close(comet.mean(), model(tokens, labels=tokens).loss, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(comet, losses, atol=1e-3)  # the memories change what later chunks predict


@pytest.mark.parametrize("layout", ["fixed", "primed"])
@torch.inference_mode()
def test_no_memory_answers_from_the_open_chunk_alone_exactly_as_after_reading_everything(layout):
    config = CometConfig(chunk_size=32, global_slots=3, temp_stride=4, temp_capacity=5, adapter_rank=4,
                         attention_sink=True)
    model = tiny_comet("llama", config)
    ids = random_ids(203, seed=9).tolist()
    method = build_method("no-memory", model, layout=layout, prime_tokens=10)
    answer, facts = method.answer(ids, 5, 8, None, False)
    tail = facts["open_chunk_tokens"]
    assert facts["read_tokens"] == tail < len(ids) and len(answer) == 8
    assert answer == generate_answer(method.runner, ids, tail, 8)  # reads all 203 tokens: 6 chunks closed


@torch.inference_mode()
def test_truncated_reads_the_tail_and_scores_with_strided_windows():
    model = tiny_comet("llama")
    backbone, window = model.backbone_model, 40
    ids = random_ids(133, seed=7).tolist()
    truncated = build_method("truncated", model, window=window)
    losses = truncated.token_losses(ids)
    stride, scored = window // 2, 1
    for begin in range(0, len(ids), stride):  # windows [begin, begin + window) every `stride` tokens
        end = min(begin + window, len(ids))
        for target in range(scored, end):  # the targets the window before did not reach
            assert target - begin >= (window - stride if begin else 1)
            want = target_losses(backbone, ids[begin:target], ids[target])
            assert abs(float(losses[target - 1]) - want) < 1e-4, target
        scored = end
        if end == len(ids):
            break
    assert scored == len(ids)

    short = ids[:window]
    torch.testing.assert_close(truncated.token_losses(short), build_method("full", model).token_losses(short))
    answer, facts = truncated.answer(ids, 5, 8, None, False)
    tail = torch.tensor([ids[-(window - 8) :]])
    want = backbone.generate(tail, attention_mask=torch.ones_like(tail), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert answer == want[0, tail.shape[1] :].tolist() and facts["read_tokens"] == window - 8


def test_bad_method_options_are_refused_with_what_to_do():
    model = tiny_comet("llama")  # max_position_embeddings 1024
    cases = [
        (dict(name="rag"), "method must be one of comet, no-memory, full, truncated, sliding-window"),
        (dict(name="full", window=2048), "full attention reads at most the backbone's window of 1024 tokens"),
        (dict(name="sliding-window", window=1000),
         "must fit the backbone's window of 1024 tokens .* lower the window or the sink tokens .*--window.*window="),
        (dict(name="sliding-window", sink_tokens=-1), "sink_tokens must be an integer >= 0"),
        (dict(name="truncated", window=0), "window must be a positive token count"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            build_method(model=model, **options)
    full = build_method("full", model)
    with pytest.raises(ValueError, match=r"reading 1025 tokens \(a document of 1026, whose last token is only "
                                         r"predicted\) exceeds the backbone's window of 1024 tokens.*"
                                         "use the truncated or sliding-window method .*--method.*method="):
        full.check_document(1026)
    with pytest.raises(ValueError, match="context length 1020 plus the 9-token answer exceeds"):
        full.check_prompt(1020, 5, 9)
    full.check_document(1025)
    full.check_continuation(1000, 25)  # 1,024 tokens in, the last continuation token is only a target
    with pytest.raises(ValueError, match=r"reading 1025 tokens \(a context of 1000 and a continuation of 26.*\) "
                                         "exceeds"):
        full.check_continuation(1000, 26)
    with pytest.raises(ValueError, match="a continuation of 30 tokens does not fit the window of 20"):
        build_method("truncated", model, window=20).check_continuation(100, 30)
    with pytest.raises(ValueError, match="at least one context and one continuation token"):
        build_method("sliding-window", model).check_continuation(0, 3)
    assert build_method("sliding-window", model).window == 1024 - 4 - settings.READ_BLOCK


@torch.inference_mode()
def test_full_attention_scores_a_document_one_token_longer_than_its_window():
    """The last token is only predicted, never read: window + 1 tokens fit (lm-eval's rolling loglikelihood adds
    a prefix token to a text of the window's length)."""
    model = tiny_comet("llama")
    full = build_method("full", model)
    ids = random_ids(full.window + 1, seed=5).tolist()
    full.check_document(len(ids))
    logits = model.backbone_model(torch.tensor([ids[:-1]])).logits[0].float()
    expected = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    torch.testing.assert_close(full.token_losses(ids), expected)


def test_every_method_reads_with_the_models_backbone_and_records_one_schema():
    model = tiny_comet("llama")
    for name in settings.METHODS:
        method = build_method(name, model)
        runner = getattr(method, "runner", model)
        assert runner.backbone_model is model.backbone_model and method.settings().keys() == {
            "layout", "prime_tokens", "window", "sink_tokens", "block"}


@pytest.mark.parametrize("name", settings.METHODS)
@torch.inference_mode()
def test_a_stop_condition_ends_the_answer_where_it_becomes_true(name):
    """`answer(stop=...)` (stop sequences in the lm-eval backend) ends generation early: the answer is a prefix of
    the unstopped one, ending at the first token where the condition holds."""
    model = tiny_comet("llama")
    method = build_method(name, model, "fixed", window=64 if name in ("truncated", "sliding-window") else None)
    prompt = random_ids(1, 150, seed=3)[0].tolist()
    free, _ = method.answer(prompt, 4, 8, None, False)
    seen = []
    stopped, _ = method.answer(prompt, 4, 8, None, False, stop=lambda new: seen.append(list(new)) or len(new) == 3)
    assert len(free) == 8 and stopped == free[:3]
    assert seen[-1] == free[:3]  # asked after every new token, with the answer so far
