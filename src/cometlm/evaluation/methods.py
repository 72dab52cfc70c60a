"""The ways to read a long input with one backbone, selectable by name in every `cometlm eval` command.

- comet: the CoMeT model with its memories (an ablation is a CoMeT model saved with other switches: `--comet DIR`).
- no-memory: the same backbone and chunk size with both memories off, i.e. plain chunking: nothing crosses a
  chunk boundary, so what it gets right comes from the current chunk alone. To answer a prompt it therefore
  reads only the chunk the answer is generated in (the same answer as reading everything, at constant cost).
- full: the backbone as is, full attention over the whole input; it refuses an input longer than its window
  (max_position_embeddings) instead of reading positions it was never trained on.
- truncated: the backbone with full attention over the input's last `window` tokens.
- sliding-window: StreamingLLM (Xiao et al. 2024): the backbone with a bounded KV cache holding the first
  `sink_tokens` tokens (attention sinks) and the `window` most recent ones, positions counted within the cache
  (`attention_sinks.AttentionSinkCache`). The input is read `READ_BLOCK` tokens at a time, as StreamingLLM
  reads a prompt, so a token sees the sinks and between `window` and `window + READ_BLOCK - 1` tokens before it.

Every method does the two things the tasks need: generate greedily after a prompt (passkey, needle), and give
the next-token loss of every token of a document (perplexity) without holding the logits of the whole document.
Heavy libraries are imported inside the functions so `cometlm --help` stays fast.
"""

from __future__ import annotations

import hashlib
import json

METHODS = ("comet", "no-memory", "full", "truncated", "sliding-window")
MEMORY_METHODS = ("comet", "no-memory")
LAYOUTS = ("primed", "fixed")
DEFAULT_PRIME_TOKENS = 256
DEFAULT_WINDOW = 8192  # for a backbone whose config names no max_position_embeddings
DEFAULT_SINK_TOKENS = 4  # StreamingLLM's choice
READ_BLOCK = 128  # tokens the sliding-window method reads at once
LOSS_ROWS = 1024  # positions per LM-head call when scoring: logits never exceed LOSS_ROWS x vocabulary
READ_BAR_MIN_STEPS = 8  # a nested reading bar only for reads of at least this many chunks or blocks
SNAPSHOT_SECONDS = 300.0  # how often a long read by a memory method saves its state (`streaming.Snapshot`)

METHOD_HELP = (
    "comet: the model with its memories (default; ablations: --comet DIR of a model saved with other switches); "
    "no-memory: the same model with both memories off (plain chunking); full: the backbone over the whole input, "
    "refusing inputs longer than its window; truncated: the backbone over the input's last --window tokens; "
    "sliding-window: StreamingLLM, the backbone with a KV cache of --sink-tokens first tokens plus the --window most "
    "recent ones, positions counted within the cache. full, truncated and sliding-window read with the backbone as "
    "loaded (with --comet, including the adapter's LoRA if it has one)"
)


def backbone_window(model, window: int | None = None) -> int:
    """The given window, else the backbone's max_position_embeddings (else DEFAULT_WINDOW)."""
    if window is None:
        window = getattr(model.backbone.config, "max_position_embeddings", None) or DEFAULT_WINDOW
    return window


def without_memory(model):
    """The same backbone (shared, not copied) and chunk size with both memories off: plain chunking, where
    nothing crosses a chunk boundary. A learned attention sink is kept, since it is part of every chunk."""
    from cometlm.config import CometConfig
    from cometlm.model import CometForCausalLM

    config = model.comet_config
    plain = CometConfig(
        chunk_size=config.chunk_size, global_slots=0, temp_stride=0, temp_capacity=0,
        adapter_rank=config.adapter_rank, attention_sink=config.attention_sink, init_seed=config.init_seed,
    )
    bare = CometForCausalLM(model.backbone_model, plain, base_model=model.base_model, tokenizer=model.tokenizer)
    bare.memory.to(model.backbone.device)
    if config.attention_sink:
        bare.memory.tokens.sink.data.copy_(model.memory.tokens.sink.data)
    return bare.eval()


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
) -> "Method":
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
        return MemoryMethod(model, name, layout, prime_tokens)
    if name == "sliding-window":
        return SlidingWindowMethod(model, window, sink_tokens)
    return BackboneMethod(model, name, window)


def model_info(model, method: "Method", name: str | None) -> dict:
    """What identifies the weights a result was computed with; its hash guards resuming against mixing models."""
    info = {"name": name or model.base_model or type(model.backbone_model).__name__,
            "base_model": model.base_model, "backbone": model.backbone.describe()}
    if isinstance(method, MemoryMethod):
        info["comet_config"] = method.runner.comet_config.to_dict()
        info["comet_checksum"] = _checksum(method.runner.memory.parameters())
    lora = lora_checksum(model)
    if lora is not None:  # an adapter trained with LoRA changes the backbone every method reads with
        info["lora_checksum"] = lora
    dtype = str(model.backbone.dtype).removeprefix("torch.")
    if dtype != "float32":  # the default is left out, so that the ids of float32 results stay what they were
        info["dtype"] = dtype
    identity = {k: v for k, v in info.items() if k != "name"}
    info["id"] = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return info


def lora_checksum(model) -> float | None:
    """A checksum of the backbone's LoRA weights, None without LoRA."""
    lora = [p for n, p in model.backbone_model.named_parameters() if "lora_" in n]
    return _checksum(lora) if lora else None


def _checksum(parameters) -> float:
    return round(sum(float(p.detach().double().sum()) for p in parameters), 4)


def _stopping(stop, start: int):
    """`stop(new token ids) -> bool` as the stopping criteria of a Hugging Face style `generate`, whose input_ids
    hold `start` prompt tokens before the new ones (None without `stop`)."""
    if stop is None:
        return None
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [bool(stop(row[start:].tolist())) for row in input_ids]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhen()])


def _bar(total: int, steps: int, progress: bool, initial: int = 0):
    """A nested per-read progress bar over `total` tokens (`initial` of them read before a resume), shown only for
    reads of READ_BAR_MIN_STEPS steps."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="reading", unit="tok", unit_scale=True, position=1, leave=False,
                dynamic_ncols=True, disable=not progress or steps < READ_BAR_MIN_STEPS)


class Method:
    """One way to read a long input with the backbone. Subclasses say how they answer and how they read."""

    name: str

    def __init__(self, model):
        self.model = model

    @property
    def device(self):
        return self.model.backbone.device

    def settings(self) -> dict:
        """The options that change results (recorded with every result; a resumed run must match them)."""
        return {"layout": None, "prime_tokens": None, "window": None, "sink_tokens": None}

    def describe(self) -> str:
        """A few words for titles and tables."""
        raise NotImplementedError

    def check_prompt(self, n_tokens: int, question_tokens: int, answer_tokens: int, answer_room: int | None = None):
        """Raises ValueError if this method cannot answer a prompt of n_tokens with answer_tokens more
        (`answer_room` as in `answer`)."""

    def check_document(self, n_tokens: int) -> None:
        """Raises ValueError if this method cannot score a document of n_tokens."""

    def check_continuation(self, n_context: int, n_continuation: int) -> None:
        """Raises ValueError if this method cannot score a continuation of n_continuation tokens after n_context."""
        if n_context < 1 or n_continuation < 1:
            raise ValueError("scoring a continuation needs at least one context and one continuation token")

    def answer(self, prompt: list[int], question_tokens: int, max_new_tokens: int, eos, progress: bool,
               answer_room: int | None = None, snapshot=None, stop=None):
        """Greedy continuation of `prompt`: (new token ids, facts for the record: read_tokens,
        first_chunk_tokens, open_chunk_tokens). `answer_room`: what the primed layout keeps free for the answer
        (default max_new_tokens; a longer answer rolls over into the next chunk); other methods ignore it.
        `snapshot` (`streaming.Snapshot`): where the memory methods save a long read to resume it after an
        interruption; the backbone methods read from the start again. `stop(new token ids) -> bool`: ends the
        answer early once true (e.g. a stop sequence was generated), besides eos and max_new_tokens."""
        raise NotImplementedError

    def hidden_blocks(self, tokens, progress: bool):
        """Yields (start, final-norm hidden states (1, n, d) of positions start..start+n-1) covering every
        position of `tokens` (1, N) but possibly the last one exactly once, in order."""
        raise NotImplementedError

    def continuation_scores(self, context: list[int], continuation: list[int]):
        """(log-probabilities (m,) float32 on the CPU of the m `continuation` tokens after `context`, whether each
        is the greedy choice): `context + continuation` read as this method reads a document, the predictions of
        the continuation kept. Every position's hidden state goes through the LM head only for those m rows."""
        import torch

        self.check_continuation(len(context), len(continuation))
        ids = context + continuation
        first, n = len(context) - 1, len(ids) - 1  # positions first..n-1 predict the continuation
        rows = []
        for start, hidden in self.hidden_blocks(torch.tensor([ids], device=self.device), progress=False):
            a, b = max(first, start), min(start + hidden.shape[1], n)
            if a < b:
                rows.append(hidden[0, a - start : b - start])
        return self._scores(torch.cat(rows), continuation)

    def _scores(self, hidden, continuation: list[int]):
        """Log-probabilities and greedy-ness of `continuation` from the hidden states (m, d) that predict it."""
        import torch
        import torch.nn.functional as F

        logits = self.model.backbone.logits(hidden).float()  # (m, vocabulary)
        target = torch.tensor(continuation, device=logits.device)
        logprobs = F.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
        return logprobs.cpu(), bool((logits.argmax(dim=-1) == target).all())

    def token_losses(self, ids: list[int], progress: bool = False):
        """(N-1,) float32 on the CPU: entry i-1 is the cross entropy of token i given what this method lets it
        see of tokens 0..i-1. Logits are computed LOSS_ROWS positions at a time."""
        import torch
        import torch.nn.functional as F

        tokens = torch.tensor([ids], device=self.device)
        n = len(ids)
        losses = torch.zeros(n - 1)
        backbone = self.model.backbone
        for start, hidden in self.hidden_blocks(tokens, progress):
            rows = min(hidden.shape[1], n - 1 - start)
            for a in range(0, rows, LOSS_ROWS):
                b = min(a + LOSS_ROWS, rows)
                logits = backbone.logits(hidden[0, a:b]).float()
                targets = tokens[0, start + a + 1 : start + b + 1]
                losses[start + a : start + b] = F.cross_entropy(logits, targets, reduction="none").cpu()
        return losses


class MemoryMethod(Method):
    """comet and no-memory: a `CometForCausalLM` reads the input chunk by chunk."""

    def __init__(self, model, name: str, layout: str, prime_tokens: int):
        super().__init__(model)
        self.name = name
        self.runner = without_memory(model) if name == "no-memory" else model
        self.layout = layout
        self.prime_tokens = prime_tokens if layout == "primed" else None

    def settings(self) -> dict:
        return {**super().settings(), "layout": self.layout, "prime_tokens": self.prime_tokens}

    def describe(self) -> str:
        return f"{self.layout} layout"

    def check_prompt(self, n_tokens, question_tokens, answer_tokens, answer_room=None) -> None:
        room = answer_tokens if answer_room is None else answer_room
        open_chunk_tokens(n_tokens, self.runner.comet_config.chunk_size, self.layout, question_tokens, room,
                          self.prime_tokens or 0)

    def answer(self, prompt, question_tokens, max_new_tokens, eos, progress, answer_room=None, snapshot=None,
               stop=None):
        """Reads the prompt in the layout's chunks and generates (`streaming.generate_answer`); with "fixed" that
        is `generate(prompt)`, since reading in pieces gives the same state as reading at once."""
        from cometlm.evaluation.streaming import generate_answer

        n, c = len(prompt), self.runner.comet_config.chunk_size
        room = max_new_tokens if answer_room is None else answer_room
        tail = open_chunk_tokens(n, c, self.layout, question_tokens, room, self.prime_tokens or 0)
        if self.name == "no-memory":
            # Nothing crosses a chunk boundary, so the closed chunks cannot change the answer: read the open
            # chunk alone (tests check this equals reading everything).
            prompt, snapshot = prompt[-tail:], None
        new_ids = generate_answer(self.runner, prompt, tail, max_new_tokens, eos_token_id=eos, progress=progress,
                                  snapshot=snapshot, stopping_criteria=_stopping(stop, tail))
        first = (n - tail) % c if len(prompt) == n else None
        return new_ids, {"read_tokens": len(prompt), "first_chunk_tokens": first, "open_chunk_tokens": tail}

    def hidden_blocks(self, tokens, progress):
        """Chunks of C from the start, as `forward` reads them teacher-forced, one chunk's hidden states at a time."""
        import torch

        from cometlm.runtime import release_free_memory

        model, c, n = self.runner, self.runner.comet_config.chunk_size, tokens.shape[1]
        state = model.init_memory(1)
        with _bar(n, n // c, progress) as bar:
            for start in range(0, n, c):
                text = tokens[:, start : start + c]
                closing = torch.tensor([start + c < n], device=self.device)
                length = torch.tensor([text.shape[1]], device=self.device)
                hidden, layers, _ = model._run_chunk(state, text, length, closing)
                state = model._advance(state, layers, closing)
                yield start, hidden
                bar.update(text.shape[1])
                release_free_memory()


class BackboneMethod(Method):
    """full and truncated: the backbone with full attention over (the last `window` tokens of) the input."""

    def __init__(self, model, name: str, window: int | None):
        super().__init__(model)
        self.name = name
        limit = backbone_window(model)
        if name == "full" and window is not None and window > limit:
            raise ValueError(
                f"full attention reads at most the backbone's window of {limit} tokens (got window {window})"
            )
        self.window = backbone_window(model, window)
        self.stride = max(1, self.window // 2)

    def settings(self) -> dict:
        return {**super().settings(), "window": self.window}

    def describe(self) -> str:
        if self.name == "full":
            return f"full attention, up to {self.window} tokens"
        return f"last {self.window} tokens"

    def _refuse(self, what: str) -> None:
        raise ValueError(
            f"{what} exceeds the backbone's window of {self.window} tokens, and full attention does not read past it; "
            "use the truncated or sliding-window method (--method on the command line, method= in lm-eval's "
            "model_args), or shorter inputs"
        )

    def check_prompt(self, n_tokens, question_tokens, answer_tokens, answer_room=None) -> None:
        if self.name == "full" and n_tokens + answer_tokens > self.window:
            self._refuse(f"context length {n_tokens} plus the {answer_tokens}-token answer")
        if self.window <= answer_tokens:
            raise ValueError(f"window must exceed the answer's {answer_tokens} tokens (got {self.window})")

    def check_document(self, n_tokens) -> None:
        if self.name == "full" and n_tokens - 1 > self.window:
            self._refuse(f"reading {n_tokens - 1} tokens (a document of {n_tokens}, whose last token is only "
                         "predicted)")
        if self.window < 2:
            raise ValueError(f"scoring with a window needs at least 2 tokens in it (got {self.window})")

    def check_continuation(self, n_context, n_continuation) -> None:
        super().check_continuation(n_context, n_continuation)
        if self.name == "full" and n_context + n_continuation - 1 > self.window:
            self._refuse(f"reading {n_context + n_continuation - 1} tokens (a context of {n_context} and a "
                         f"continuation of {n_continuation}, whose last token is only predicted)")
        if n_continuation > self.window:
            raise ValueError(f"a continuation of {n_continuation} tokens does not fit the window of {self.window}")

    def answer(self, prompt, question_tokens, max_new_tokens, eos, progress, answer_room=None, snapshot=None,
               stop=None):
        """Full attention over the prompt's last `window - max_new_tokens` tokens, so prompt and answer fit."""
        import torch

        kept = prompt[-(self.window - max_new_tokens) :]
        ids = torch.tensor([kept], device=self.device)
        out = self.model.backbone_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=eos if eos is not None else 0, stopping_criteria=_stopping(stop, len(kept)),
        )
        return out[0, len(kept) :].tolist(), {"read_tokens": len(kept), "first_chunk_tokens": None,
                                              "open_chunk_tokens": None}

    def continuation_scores(self, context, continuation):
        """One pass over the last `window` tokens before the continuation's last token, as a causal model that
        truncates its input on the left scores it (lm-eval's Hugging Face backend does the same); full attention
        refuses what does not fit."""
        import torch

        self.check_continuation(len(context), len(continuation))
        ids = (context + continuation)[:-1][-self.window :]
        hidden = self.model.backbone.hidden_states(torch.tensor([ids], device=self.device))
        return self._scores(hidden[0, -len(continuation) :], continuation)

    def hidden_blocks(self, tokens, progress):
        """One pass when the input fits the window (full: without its last token, which is only a target). Longer
        inputs (truncated only) are read in windows of `window` tokens that start every `stride = window // 2`
        tokens (the strided perplexity of the transformers docs); each window scores the targets the one before did
        not reach, so every token after the first window is predicted from between `window - stride` and
        `window - 1` tokens before it."""
        backbone, n = self.model.backbone, tokens.shape[1]
        if self.name == "full":  # the last token is only a target: a document of window + 1 tokens fits
            with _bar(n, 1, progress) as bar:
                yield 0, backbone.hidden_states(tokens[:, : n - 1])
                bar.update(n)
            return
        scored, begin = 1, 0  # targets below `scored` are done; target t is predicted at position t - 1
        with _bar(n, (n - self.window) // self.stride + 1, progress) as bar:
            while True:
                end = min(begin + self.window, n)
                hidden = backbone.hidden_states(tokens[:, begin:end])
                yield scored - 1, hidden[:, scored - 1 - begin : end - 1 - begin]
                bar.update(end - bar.n)
                if end == n:
                    return
                scored, begin = end, begin + self.stride


class SlidingWindowMethod(Method):
    """sliding-window: StreamingLLM's bounded cache of attention sinks and recent tokens."""

    name = "sliding-window"

    def __init__(self, model, window: int | None, sink_tokens: int):
        super().__init__(model)
        limit = backbone_window(model)
        self.sink_tokens = sink_tokens
        self.window = window if window is not None else limit - sink_tokens - READ_BLOCK
        if self.window < 1 or sink_tokens + self.window + READ_BLOCK > limit:
            raise ValueError(
                f"sliding-window attention gives positions up to sink_tokens + window + {READ_BLOCK} (one read "
                f"block), which must fit the backbone's window of {limit} tokens (got sink_tokens {sink_tokens}, "
                f"window {self.window}); lower the window or the sink tokens (--window, --sink-tokens on the command "
                "line; window=, sink_tokens= in lm-eval's model_args)"
            )

    def settings(self) -> dict:
        return {**super().settings(), "window": self.window, "sink_tokens": self.sink_tokens}

    def describe(self) -> str:
        return f"{self.sink_tokens} sink + {self.window} recent tokens"

    def new_cache(self):
        from cometlm.evaluation.attention_sinks import AttentionSinkCache

        return AttentionSinkCache(self.model.backbone, self.sink_tokens, self.window)

    def _read(self, tokens, cache, progress: bool):
        """Yields (start, hidden) per block of READ_BLOCK tokens, trimming the cache before each block."""
        backbone, n = self.model.backbone, tokens.shape[1]
        with _bar(n, n // READ_BLOCK, progress) as bar:
            for start in range(0, n, READ_BLOCK):
                cache.trim()
                block = tokens[:, start : start + READ_BLOCK]
                yield start, backbone.hidden_states(block, cache)
                bar.update(block.shape[1])

    def hidden_blocks(self, tokens, progress):
        yield from self._read(tokens, self.new_cache(), progress)

    def answer(self, prompt, question_tokens, max_new_tokens, eos, progress, answer_room=None, snapshot=None,
               stop=None):
        """Reads the prompt through the cache, then decodes greedily one token at a time, trimming before each."""
        import torch

        cache, backbone = self.new_cache(), self.model.backbone
        for _, hidden in self._read(torch.tensor([prompt], device=self.device), cache, progress):
            pass
        ends = {eos} if isinstance(eos, int) else set(eos or ())
        new_ids = []
        for step in range(max_new_tokens):
            token = backbone.logits(hidden[:, -1]).argmax(dim=-1)  # (1,)
            new_ids.append(int(token))
            if new_ids[-1] in ends or step == max_new_tokens - 1 or (stop is not None and stop(new_ids)):
                break
            cache.trim()
            hidden = backbone.hidden_states(token[:, None], cache)
        return new_ids, {"read_tokens": len(prompt), "first_chunk_tokens": None, "open_chunk_tokens": None}
