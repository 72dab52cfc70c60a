"""The interface every evaluation method implements, and what the methods share (the backbone's window,
checksums of the weights a result was computed with, stop conditions)."""

from __future__ import annotations

from cometlm.evaluation.settings import DEFAULT_WINDOW, LOSS_ROWS


def backbone_window(model, window: int | None = None) -> int:
    """The given window, else the backbone's max_position_embeddings (else DEFAULT_WINDOW)."""
    if window is None:
        window = getattr(model.backbone.config, "max_position_embeddings", None) or DEFAULT_WINDOW
    return window


def lora_checksum(model) -> float | None:
    """A checksum of the backbone's LoRA weights, None without LoRA."""
    lora = [p for n, p in model.backbone_model.named_parameters() if "lora_" in n]
    return checksum(lora) if lora else None


def checksum(parameters) -> float:
    return round(sum(float(p.detach().double().sum()) for p in parameters), 4)


def stopping_criteria(stop, start: int):
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
        return {"layout": None, "prime_tokens": None, "window": None, "sink_tokens": None, "block": None}

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

    def answer_batch(self, prompts: list[list[int]], question_tokens: list[int], max_new_tokens: list[int], eos,
                     progress: bool) -> list[tuple[list[int], dict]]:
        """``answer`` for several prompts, each with what it would get alone. Here one at a time; a method that can
        read a batch at once (prompts of one length, as a grid cell's trials are) overrides this."""
        return [self.answer(p, q, m, eos, progress) for p, q, m in zip(prompts, question_tokens, max_new_tokens)]

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
