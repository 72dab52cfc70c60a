"""sliding-window: StreamingLLM's bounded KV cache of attention sinks and the most recent tokens."""

from __future__ import annotations

from cometlm.evaluation.settings import READ_BLOCK

from .base import Method, backbone_window


class SlidingWindowMethod(Method):
    """sliding-window: StreamingLLM's bounded cache of attention sinks and recent tokens, kept in blocks.

    Text is read, and answers are generated, in blocks of ``READ_BLOCK`` tokens; before each block the cache is
    trimmed to the ``sink_tokens`` first tokens and the ``window`` most recent ones. So a token attends to the sinks,
    ``window`` older tokens and its own block up to itself: at most ``sink_tokens + window + READ_BLOCK`` keys, as a
    CoMeT token attends to its memory rows and its own chunk (with CoMeT's 128-token chunks, a beacon every 8 tokens,
    16 global and 16 temporary rows and a sink, ``--sink-tokens 4 --window 44`` is the same 176 keys at most).
    """

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
        # the block is recorded since answers are generated in blocks too (before 2026-12-07 the cache was trimmed
        # before every generated token): a run of the earlier kind is not resumed with this one
        return {**super().settings(), "window": self.window, "sink_tokens": self.sink_tokens, "block": READ_BLOCK}

    def describe(self) -> str:
        return f"{self.sink_tokens} sink + {self.window} recent tokens + a {READ_BLOCK}-token block"

    def new_cache(self):
        from .attention_sinks import AttentionSinkCache

        return AttentionSinkCache(self.model.backbone, self.sink_tokens, self.window)

    def _read(self, tokens, cache, progress: bool):
        """Yields (start, hidden) per block of READ_BLOCK tokens, trimming the cache before each block."""
        from cometlm.evaluation.streaming import read_bar
        backbone, n = self.model.backbone, tokens.shape[1]
        with read_bar(n, n // READ_BLOCK, progress) as bar:
            for start in range(0, n, READ_BLOCK):
                cache.trim()
                block = tokens[:, start : start + READ_BLOCK]
                yield start, backbone.hidden_states(block, cache)
                bar.update(block.shape[1])

    def hidden_blocks(self, tokens, progress):
        yield from self._read(tokens, self.new_cache(), progress)

    def answer(self, prompt, question_tokens, max_new_tokens, eos, progress, answer_room=None, snapshot=None,
               stop=None):
        """Reads the prompt through the cache, then decodes greedily one token at a time, trimming where a new
        block begins (the answer's tokens continue the prompt's last block, as they would be read)."""
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
            if (len(prompt) + step) % READ_BLOCK == 0:  # the token about to be read starts a block
                cache.trim()
            hidden = backbone.hidden_states(token[:, None], cache)
        return new_ids, {"read_tokens": len(prompt), "first_chunk_tokens": None, "open_chunk_tokens": None}
