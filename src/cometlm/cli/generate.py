"""`cometlm generate`: read a prompt of any length through the memory, then continue it."""

from __future__ import annotations

import sys
import time

from cometlm.runtime import peak_rss_mib

from .options import add_generation_options, add_model_options, load_model, use_default_adapter


def register(sub) -> None:
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
    add_model_options(generate, default_adapter=True)
    add_generation_options(generate, max_new_tokens=64)
    generate.set_defaults(run=cmd_generate)


def cmd_generate(args) -> int:
    from cometlm.bundled import encode
    from cometlm.state import MemoryState, model_fingerprint

    from pathlib import Path

    if args.prompt is None and args.prompt_file is None:
        raise SystemExit("error: give --prompt TEXT or --prompt-file PATH")
    # everything that can be checked before the model loads and reads the prompt
    text = args.prompt if args.prompt is not None else Path(args.prompt_file).read_text(encoding="utf-8")
    if not text:
        raise SystemExit("error: the prompt is empty")
    memory_in = MemoryState.load(args.memory_in) if args.memory_in else None
    if args.memory_out:
        out_path = Path(args.memory_out)
        if out_path.is_dir() or not out_path.parent.is_dir():
            raise SystemExit(f"error: --memory-out {args.memory_out}: give a file in an existing folder")
    if use_default_adapter(args):
        print(f"CoMeT adapter: {Path(args.comet).name} (the default; --comet DIR|NAME for another, --model for an "
              "untrained memory)", file=sys.stderr)
    model = load_model(args)
    ids = encode(model.tokenizer, text)
    if not ids:
        raise SystemExit("error: the prompt is empty")
    state = memory_in if memory_in is not None else model.init_memory(1)
    model.check_memory(state, 1)
    fingerprint = model_fingerprint(model)
    written_by = MemoryState.read_notes(args.memory_in).get("model") if memory_in is not None else None
    if written_by is not None and written_by != fingerprint:  # states saved before the notes said have none
        raise ValueError(f"--memory-in {args.memory_in} was written by another model (fingerprint {written_by}; "
                         f"this one's is {fingerprint}): its memories mean nothing to this one")
    context, prompt = split_open_chunk(ids, model.comet_config.chunk_size)
    state, read_seconds = read_timed(model, context, state)
    out, gen_seconds = generate_printed(model, prompt, state, args)
    if args.memory_out:
        out.memory.save(args.memory_out, notes={"model": fingerprint})
        print(f"memory state saved to {args.memory_out}", file=sys.stderr)
    report(len(context), read_seconds, len(prompt), out.sequences.shape[1] - len(prompt), gen_seconds, out.memory)
    return 0


def split_open_chunk(ids: list[int], chunk_size: int) -> tuple[list[int], list[int]]:
    """Everything before the last (partial or full) chunk is streamed; the last chunk opens the answer."""
    tail = len(ids) % chunk_size or chunk_size
    return ids[:-tail], ids[-tail:]


def read_timed(model, context_ids: list[int], state):
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


def generate_printed(model, prompt_ids: list[int], state, args):
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


def report(read_tokens, read_seconds, prompt_tokens, new_tokens, gen_seconds, memory) -> None:
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
