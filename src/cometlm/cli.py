"""The ``cometlm`` command line. Heavy imports happen inside the subcommands so ``--help`` is instant."""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time

DEMO_TOKENS = {"passkey": 32768, "continue": 16384}
DEFAULT_DEMO_TASK = "passkey"  # the shipped adapter (src/cometlm/adapters/smollm2-135m-passkey) at 32k tokens


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from .bundled import shipped_adapters

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", default=None,
        help="base model: the bundled 'smollm2-135m-instruct' (default) or a local Hugging Face model directory",
    )
    group.add_argument(
        "--comet", default=None, metavar="DIR|NAME",
        help="a saved CoMeT model or adapter (from save_pretrained), or the name of an adapter shipped with cometlm "
        f"({', '.join(shipped_adapters())}); its own config is used and the --chunk-size etc. options below are "
        "ignored. Without it, CoMeT starts untrained (identity adapters) on --model",
    )
    group.add_argument("--chunk-size", type=int, default=1024, help="C: text tokens per chunk (default 1024)")
    group.add_argument("--global-slots", type=int, default=64, help="M: global-memory slots, 0 disables it (default 64)")
    group.add_argument("--temp-stride", type=int, default=8, help="s: a beacon after every s tokens, 0 disables the temporary memory (default 8)")
    group.add_argument("--temp-capacity", type=int, default=256, help="K: rows in each layer's temporary queue (default 256)")
    group.add_argument("--adapter-rank", type=int, default=8, help="r: rank of the memory adapters (default 8)")
    group.add_argument("--no-gate", action="store_true", help="make the global update a plain overwrite (ablation)")
    group.add_argument(
        "--attention-sink", action="store_true",
        help="put one learned sink row (initialised as BOS) at position 0 of every chunk, ahead of the memory rows",
    )
    group.add_argument(
        "--gate-bias", type=float, nargs=2, default=None, metavar=("FIRST", "LAST"),
        help="initial gate bias of the first and last layer, linear in between (e.g. 0 6: layers keep their global "
        "memory from ~2 to ~400 chunks at the start of training); default: PyTorch's small random bias",
    )
    group.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (default float32)")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens to generate (default {max_new_tokens})")
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample)")
    group.add_argument("--top-k", type=int, default=None, help="keep only the k most likely tokens (with --do-sample)")
    group.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (with --do-sample)")
    group.add_argument("--repetition-penalty", type=float, default=None, help="HF repetition penalty (>1 discourages repeats)")
    group.add_argument("--seed", type=int, default=0, help="random seed for sampling, and for the demo's key and depth (default 0)")


def _load_model(args):
    import torch

    from .bundled import BUNDLED_MODEL
    from .config import CometConfig
    from .model import CometForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.comet:
        model = CometForCausalLM.from_pretrained(args.comet, base_model=args.model, dtype=dtype)
    else:
        config = CometConfig(
            chunk_size=args.chunk_size, global_slots=args.global_slots, temp_stride=args.temp_stride,
            temp_capacity=args.temp_capacity if args.temp_stride else 0, adapter_rank=args.adapter_rank,
            gate=not args.no_gate, attention_sink=args.attention_sink,
            gate_bias=tuple(args.gate_bias) if args.gate_bias else None,
        )
        model = CometForCausalLM.from_backbone(args.model or BUNDLED_MODEL, config, dtype=dtype)
    if model.tokenizer is None:
        raise SystemExit("error: the model directory has no tokenizer; the command line needs one to read text")
    return model.eval()


def _read(model, context_ids: list[int], state):
    """Streams text into the memory with a live progress bar; returns (state, seconds).

    `ingest` keeps a full last chunk open until more text arrives; the prompt always follows here, so that chunk
    is closed now (the same update `generate` would make first), and the time reported covers all the reading.
    """
    import torch

    start = time.perf_counter()
    if context_ids:
        with torch.inference_mode():
            state = model.ingest(torch.tensor([context_ids]), state, progress=True)
            if int(state.pending_len.max()) == model.comet_config.chunk_size:
                state = model.close_open_chunk(state)
    return state, time.perf_counter() - start


def _generate(model, prompt_ids: list[int], state, args):
    """Generates after the prompt, printing tokens as they come; returns (output, seconds)."""
    import torch
    from transformers import TextStreamer

    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]), memory=state, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, streamer=TextStreamer(model.tokenizer, skip_prompt=True),
            generator=torch.Generator().manual_seed(args.seed), return_dict_in_generate=True,
        )
    print(flush=True)
    return out, time.perf_counter() - start


def _report(read_tokens, read_seconds, prompt_tokens, new_tokens, gen_seconds, memory) -> None:
    lines = []
    if read_tokens:
        lines.append(f"read      {read_tokens:,} tokens in {read_seconds:.1f} s = {read_tokens / read_seconds:,.0f} tokens/s")
    if new_tokens:
        lines.append(
            f"generated {new_tokens} tokens in {gen_seconds:.1f} s = {new_tokens / gen_seconds:,.1f} tokens/s "
            f"(after reading the {prompt_tokens}-token open chunk the answer starts in)"
        )
    lines.append(f"memory    state {memory.nbytes() / 2**20:.1f} MiB (fixed size); peak RSS {peak_rss_mib():,.0f} MiB")
    print("\n".join(lines), file=sys.stderr)


def _split_open_chunk(ids: list[int], chunk_size: int) -> tuple[list[int], list[int]]:
    """Everything before the last (partial or full) chunk is streamed; the last chunk opens the answer."""
    tail = len(ids) % chunk_size or chunk_size
    return ids[:-tail], ids[-tail:]


def cmd_generate(args) -> int:
    from .bundled import encode
    from .state import MemoryState

    if args.prompt is None and args.prompt_file is None:
        raise SystemExit("error: give --prompt TEXT or --prompt-file PATH")
    model = _load_model(args)
    text = args.prompt if args.prompt is not None else open(args.prompt_file, encoding="utf-8").read()
    ids = encode(model.tokenizer, text)
    if not ids:
        raise SystemExit("error: the prompt is empty")
    state = MemoryState.load(args.memory_in) if args.memory_in else model.init_memory(1)
    model.check_memory(state, 1)
    context, prompt = _split_open_chunk(ids, model.comet_config.chunk_size)
    state, read_seconds = _read(model, context, state)
    out, gen_seconds = _generate(model, prompt, state, args)
    if args.memory_out:
        out.memory.save(args.memory_out)
        print(f"memory state saved to {args.memory_out}", file=sys.stderr)
    _report(len(context), read_seconds, len(prompt), out.sequences.shape[1] - len(prompt), gen_seconds, out.memory)
    return 0


def cmd_demo(args) -> int:
    """The main job: passkey retrieval with the shipped adapter or --comet DIR (default), or reading a long
    bundled text and going on (--task continue)."""
    from .bundled import SHIPPED_ADAPTER
    from .model import CONFIG_FILE

    if args.tokens is None:
        args.tokens = DEMO_TOKENS[args.task]
    if args.task == "continue":
        return _demo_continue(args)
    if args.comet is None:
        if not (SHIPPED_ADAPTER / CONFIG_FILE).is_file():
            raise SystemExit(f"error: the shipped passkey adapter is missing ({SHIPPED_ADAPTER}); reinstall cometlm, "
                             "or pass --comet DIR of a trained adapter")
        args.comet = str(SHIPPED_ADAPTER)
    return _demo_passkey(args)


def _demo_passkey(args) -> int:
    import random

    from .evaluation.methods import DEFAULT_PRIME_TOKENS, build_method
    from .evaluation.passkey import EXTRA_TOKENS
    from .training.tasks import passkey_matches, passkey_sample

    model = _load_model(args)
    config = model.comet_config
    rng = random.Random(args.seed)
    depth = args.depth / 100 if args.depth is not None else rng.random()
    sample = passkey_sample(model.tokenizer, args.tokens, depth, rng)
    print(
        f"CoMeT demo: SmolLM2-135M-Instruct + the CoMeT adapter {args.comet} (C={config.chunk_size}, "
        f"M={config.global_slots}, s={config.temp_stride}, K={config.queue_size}) reads a {len(sample.prompt_ids):,}-"
        f"token passkey prompt chunk by chunk at constant memory, the key at {depth:.0%} depth, and answers "
        f'"{model.tokenizer.decode(sample.question_ids).strip()}"',
        file=sys.stderr, flush=True,
    )
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        generated, _ = build_method("comet", model, "primed", DEFAULT_PRIME_TOKENS).answer(
            sample.prompt_ids, len(sample.question_ids), len(sample.answer_ids) + EXTRA_TOKENS,
            model.tokenizer.eos_token_id, progress=True,
        )
    seconds = time.perf_counter() - start
    text = model.tokenizer.decode(generated, skip_special_tokens=True)
    found = next(iter(re.findall(r"\d+", text)), "(no digits)")
    correct = passkey_matches(text, sample.answer)
    print(f"answer    {text.strip()!r}\nkey found {found}\ntruth     {sample.answer}  ->  "
          f"{'correct' if correct else 'WRONG'}")
    n = len(sample.prompt_ids)
    print(f"read + answer {n:,} tokens in {seconds:.1f} s = {n / seconds:,.0f} tokens/s; peak RSS "
          f"{peak_rss_mib():,.0f} MiB", file=sys.stderr)
    return 0


def _demo_continue(args) -> int:
    from .corpora import corpus_tokens

    model = _load_model(args)
    config = model.comet_config
    ids = corpus_tokens(args.corpus, model.tokenizer, args.tokens).tolist()
    print(
        f"CoMeT demo: SmolLM2-135M-Instruct + CoMeT (C={config.chunk_size}, M={config.global_slots}, "
        f"s={config.temp_stride}, K={config.queue_size}) reads the first {len(ids):,} tokens of the {args.corpus} "
        "corpus chunk by chunk at constant memory, then continues the text.",
        file=sys.stderr,
    )
    if not args.comet:
        print("note: the memory modules are untrained (identity adapters, no fine-tuning), so this shows the "
              "mechanics and cost, not long-range recall.", file=sys.stderr)
    context, prompt = _split_open_chunk(ids, config.chunk_size)
    state, read_seconds = _read(model, context, model.init_memory(1))
    print("\n--- the text read ends with ---\n" + model.tokenizer.decode(prompt[-80:]) + "\n--- continuation ---",
          file=sys.stderr, flush=True)
    out, gen_seconds = _generate(model, prompt, state, args)
    _report(len(context), read_seconds, len(prompt), out.sequences.shape[1] - len(prompt), gen_seconds, out.memory)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cometlm",
        description="CoMeT: read inputs of any length with a pre-trained LLM at constant memory and linear time.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = sub.add_parser(
        "generate", help="read a prompt of any length through the memory and continue it",
        description="Streams a prompt of any length through CoMeT's memory, then generates. The prompt's last "
        "partial chunk stays in the open chunk the answer is generated in.",
    )
    source = generate.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the prompt text")
    source.add_argument("--prompt-file", help="a UTF-8 text file holding the prompt (any length)")
    generate.add_argument("--memory-in", metavar="PATH", help="continue from a saved memory state (.safetensors)")
    generate.add_argument("--memory-out", metavar="PATH", help="save the memory state after generation (atomic write)")
    _add_model_options(generate)
    _add_generation_options(generate, max_new_tokens=64)
    generate.set_defaults(run=cmd_generate)

    demo = sub.add_parser(
        "demo", help="the main job: SmolLM2 + CoMeT reads a long input at constant memory and answers",
        description="The main job on bundled defaults. --task passkey: SmolLM2-135M-Instruct with the CoMeT adapter "
        "shipped in this package (or --comet DIR) reads a 32k-token passkey prompt chunk by chunk with a live "
        "progress bar, answers with the key, and prints the key found, the truth, tokens/s and peak memory. "
        "--task continue: streams a long bundled text (the KJV Bible or Paul Graham's essays) and continues it.",
    )
    demo.add_argument("--task", choices=("passkey", "continue"), default=DEFAULT_DEMO_TASK,
                      help="passkey: retrieve a random key; continue: read a bundled text and go on "
                      f"(default {DEFAULT_DEMO_TASK})")
    demo.add_argument("--tokens", type=int, default=None,
                      help="prompt length in tokens (default: " + ", ".join(f"{t} {n}" for t, n in DEMO_TOKENS.items()) + ")")
    demo.add_argument("--depth", type=float, default=None,
                      help="passkey: where the key sits, in percent of the prompt (default: random)")
    demo.add_argument("--corpus", choices=("bible", "essays"), default="bible",
                      help="continue: which bundled text (default bible)")
    _add_model_options(demo)
    _add_generation_options(demo, max_new_tokens=48)
    demo.set_defaults(run=cmd_demo)

    from .evaluation.commands import register as register_eval
    from .evaluation.lm_eval_cli import register as register_lm_eval
    from .training.trainer import register as register_train

    register_train(sub)
    register_eval(sub)
    register_lm_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
