"""comet and no-memory: the model reads chunk by chunk through its memories (or with them off), the prompt's
tail in the open chunk the answer is generated in (the layout: ``open_chunk_tokens``)."""

from __future__ import annotations

from . import open_chunk_tokens
from .base import Method, stopping_criteria


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
                                  snapshot=snapshot, stopping_criteria=stopping_criteria(stop, tail))
        first = (n - tail) % c if len(prompt) == n else None
        return new_ids, {"read_tokens": len(prompt), "first_chunk_tokens": first, "open_chunk_tokens": tail}

    def answer_batch(self, prompts, question_tokens, max_new_tokens, eos, progress):
        """Prompts of one length whose open chunks hold the same number of tokens (a grid cell's trials) are read
        and answered as one batch (`streaming.generate_answers`); greedy decoding gives each the tokens it gets
        alone. Anything else is answered one at a time."""
        from cometlm.evaluation.streaming import generate_answers

        n, c = len(prompts[0]), self.runner.comet_config.chunk_size
        tails = {open_chunk_tokens(len(p), c, self.layout, q, m, self.prime_tokens or 0)
                 for p, q, m in zip(prompts, question_tokens, max_new_tokens)}
        if len(prompts) == 1 or len(tails) > 1 or any(len(p) != n for p in prompts):
            return super().answer_batch(prompts, question_tokens, max_new_tokens, eos, progress)
        (tail,) = tails
        if self.name == "no-memory":  # as in `answer`: only the open chunk can change the answer
            prompts = [p[-tail:] for p in prompts]
        answers = generate_answers(self.runner, prompts, tail, max_new_tokens, eos_token_id=eos, progress=progress)
        first = (n - tail) % c if len(prompts[0]) == n else None
        facts = {"read_tokens": len(prompts[0]), "first_chunk_tokens": first, "open_chunk_tokens": tail}
        return [(ids, dict(facts)) for ids in answers]

    def hidden_blocks(self, tokens, progress):
        """Chunks of C from the start, as `forward` reads them teacher-forced, one chunk's hidden states at a time."""
        from cometlm.evaluation.streaming import read_bar
        from cometlm.runtime import PeriodicTrim

        model, c, n = self.runner, self.runner.comet_config.chunk_size, tokens.shape[1]
        start, trim = 0, PeriodicTrim()
        with read_bar(n, n // c, progress) as bar:
            for chunk, out in model.read_chunks(model.split_chunks(tokens).chunks, model.init_memory(1)):
                yield start, out.text_hidden
                start += chunk.text_ids.shape[1]
                bar.update(chunk.text_ids.shape[1])
                trim()
