"""full and truncated: the backbone with full attention over the whole input, or over its last window."""

from __future__ import annotations

from .base import Method, backbone_window, stopping_criteria


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
        """Full attention over the prompt's last `window - max_new_tokens` tokens, so prompt and answer fit (full
        refuses a prompt that does not fit whole: a grid checks one trial's answer room, not each trial's)."""
        import torch

        self.check_prompt(len(prompt), question_tokens, max_new_tokens)
        kept = prompt[-(self.window - max_new_tokens) :]
        ids = torch.tensor([kept], device=self.device)
        out = self.model.backbone_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=_first(eos), stopping_criteria=stopping_criteria(stop, len(kept)),
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
        from cometlm.evaluation.streaming import read_bar
        backbone, n = self.model.backbone, tokens.shape[1]
        if self.name == "full":  # the last token is only a target: a document of window + 1 tokens fits
            with read_bar(n, 1, progress) as bar:
                yield 0, backbone.hidden_states(tokens[:, : n - 1])
                bar.update(n)
            return
        scored, begin = 1, 0  # targets below `scored` are done; target t is predicted at position t - 1
        with read_bar(n, (n - self.window) // self.stride + 1, progress) as bar:
            while True:
                end = min(begin + self.window, n)
                hidden = backbone.hidden_states(tokens[:, begin:end])
                yield scored - 1, hidden[:, scored - 1 - begin : end - 1 - begin]
                bar.update(end - bar.n)
                if end == n:
                    return
                scored, begin = end, begin + self.stride


def _first(eos) -> int:
    """A padding id for Hugging Face's `generate`: the (first) end id, or 0 without one."""
    if isinstance(eos, int):
        return eos
    return eos[0] if eos else 0
