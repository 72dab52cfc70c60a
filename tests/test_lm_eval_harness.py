"""The lm-evaluation-harness backend: lm-eval runs offline on local tasks, and its numbers equal the model's own."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_text_model
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model
from lm_eval.tasks import TaskManager

from cometlm import CometForCausalLM
from cometlm.cli import main
from cometlm.evaluation import streaming
from cometlm.evaluation.harness import CometLM
from cometlm.cli.lm_eval import harness_argv

C = 16  # chunk size of the tiny model: the longer fixture contexts span several chunks
SENTENCE = "The quick brown fox jumps over the lazy dog. "
DOCS = [
    {"context": SENTENCE * k + "Question: what jumps?", "choices": ["the fox", "the dog", "a cat"], "label": 0,
     "answer": "fox", "text": "Once upon a time, " * (3 * k + 1)}
    for k in (1, 4, 9)
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """A tiny random CoMeT model saved with SmolLM2's tokenizer, and three local tasks over one JSONL file."""
    root = tmp_path_factory.mktemp("harness")
    tiny_text_model(C, tokenizer).save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = root / "tasks"
    tasks.mkdir()
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root}/data.jsonl\n"
              f"  cache_dir: {root}/hf-datasets\ntest_split: test\n")
    (tasks / "mc.yaml").write_text(
        "task: comet_mc\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n")
    (tasks / "ppl.yaml").write_text(
        "task: comet_ppl\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n")
    (tasks / "gen.yaml").write_text(
        "task: comet_gen\n" + common + "output_type: generate_until\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n', '.']\n  max_gen_toks: 7\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    model = CometForCausalLM.from_pretrained(root / "model").eval()
    return root, model, tokenizer


def log_softmax_forward(model, ids, chunk_sizes=None):
    with torch.inference_mode():
        plan = None if chunk_sizes is None else torch.tensor([chunk_sizes])
        return F.log_softmax(model(torch.tensor([ids]), chunk_sizes=plan).logits[0].float(), dim=-1)


def reference_loglikelihood(model, tokenizer, context, continuation, chunk_sizes=None):
    """log p(continuation | context) and greedy-ness from full-sequence forward logits, tokenized as lm-eval does
    for causal models (the whole text, split after the context's tokens)."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    logp = log_softmax_forward(model, whole, chunk_sizes)[n - 1 : len(whole) - 1]
    target = torch.tensor(whole[n:])
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all()), len(whole)


def test_lm_eval_runs_offline_and_equals_the_model(setup):
    root, model, tokenizer = setup
    results = simple_evaluate(
        model="cometlm", model_args=f"comet={root / 'model'},layout=fixed",
        tasks=["comet_mc", "comet_ppl", "comet_gen"],
        task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False), log_samples=True,
        device="cpu", batch_size=2,
    )
    samples = results["samples"]

    correct = 0
    for sample in samples["comet_mc"]:
        scores = []
        for (context, continuation), ((logprob, greedy),) in zip(sample["arguments"], sample["resps"]):
            want, want_greedy, n = reference_loglikelihood(model, tokenizer, context, continuation)
            assert logprob == pytest.approx(want, abs=1e-4) and greedy == want_greedy
            scores.append(logprob)
        assert n > 4 * C or sample["doc_id"] < 2  # the last context spans many chunks
        correct += scores.index(max(scores)) == sample["target"]
    assert results["results"]["comet_mc"]["acc,none"] == pytest.approx(correct / len(DOCS))

    for sample in samples["comet_ppl"]:
        ((text,),) = sample["arguments"]
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [prefix] + tokenizer(text, add_special_tokens=False)["input_ids"]
        logp = log_softmax_forward(model, ids)[:-1].gather(1, torch.tensor(ids[1:])[:, None])
        assert sample["resps"][0][0] == pytest.approx(float(logp.sum()), abs=1e-3)

    for sample in samples["comet_gen"]:
        ((context, _),) = sample["arguments"]
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=7, eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        assert sample["resps"][0][0] == text.split("\n")[0].split(".")[0]  # cut at the first stop sequence

    config = results["config"]
    assert config["cometlm_layout"] == "fixed" and config["cometlm_config"]["chunk_size"] == C
    assert config["cometlm_command"] == shlex.join(sys.argv) and config["cometlm_version"]
    assert config["random_seed"] is not None and config["torch_seed"] is not None  # the harness records its seeds


@pytest.mark.parametrize("reading", ["chunk_size=1024,global_slots=0,temp_stride=0", "method=full"])
def test_the_backbone_read_whole_equals_the_harness_own_hugging_face_backend(setup, reading):
    """Within one chunk and with both memories off CoMeT is the backbone, and method=full is the backbone itself,
    so every number must equal what lm-eval's reference backend (`hf`) computes for the same backbone: same
    tokenization, prefix and stops."""
    root, _, _ = setup
    backbone = str(root / "model" / "backbone")
    tasks = ["comet_mc", "comet_ppl", "comet_gen"]
    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    runs = [simple_evaluate(model=name, model_args=args, tasks=tasks, task_manager=manager, log_samples=True,
                            device="cpu") for name, args in (
        ("hf", f"pretrained={backbone},dtype=float32"),
        ("cometlm", f"pretrained={backbone},{reading}"),
    )]
    for task in tasks:
        hf, comet = (sorted(run["samples"][task], key=lambda s: s["doc_id"]) for run in runs)
        for a, b in zip(hf, comet, strict=True):
            assert a["arguments"] == b["arguments"]
            for (x,), (y,) in zip(a["resps"], b["resps"], strict=True):
                if task == "comet_gen":
                    assert x == y and x.strip()  # the same non-empty text, cut at the same stop sequence
                elif task == "comet_ppl":
                    assert x == pytest.approx(y, abs=1e-3)
                else:
                    assert x[0] == pytest.approx(y[0], abs=1e-4) and x[1] == y[1]


def test_truncated_equals_the_harness_own_hugging_face_backend_with_the_same_max_length(setup):
    """`hf` with max_length=W cuts a loglikelihood input to its last W tokens and a prompt to its last W - max_gen_toks,
    as truncation with window=W must: every number and text the same, on contexts longer than the window."""
    root, _, tokenizer = setup
    backbone = str(root / "model" / "backbone")
    tasks = ["comet_mc", "comet_gen"]
    manager = TaskManager(include_path=str(root / "tasks"), include_defaults=False)
    hf, ours = (simple_evaluate(model=name, model_args=args, tasks=tasks, task_manager=manager, log_samples=True,
                                device="cpu") for name, args in (
        ("hf", f"pretrained={backbone},dtype=float32,max_length=24"),
        ("cometlm", f"pretrained={backbone},method=truncated,window=24"),
    ))
    longest = max(len(tokenizer(s["arguments"][0][0], add_special_tokens=False)["input_ids"])
                  for s in ours["samples"]["comet_mc"])
    assert longest > 3 * 24
    for task in tasks:
        for a, b in zip(*(sorted(run["samples"][task], key=lambda s: s["doc_id"]) for run in (hf, ours)), strict=True):
            for (x,), (y,) in zip(a["resps"], b["resps"], strict=True):
                if task == "comet_gen":
                    assert x == y
                else:
                    assert x[0] == pytest.approx(y[0], abs=1e-4) and x[1] == y[1]
    assert ours["config"]["cometlm_method"] == "truncated" and ours["config"]["cometlm_window"] == 24


def test_sliding_window_reads_through_its_bounded_cache(setup, monkeypatch):
    """With blocks of 16 tokens and a window of 8, the longer inputs evict tokens: every number and text equals
    what the method gives in `cometlm eval` (whose tests check StreamingLLM's definition), and differs from full
    attention where tokens were evicted."""
    from cometlm.evaluation import methods
    from cometlm.evaluation.methods import sliding_window

    root, model, tokenizer = setup
    monkeypatch.setattr(sliding_window, "READ_BLOCK", 16)
    results = simple_evaluate(
        model="cometlm", model_args=f"comet={root / 'model'},method=sliding-window,window=8,sink_tokens=2",
        tasks=["comet_mc", "comet_ppl", "comet_gen"], log_samples=True, device="cpu",
        task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False),
    )
    reader, full = methods.build_method("sliding-window", model, window=8, sink_tokens=2), methods.build_method(
        "full", model)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    evicted = 0
    for sample in results["samples"]["comet_mc"]:
        for (context, continuation), ((logprob, greedy),) in zip(sample["arguments"], sample["resps"]):
            whole, n = encode(context + continuation), len(encode(context))
            with torch.inference_mode():
                want = -float(reader.token_losses(whole)[n - 1 :].sum())
                unbounded = -float(full.token_losses(whole)[n - 1 :].sum())
            assert logprob == pytest.approx(want, abs=1e-4)
            evicted += len(whole) > 2 + 8 + 16 and abs(logprob - unbounded) > 1e-3
    assert evicted >= 3  # the longer contexts lost tokens, and it shows
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for sample in results["samples"]["comet_ppl"]:
        ((text,),) = sample["arguments"]
        with torch.inference_mode():
            want = -float(reader.token_losses([prefix, *encode(text)]).sum())
        assert sample["resps"][0][0] == pytest.approx(want, abs=1e-3)
    for sample in results["samples"]["comet_gen"]:
        ((context, _),) = sample["arguments"]
        with torch.inference_mode():
            new_ids, _ = reader.answer(encode(context), 0, 7, tokenizer.eos_token_id, False)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        assert sample["resps"][0][0] == text.split("\n")[0].split(".")[0]
    config = results["config"]
    assert config["cometlm_window"] == 8 and config["cometlm_sink_tokens"] == 2 and config["cometlm_layout"] is None


def test_primed_layout_reads_each_context_once_and_equals_forward_with_that_chunking(setup, monkeypatch):
    root, model, tokenizer = setup
    lm = get_model("cometlm").create_from_arg_string(f"comet={root / 'model'},prime_tokens=5", {"device": "cpu"})
    reads, read_context = [], streaming.read_context
    monkeypatch.setattr(streaming, "read_context",
                        lambda m, ids, *a, **k: reads.append(ids) or read_context(m, ids, *a, **k))
    requests = [Instance("loglikelihood", doc, (doc["context"], " " + choice), i)
                for doc in DOCS for i, choice in enumerate(doc["choices"])]
    got = lm.loglikelihood(requests, disable_tqdm=True)
    assert len(reads) == len(DOCS)  # the three choices of a context share one read
    for request, (logprob, greedy) in zip(requests, got):
        context, continuation = request.args
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        tail = min(5, n)  # 5 context tokens in the open chunk: room for the longest choice (3 tokens) is left
        first = (n - tail) % C
        plan = ([first] if first else []) + [C] * ((n - tail) // C) + [len(whole) - n + tail]
        want, want_greedy, _ = reference_loglikelihood(model, tokenizer, context, continuation, plan)
        assert logprob == pytest.approx(want, abs=1e-4) and greedy == want_greedy


@pytest.mark.parametrize("layout", ["primed", "fixed"])
def test_greedy_generations_read_and_decode_as_batches_with_the_answers_they_get_alone(setup, layout):
    """Requests of many lengths: the greedy ones with the same stop sequences and limit are answered batch_size at a
    time and get exactly the text they get one at a time (as `model.generate` gives it, cut at the first stop
    sequence); a sampled one is answered alone. Each stream stops at its own stop sequence."""
    root, model, tokenizer = setup
    contexts = [SENTENCE * k + "Question: what jumps?" for k in (1, 6, 2, 9, 3)] + ["Once upon a time, " * 7]
    # " micro" is what this tiny random model generates after a few "?" with the fixed layout: it ends the streams
    # at different steps there (none with the primed layout)
    kwargs = [{"until": [" micro"], "max_gen_toks": 9, "do_sample": False}] * 4 + [
        {"until": ["fox"], "max_gen_toks": 5}, {"until": ["."], "max_gen_toks": 9, "do_sample": False}]
    requests = [Instance("generate_until", {}, (c, k), i) for i, (c, k) in enumerate(zip(contexts, kwargs))]
    answers = {}
    for batch_size in (1, 3):
        lm = get_model("cometlm").create_from_arg_string(f"comet={root / 'model'},layout={layout}",
                                                         {"device": "cpu", "batch_size": batch_size})
        calls = []
        generate = lm.model.generate
        lm.model.generate = lambda ids, **kw: calls.append(ids.shape[0]) or generate(ids, **kw)
        answers[batch_size] = lm.generate_until(requests, disable_tqdm=True)
        if batch_size == 3:
            assert sorted(calls) == [1, 1, 1, 3]  # 4 alike (3 + 1), the two with other stops or limits alone
    assert answers[1] == answers[3]
    # a stream that meets its stop sequence ends on that step (the rest of its row is EOS), the others go on
    prompts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts[:4]]
    with torch.inference_mode():
        rows = lm._generate_batch(prompts, [" micro"], 9, {}, progress=False)
    padded = 0
    for row in rows:
        steps = [k for k in range(1, len(row) + 1) if " micro" in tokenizer.decode(row[:k])]
        end = steps[0] if steps else len(row)
        assert set(row[end:]) <= {tokenizer.eos_token_id} and tokenizer.eos_token_id not in row[:end]
        padded += len(row) - end
    assert padded > 0 or layout == "primed"
    for context, k, got in zip(contexts, kwargs, answers[3]):
        if layout == "primed":
            break  # "fixed" reads as `model.generate` does, so the first answers are checked against it there
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=k["max_gen_toks"],
                                 eos_token_id=tokenizer.eos_token_id)
        text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        for stop in k["until"]:
            text = text.split(stop)[0]
        assert got == text


def test_bad_model_args_are_refused(setup):
    root, _, _ = setup
    with pytest.raises(ValueError, match="unknown argument"):
        CometLM(comet=str(root / "model"), layuot="fixed")
    with pytest.raises(ValueError, match="layout must be one of"):
        CometLM(comet=str(root / "model"), layout="sideways")
    with pytest.raises(ValueError, match="'auto' is not supported"):
        CometLM(comet=str(root / "model"), batch_size="auto")
    with pytest.raises(ValueError, match="method must be one of comet, no-memory, full, truncated, sliding-window"):
        CometLM(comet=str(root / "model"), method="rag")
    with pytest.raises(ValueError, match="sink_tokens must be an integer >= 0"):
        CometLM(comet=str(root / "model"), method="sliding-window", sink_tokens=-1)
    with pytest.raises(ValueError, match="window and sink_tokens apply to the methods full, truncated and "
                                         "sliding-window, not comet"):
        CometLM(comet=str(root / "model"), window=512)
    with pytest.raises(ValueError, match="prime_tokens applies to the methods comet and no-memory, not truncated"):
        CometLM(comet=str(root / "model"), method="truncated", prime_tokens=8)
    with pytest.raises(ValueError, match="model_args: sliding-window attention .* window=, sink_tokens="):
        CometLM(comet=str(root / "model"), method="sliding-window", window=1000)
    full = CometLM(comet=str(root / "model"), method="full", window=10)
    short, long = (Instance("loglikelihood", {}, (text, " m"), 0) for text in ("a b", "a b c d e f g h i j k l"))
    scored = []
    full.baseline.continuation_scores = lambda *args: scored.append(args)  # must not be reached
    with pytest.raises(ValueError, match="method=full: loglikelihood request 1: .*exceeds the backbone's window of "
                                         "10 tokens.*method="):
        full.loglikelihood([short, long], disable_tqdm=True)
    assert scored == []  # every request is checked before the first is scored
    sampled = Instance("generate_until", {}, ("a b c", {"until": ["."], "do_sample": True, "temperature": 0.7}), 0)
    with pytest.raises(ValueError, match="method=full: generate_until request 0: this method generates greedily"):
        full.generate_until([sampled], disable_tqdm=True)


def test_the_harness_command_line(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    # The harness indexes its thousands of built-in task files first (15-60 s on this machine); only the local
    # tasks are needed here.
    index = TaskManager.__init__
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *a, include_defaults=True, **k: index(
        self, *a, include_defaults=False, **k))
    assert harness_argv(["--tasks", "x"]) == ["--model", "cometlm", "--tasks", "x"]
    assert harness_argv(["run", "--tasks", "x"]) == ["run", "--model", "cometlm", "--tasks", "x"]
    assert harness_argv(["--model", "hf", "--tasks", "x"]) == ["--model", "hf", "--tasks", "x"]
    assert harness_argv(["ls", "tasks"]) == ["ls", "tasks"] and harness_argv(["--help"]) == ["--help"]

    out = tmp_path / "results"
    argv = ["lm-eval", "--model_args", f"comet={root / 'model'}", "--tasks", "comet_mc", "--include_path",
            str(root / "tasks"), "--device", "cpu", "--output_path", str(out), "--use_cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    (written,) = out.rglob("results_*.json")
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "cometlm" and results["config"]["cometlm_layout"] == "primed"
    assert "comet_mc" in results["results"] and "acc,none" in results["results"]["comet_mc"]
    assert (tmp_path / "cache_rank0.db").is_file()  # the request cache a rerun answers from


def test_plain_lm_eval_runs_the_backend_and_python_start_up_stays_light(setup, tmp_path):
    """`lm_eval --model cometlm`, the harness's own script: the installed .pth hook registers the backend when
    lm-eval loads (0.4.13 has no plugin discovery), and a Python that never imports lm-eval loads nothing of ours."""
    root, model, tokenizer = setup
    bare = subprocess.run([sys.executable, "-c", "import sys; print(sorted({'torch', 'cometlm', 'lm_eval'} & set("
                           "sys.modules)))"], capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == "[]"

    out = tmp_path / "results"
    script = Path(sys.executable).with_name("lm_eval")
    subprocess.run([str(script), "--model", "cometlm", "--model_args", f"comet={root / 'model'}", "--tasks",
                    "comet_mc", "--include_path", str(root / "tasks"), "--device", "cpu", "--output_path", str(out)],
                   check=True, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    (written,) = out.rglob("results_*.json")
    results = json.loads(written.read_text())
    assert results["config"]["model"] == "cometlm"
    direct = simple_evaluate(model="cometlm", model_args=f"comet={root / 'model'}", tasks=["comet_mc"], device="cpu",
                             task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False))
    assert results["results"]["comet_mc"]["acc,none"] == direct["results"]["comet_mc"]["acc,none"]


@pytest.mark.parametrize("reading", ["chunk_size=1024,global_slots=0,temp_stride=0", "method=full"])
def test_generation_stops_at_every_end_id_the_generation_config_lists(setup, tmp_path, reading):
    """Instruct models (Llama 3, Qwen2.5) list end-of-sequence ids in generation_config besides the tokenizer's;
    lm-eval's `hf` backend and `model.generate` stop at each of them, so must every method here."""
    import shutil

    root, _, tokenizer = setup
    backbone = tmp_path / "backbone"
    shutil.copytree(root / "model" / "backbone", backbone)
    context, options = "a b c d e f", {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}
    request = [Instance("generate_until", {}, (context, options), 0)]
    free = get_model("hf").create_from_arg_string(f"pretrained={backbone},dtype=float32", {"device": "cpu"})
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        new = free.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=0)[0, len(ids):].tolist()
    # a second end id: the first token it generates that it did not generate before (not its first token)
    stop = next((k for k in range(1, len(new)) if new[k] not in new[:k]), None)
    assert stop is not None, f"the tiny model repeats one token after {context!r}: {new}"
    assert tokenizer.eos_token_id not in new[: stop + 1]
    config = json.loads((backbone / "generation_config.json").read_text())
    config["eos_token_id"] = [tokenizer.eos_token_id, new[stop]]
    (backbone / "generation_config.json").write_text(json.dumps(config))
    hf = get_model("hf").create_from_arg_string(f"pretrained={backbone},dtype=float32", {"device": "cpu"})
    ours = get_model("cometlm").create_from_arg_string(f"pretrained={backbone},{reading}", {"device": "cpu"})
    expected = hf.generate_until(request, disable_tqdm=True)
    assert expected == [tokenizer.decode(new[: stop + 1])]  # the end id is not a special token: its text stays
    assert ours.generate_until(request, disable_tqdm=True) == expected


def test_the_repetition_penalty_counts_the_context_read_into_memory(setup):
    """With the "fixed" layout an answer is `model.generate` over the whole context, so a repetition penalty must
    count the context's tokens that were read into memory before the open chunk, as lm-eval's `hf` backend counts
    the whole prompt; one at a time and two contexts of different lengths batched."""
    root, model, tokenizer = setup
    contexts = [" microbiology Mapper" + SENTENCE * k + "Question: what jumps?" for k in (3, 5)]
    options = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False, "repetition_penalty": 1.5}
    requests = [Instance("generate_until", {}, (c, options), i) for i, c in enumerate(contexts)]
    want = []
    for context in contexts:
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        assert len(ids) > 2 * C  # the penalised start is read into memory before the open chunk
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                                 repetition_penalty=1.5)
        want.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).split("\n\n")[0])
    for batch_size in (1, 2):
        lm = get_model("cometlm").create_from_arg_string(f"comet={root / 'model'},layout=fixed",
                                                         {"device": "cpu", "batch_size": batch_size})
        assert lm.generate_until(requests, disable_tqdm=True) == want
