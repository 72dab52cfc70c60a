"""lm-evaluation-harness backend: `--model cometlm`, with contexts of any length streamed through the memory.

Importing this module registers the model under the name "cometlm" with lm-eval's `register_model`. lm-eval
0.4.13 finds external models only when something imports them first (it has no plugin entry points), so:

    cometlm lm-eval --model cometlm --model_args comet=DIR|NAME --tasks ...    # the harness CLI, backend registered
    lm_eval.simple_evaluate(model="cometlm", ...)  # after `import cometlm.evaluation.harness`

The package also declares an entry point in the `lm_eval.models` group, for the plugin discovery upstream
merged after 0.4.13 (untested here), which would let plain `lm_eval --model cometlm` find it.

`--model_args` (comma-separated key=value): `pretrained` (base model: a local Hugging Face directory or the
bundled "smollm2-135m-instruct", the default), `comet` (a saved CoMeT model or adapter; without it CoMeT starts
untrained with `chunk_size`, `global_slots`, `temp_stride`, `temp_capacity`, `adapter_rank`, `gate`,
`attention_sink`), `dtype` (float32, the default; bfloat16; or auto, as the command line's `--dtype auto`),
`method` (one of `methods.METHODS`: "comet", the default;
"no-memory": both memories off, i.e. plain chunking; the baselines on the same backbone "full", "truncated" and
"sliding-window", with `window` and `sink_tokens`), `layout` ("primed", the default, or "fixed"), `prime_tokens`
(context tokens kept in the answer's open chunk with "primed"; default: as many as fit), `max_gen_toks` (256),
`add_bos_token` (false), `threads`. `--device` and `--batch_size` (an integer) come from the harness.

- loglikelihood: each distinct context is read once; its continuations are scored together (batch_size at a
  time) from that memory state, with the open chunk holding the context's tail ("primed": as much of it as
  leaves room for the longest continuation; "fixed": chunks of C from the start, i.e. exactly `forward` over
  context + continuation).
- loglikelihood_rolling: the whole text after the prefix token, chunks of C from the start, no truncation and
  no windows: every token is predicted from everything before it.
- generate_until: the context read with its tail in the open chunk, then `generate` with the task's stop
  sequences; the text is cut at the first stop sequence, as the harness's Hugging Face backend does. Greedy
  requests with the same stop sequences and length limit are read and decoded batch_size at a time (each stream's
  memory and tokens are those it gets alone, and each ends at its own stop sequence); sampled ones one at a time,
  so their draws do not depend on what else is in the batch.

The baselines read as they do in `cometlm eval` (`methods.Method`), with the backbone as loaded (with `comet=DIR`,
the adapter's LoRA included), one request at a time and greedily (they refuse `do_sample` and a repetition
penalty); every request is checked before the first is answered. loglikelihood scores context + continuation
(`Method.continuation_scores`: full and truncated over the last `window` tokens, as the `hf` backend truncates;
full refuses longer inputs). loglikelihood_rolling scores the prefix token + text as `cometlm eval ppl` does
(`Method.token_losses`): full refuses a text longer than its window (the prefix token is read, the text's last
token only predicted), and truncated reads windows that overlap by half, so every token sees at least `window / 2`
before it (the `hf` backend's rolling windows do not overlap, so its numbers are not comparable). generate_until
generates greedily (`Method.answer`) until a stop sequence appears, and cuts the text at the first one.

Results record the exact command, cometlm's version, the CoMeT configuration and weights checksum, and the
layout (`get_model_info`, merged into the harness's results config next to its own versions and seeds). A run
resumes with the harness's request cache: `--use_cache PATH` stores every answered request, and a rerun with
the same arguments answers those from the cache.
"""

from __future__ import annotations

import logging
import shlex
import sys

import lm_eval.models  # noqa: F401  (registers the built-in models first; see get_model's lazy import)
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from cometlm.evaluation.settings import DEFAULT_SINK_TOKENS, LAYOUTS, MEMORY_METHODS, METHODS

log = logging.getLogger(__name__)

GENERATION_KWARGS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty")


CONFIG_OPTIONS = ("chunk_size", "global_slots", "temp_stride", "temp_capacity", "adapter_rank", "attention_sink",
                  "gate_bias")  # the CometConfig of an untrained model, as the command line's options
LOAD_OPTIONS = ("dtype", "threads")


def _model_options(pretrained, comet, gate: bool, options: dict):
    """The ``loading.ModelOptions`` of the model_args, read as the command line reads its model options."""
    from cometlm.config import CometConfig
    from cometlm.loading import ModelOptions

    sizes = {k: options[k] for k in CONFIG_OPTIONS if k in options}
    if sizes.get("temp_stride", CometConfig.temp_stride) == 0:
        sizes["temp_capacity"] = 0
    if sizes.get("gate_bias") is not None:
        sizes["gate_bias"] = tuple(sizes["gate_bias"])
    config = CometConfig() if comet else CometConfig(gate=bool(gate), **sizes)
    return ModelOptions(base=pretrained, adapter=comet, config=config, dtype=options.get("dtype", "float32"),
                        threads=options.get("threads"))


def _count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"cometlm model_args: {name} must be an integer >= {minimum} (got {value!r})")
    return value


@register_model("cometlm")
class CometLM(TemplateLM):
    """A `CometForCausalLM` behind lm-eval's `LM` interface (see the module docstring for its arguments)."""

    def __init__(
        self,
        pretrained=None,
        comet: str | None = None,
        gate: bool = True,
        method: str = "comet",
        layout: str = "primed",
        prime_tokens: int | None = None,
        window: int | None = None,
        sink_tokens: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool = False,
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **model_options,
    ):
        """`model_options`: the `cometlm` command's model options (chunk_size, global_slots, temp_stride,
        temp_capacity, adapter_rank, attention_sink, dtype, threads, ...) by their option names."""
        super().__init__()
        import torch

        from cometlm.evaluation.methods import build_method
        from cometlm.evaluation.methods.memory import without_memory
        from cometlm.loading import load_model
        from cometlm.model import CometForCausalLM

        if layout not in LAYOUTS:
            raise ValueError(f"cometlm model_args: layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
        if method not in METHODS:
            raise ValueError(f"cometlm model_args: method must be one of {', '.join(METHODS)} (got {method!r})")
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        self.batch_size = _count(batch_size, "batch_size (an integer; 'auto' is not supported)", 1)
        self.max_gen_toks = _count(max_gen_toks, "max_gen_toks", 1)
        self.prime_tokens = None if prime_tokens is None else _count(prime_tokens, "prime_tokens", 1)
        window = None if window is None else _count(window, "window", 1)
        sink_tokens = None if sink_tokens is None else _count(sink_tokens, "sink_tokens", 0)
        if method in MEMORY_METHODS and (window is not None or sink_tokens is not None):
            raise ValueError(f"cometlm model_args: window and sink_tokens apply to the methods full, truncated and "
                             f"sliding-window, not {method}")
        if method not in MEMORY_METHODS and prime_tokens is not None:
            raise ValueError(f"cometlm model_args: prime_tokens applies to the methods comet and no-memory, not "
                             f"{method}")
        self.layout, self.add_bos_token = layout, bool(add_bos_token)
        unknown = sorted(set(model_options) - set(CONFIG_OPTIONS) - set(LOAD_OPTIONS))
        if unknown:
            accepted = sorted({*CONFIG_OPTIONS, *LOAD_OPTIONS, "pretrained", "comet", "gate", "method", "layout",
                               "prime_tokens", "window", "sink_tokens", "max_gen_toks", "add_bos_token"})
            raise ValueError(f"cometlm model_args: unknown argument(s) {', '.join(unknown)}; the accepted ones are "
                             f"{', '.join(accepted)}")
        if isinstance(pretrained, CometForCausalLM):
            model = pretrained
        else:
            model = load_model(_model_options(pretrained, comet, gate, model_options))
        if model.tokenizer is None:
            raise ValueError("cometlm: the model has no tokenizer; lm-eval passes text, so it needs one")
        if device is None or device == "auto" or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            if device not in (None, "auto"):
                log.warning("cometlm: %s is not available here; running on the CPU", device)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        model = model.to(self._device).eval()
        self.model = without_memory(model) if method == "no-memory" else model
        self.method, self.tokenizer = method, model.tokenizer
        # The baselines read through `methods.Method`; comet and no-memory stream here, sharing context reads.
        self.baseline = None
        if method not in MEMORY_METHODS:
            sinks = DEFAULT_SINK_TOKENS if sink_tokens is None else sink_tokens
            try:
                self.baseline = build_method(method, model, window=window, sink_tokens=sinks)
            except ValueError as err:
                raise ValueError(f"cometlm model_args: {err}") from None
        self.model_name = comet or (pretrained if isinstance(pretrained, str) else None) or model.base_model

    # ----------------------------------------------------------------------------------------------------------
    # Tokens

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def _end_ids(self) -> list[int]:
        """Where an answer ends: the tokenizer's EOS and every end id the backbone's generation_config lists."""
        from cometlm.generation import end_token_ids

        return end_token_ids(self.model, self.tokenizer)

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and a rolling text) starts from: BOS if the tokenizer has one, else EOS."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer(string, add_special_tokens=special)["input_ids"]

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # ----------------------------------------------------------------------------------------------------------
    # Requests

    def _open_tokens(self, n_context: int, answer_tokens: int) -> int:
        """The context tokens in the open chunk: with "primed" as many as leave room for the answer (capped so at
        least one context token stays; a longer answer rolls over), or `prime_tokens`; with "fixed" the rest."""
        from cometlm.evaluation.methods import open_chunk_tokens

        c = self.model.comet_config.chunk_size
        prime = c if self.prime_tokens is None else self.prime_tokens
        return open_chunk_tokens(n_context, c, self.layout, 0, min(answer_tokens, c - 1), prime)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context ids, continuation ids); one context read per distinct one."""
        import torch
        from tqdm.auto import tqdm

        from cometlm.evaluation.streaming import read_context, score_continuations

        if self.baseline is not None:
            return self._baseline_loglikelihood(requests, disable_tqdm)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context_ids, _) in enumerate(requests):
            groups.setdefault(tuple(context_ids), []).append(index)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="cometlm loglikelihood", disable=disable_tqdm, dynamic_ncols=True)
        with torch.inference_mode():
            for context, indices in groups.items():
                context = list(context)
                tail = self._open_tokens(len(context), max(len(requests[i][2]) for i in indices))
                state = read_context(self.model, context, tail, progress=not disable_tqdm)
                state = self.model.ingest(torch.tensor([context[-tail:]], device=self.device), state)
                for a in range(0, len(indices), self.batch_size):
                    batch = indices[a : a + self.batch_size]
                    scored = score_continuations(self.model, state, [requests[i][2] for i in batch])
                    for i, (logprobs, greedy) in zip(batch, scored):
                        answer = (float(logprobs.sum()), bool(greedy.all()))
                        results[i] = answer
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                    bar.update(len(batch))
        bar.close()
        return results

    def _check_all(self, kind: str, checks) -> None:
        """Runs every request's check (a callable that raises ValueError) before any request is answered, so that
        a request this method cannot read stops the run at once, not hours in."""
        for i, check in enumerate(checks):
            try:
                check()
            except ValueError as err:
                raise ValueError(f"cometlm method={self.method}: {kind} request {i}: {err}") from None

    def _baseline_loglikelihood(self, requests, disable_tqdm: bool) -> list[tuple[float, bool]]:
        import torch
        from tqdm.auto import tqdm

        self._check_all("loglikelihood", [lambda c=c, x=x: self.baseline.check_continuation(len(c), len(x))
                                          for _, c, x in requests])
        results = []
        for key, context, continuation in tqdm(requests, desc=f"cometlm {self.method} loglikelihood",
                                                disable=disable_tqdm, dynamic_ncols=True):
            with torch.inference_mode():
                logprobs, greedy = self.baseline.continuation_scores(context, continuation)
            answer = (float(logprobs.sum()), greedy)
            results.append(answer)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of every token of each text, each predicted from the prefix token and all before it."""
        import torch
        from tqdm.auto import tqdm

        from cometlm.evaluation.streaming import score_continuations

        texts = [request.args[0] for request in requests]
        encoded = [self.tok_encode(text, add_special_tokens=False) for text in texts]
        if self.baseline is not None:  # the prefix token and the text, as `cometlm eval ppl` scores a document
            self._check_all("loglikelihood_rolling", [lambda n=len(ids): self.baseline.check_document(n + 1)
                                                      for ids in encoded])
        results = []
        for text, ids in tqdm(list(zip(texts, encoded)), desc="cometlm loglikelihood_rolling", disable=disable_tqdm,
                              dynamic_ncols=True):
            with torch.inference_mode():
                if self.baseline is not None:
                    total = -float(self.baseline.token_losses([self.prefix_token_id, *ids], not disable_tqdm).sum())
                else:
                    state = self.model.ingest(torch.tensor([[self.prefix_token_id]], device=self.device))
                    ((logprobs, _),) = score_continuations(self.model, state, [ids], progress=not disable_tqdm)
                    total = float(logprobs.sum())
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        import torch
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
        from tqdm.auto import tqdm

        eos = self.tokenizer.decode([self.eot_token_id], skip_special_tokens=False)
        parsed = []  # (context, gen_kwargs, ids, stop sequences, max new tokens, sampling options) per request
        for request in requests:
            context, gen_kwargs = request.args
            options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(options.pop("until", None), eos=eos)
            max_new = options.pop("max_gen_toks")
            ignored = sorted(k for k in options if k not in GENERATION_KWARGS)
            if ignored:
                log.warning("cometlm: ignoring generation arguments it does not support: %s", ", ".join(ignored))
            sampling = {k: options[k] for k in GENERATION_KWARGS if options.get(k) is not None}
            if not sampling.get("do_sample"):
                sampling = {k: v for k, v in sampling.items() if k == "repetition_penalty"}
            ids = self.tok_encode(context) or [self.prefix_token_id]
            parsed.append((context, gen_kwargs, ids, until, max_new, sampling))
        if self.baseline is not None:
            self._check_all("generate_until", [lambda p=p: self._check_greedy_prompt(*p[2:]) for p in parsed])
        results = [None] * len(parsed)
        bar = tqdm(total=len(parsed), desc="cometlm generate_until", disable=disable_tqdm, dynamic_ncols=True)
        for batch in self._generation_batches(parsed):
            _, _, _, until, max_new, sampling = parsed[batch[0]]
            with torch.inference_mode():
                if self.baseline is not None:
                    ((context, gen_kwargs, ids, *_),) = [parsed[i] for i in batch]

                    def stop(new_ids, until=until):  # a stop sequence was generated: the text is cut there below
                        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
                        return any(s and s in text for s in until)

                    answers = [self.baseline.answer(ids, 0, max_new, self._end_ids, not disable_tqdm,
                                                    stop=stop)[0]]
                else:
                    answers = self._generate_batch([parsed[i][2] for i in batch], until, max_new, sampling,
                                                   progress=not disable_tqdm)
            for i, new_ids in zip(batch, answers):
                context, gen_kwargs = parsed[i][:2]
                text = postprocess_generated_text(self.tokenizer.decode(new_ids, skip_special_tokens=True), until,
                                                  None)
                results[i] = text
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            bar.update(len(batch))
        bar.close()
        return results

    def _generation_batches(self, parsed) -> list[list[int]]:
        """Indices of the requests answered together: for the memory methods, greedy requests with the same stop
        sequences, length limit and repetition penalty, batch_size at a time, in request order; otherwise one."""
        if self.baseline is not None:
            return [[i] for i in range(len(parsed))]
        groups: dict[tuple, list[int]] = {}
        batches = []
        for i, (_, _, _, until, max_new, sampling) in enumerate(parsed):
            if sampling.get("do_sample"):
                batches.append([i])
                continue
            group = groups.setdefault((tuple(until), max_new, tuple(sorted(sampling.items()))), [])
            group.append(i)
            if len(group) == self.batch_size:
                batches.append(group[:])
                group.clear()
        batches += [group for group in groups.values() if group]
        return sorted(batches)

    def _generate_batch(self, prompts: list[list[int]], until: list[str], max_new: int, sampling: dict,
                        progress: bool) -> list[list[int]]:
        """Each prompt read with its tail in the open chunk (`streaming.read_contexts`), then the tails decoded
        together; returns each prompt's new tokens up to its first stop sequence's step or its EOS."""
        import torch

        from cometlm.evaluation.streaming import read_contexts

        tails = [self._open_tokens(len(ids), max_new) for ids in prompts]
        state = read_contexts(self.model, prompts, tails, progress=progress)
        width = max(tails)  # the tails left-padded, so that every stream's new tokens start at one column
        open_ids = torch.zeros(len(prompts), width, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(open_ids)
        for row, (ids, tail) in enumerate(zip(prompts, tails)):
            open_ids[row, width - tail :] = torch.tensor(ids[-tail:])
            mask[row, width - tail :] = 1
        lookback = max([len(self.tok_encode(s)) for s in until if s], default=0) + 2

        def stopped(sequences, scores):  # per stream: a stop sequence in its last new tokens ends it alone
            texts = self.tokenizer.batch_decode(sequences[:, width:][:, -lookback:])
            return torch.tensor([any(s and s in text for s in until) for text in texts], device=sequences.device)

        # the penalty, if any, counts the whole context as lm-eval's hf backend does, not only the open chunk's
        read = [ids[:-tail] for ids, tail in zip(prompts, tails)] if "repetition_penalty" in sampling else None
        out = self.model.generate(open_ids, attention_mask=mask, memory=state, max_new_tokens=max_new,
                                  eos_token_id=self._end_ids, stopping_criteria=stopped, read_ids=read, **sampling)
        return out[:, width:].tolist()

    def _check_greedy_prompt(self, ids, until, max_new, sampling) -> None:
        if sampling.get("do_sample") or sampling.get("repetition_penalty", 1.0) != 1.0:
            raise ValueError("this method generates greedily; do_sample and repetition_penalty need method comet or "
                             "no-memory")
        self.baseline.check_prompt(len(ids), 0, max_new)

    # ----------------------------------------------------------------------------------------------------------
    # Provenance

    def get_model_info(self) -> dict:
        """Merged into the harness's results config: what identifies these weights and this way of reading."""
        import cometlm
        from cometlm.evaluation.methods import lora_checksum

        memory = self.model.memory.parameters()
        return {
            "cometlm_version": cometlm.__version__,
            "cometlm_command": shlex.join(sys.argv),
            "cometlm_model": str(self.model_name),
            "cometlm_base_model": self.model.base_model,
            "cometlm_config": self.model.comet_config.to_dict(),
            "cometlm_checksum": round(sum(float(p.detach().double().sum()) for p in memory), 4),
            "cometlm_lora_checksum": lora_checksum(self.model),
            "cometlm_method": self.method,
            "cometlm_layout": self.layout if self.baseline is None else None,
            "cometlm_prime_tokens": self.prime_tokens,
            **({} if self.baseline is None else {f"cometlm_{k}": v for k, v in self.baseline.settings().items()
                                                  if k in ("window", "sink_tokens")}),
        }
