"""Save/load round trips reproduce outputs exactly; bad files give clear errors and nothing half-written."""

import json

import pytest
import torch

from cometlm import CometForCausalLM, MemoryState
from conftest import SMALL, assert_states_equal, random_ids, randomize_memory, tiny_backbone, tiny_comet


def saved_base(tmp_path, seed=0, name="base"):
    path = tmp_path / name
    tiny_backbone("llama", seed).save_pretrained(path)
    return path


@torch.no_grad()
def test_an_adapter_trained_on_a_bfloat16_base_loads_in_float32_and_back(tmp_path):
    """Training holds the frozen base in bfloat16; the adapter it saves must load onto the same base in float32 (and
    the reverse). The decoder weights' fingerprint sums rows; with entries as large as a real model's sums these
    differ by more than the tolerance between the two precisions unless they are taken on bfloat16-rounded values."""
    base = tiny_backbone("llama", 0)
    for layer in base.model.layers:  # entries large enough that bfloat16 rounding moves a row's sum visibly
        layer.mlp.up_proj.weight.mul_(300.0)
    base.save_pretrained(tmp_path / "base")
    for saved, loaded in ((torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)):
        comet = CometForCausalLM.from_backbone(str(tmp_path / "base"), SMALL, dtype=saved)
        comet.save_pretrained(tmp_path / f"adapter-{saved}", adapter=True)
        back = CometForCausalLM.from_pretrained(tmp_path / f"adapter-{saved}", dtype=loaded)
        assert back.backbone.dtype == loaded
    # an adapter saved before session 42 recorded the sums of the entries as held (here float32): still accepted
    legacy = tmp_path / f"adapter-{torch.float32}" / "comet_config.json"
    meta = json.loads(legacy.read_text())
    meta["base_weights"] = CometForCausalLM.from_backbone(str(tmp_path / "base"), SMALL).backbone.weights_fingerprint(
        rounded=False)
    assert meta["base_weights"] != comet.backbone.weights_fingerprint()  # the two ways differ on this base
    legacy.write_text(json.dumps(meta))
    CometForCausalLM.from_pretrained(legacy.parent)
    other = tiny_backbone("llama", 0)  # the same base with one decoder weight changed is still refused
    for layer in other.model.layers:
        layer.mlp.up_proj.weight.mul_(300.0)
    other.model.layers[0].mlp.up_proj.weight[0].add_(1.0)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="load it onto the base it was trained on"):
        CometForCausalLM.from_pretrained(tmp_path / f"adapter-{torch.float32}", base_model=str(tmp_path / "other"))


@torch.no_grad()
def test_full_model_round_trip(tmp_path, family):
    comet = tiny_comet(family)
    ids = random_ids(2, 21)
    comet.save_pretrained(tmp_path / "full")
    loaded = CometForCausalLM.from_pretrained(tmp_path / "full")
    assert torch.equal(loaded(ids).logits, comet(ids).logits)


@torch.no_grad()
def test_adapter_round_trip_is_small_and_checks_its_base(tmp_path):
    base = saved_base(tmp_path)
    comet = randomize_memory(CometForCausalLM.from_backbone(str(base), SMALL))
    ids = random_ids(1, 30)
    comet.save_pretrained(tmp_path / "adapter", adapter=True)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert files == {"comet_config.json", "comet.safetensors"}
    meta = json.loads((tmp_path / "adapter" / "comet_config.json").read_text())
    assert meta["kind"] == "adapter" and meta["base_model"] == str(base)
    loaded = CometForCausalLM.from_pretrained(tmp_path / "adapter")
    assert torch.equal(loaded(ids).logits, comet(ids).logits)
    other = saved_base(tmp_path, seed=1, name="other")
    with pytest.raises(ValueError, match="load it onto the base it was trained on"):
        CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=str(other))
    # A lower-precision load of the same base rounds its fingerprint, and is still that base.
    half = CometForCausalLM.from_pretrained(tmp_path / "adapter", dtype=torch.bfloat16)
    assert half.backbone.describe()["fingerprint"] != meta["base"]["fingerprint"]
    assert {p.dtype for p in half.backbone_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half.memory.parameters()} == {torch.float32}  # CoMeT's own weights stay float32
    with pytest.raises(ValueError, match="load it onto the base it was trained on"):
        CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=str(other), dtype=torch.bfloat16)
    # a fine-tune of the base that kept its embeddings (a merged LoRA, say) is another base too
    tuned = tiny_backbone("llama", 0)
    with torch.no_grad():
        for layer in tuned.model.layers:
            layer.self_attn.q_proj.weight.add_(0.05 * torch.randn_like(layer.self_attn.q_proj.weight))
    tuned.save_pretrained(tmp_path / "tuned")
    with pytest.raises(ValueError, match="load it onto the base it was trained on"):
        CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=str(tmp_path / "tuned"))


def test_a_centred_gate_saves_and_loads_its_center(tmp_path):
    """The center is a buffer of the adapter: saved, loaded (in float32 under a bfloat16 backbone too), and part of
    what the model computes; an adapter without it loads as before."""
    import dataclasses

    base = saved_base(tmp_path)
    config = dataclasses.replace(SMALL, gate_centered=True)
    comet = randomize_memory(CometForCausalLM.from_backbone(str(base), config))
    with torch.no_grad():
        for index, layer in enumerate(comet.memory.layers):
            layer.global_memory.gate_center.copy_(torch.randn(layer.global_memory.gate_center.shape) + index)
    comet.save_pretrained(tmp_path / "centred", adapter=True)
    loaded = CometForCausalLM.from_pretrained(tmp_path / "centred")
    assert loaded.comet_config.gate_centered
    ids = random_ids(1, 3 * SMALL.chunk_size + 5)
    assert_states_equal(loaded.ingest(ids), comet.ingest(ids))
    half = CometForCausalLM.from_pretrained(tmp_path / "centred", dtype=torch.bfloat16)
    assert {layer.global_memory.gate_center.dtype for layer in half.memory.layers} == {torch.float32}
    uncentred = CometForCausalLM.from_backbone(str(base), SMALL)
    uncentred.memory.load_state_dict({k: v for k, v in comet.memory.state_dict().items() if "gate_center" not in k})
    assert not torch.equal(uncentred.ingest(ids).layers[0].global_state, comet.ingest(ids).layers[0].global_state)


@torch.no_grad()
def test_a_model_with_lora_round_trips_as_adapter_and_as_full_model(tmp_path):
    """LoRA goes to its own file both ways; the full model's backbone is the plain model, LoRA not folded in."""
    from transformers import AutoModelForCausalLM

    from cometlm.lora import apply_lora, has_lora

    from cometlm.saving import LORA_FILE

    base = saved_base(tmp_path)
    comet = apply_lora(randomize_memory(CometForCausalLM.from_backbone(str(base), SMALL)))
    for name, param in comet.named_parameters():
        if ".lora_B." in name:  # peft starts B at zero, which would make the LoRA invisible in the outputs
            param.normal_(std=0.5)
    ids = random_ids(1, 30)
    want = comet(ids).logits
    for kind in ("adapter", "full"):
        comet.save_pretrained(tmp_path / kind, adapter=kind == "adapter")
        assert (tmp_path / kind / LORA_FILE).is_file()
        loaded = CometForCausalLM.from_pretrained(tmp_path / kind)
        assert has_lora(loaded) and torch.equal(loaded(ids).logits, want), kind
    plain, info = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "backbone", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    original = AutoModelForCausalLM.from_pretrained(base)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), original.state_dict().values()))


@torch.no_grad()
def test_a_loaded_base_is_used_as_it_is(tmp_path):
    """A loaded base model takes an adapter's LoRA into itself, so a second adapter loaded onto the same module is
    refused (it would read with both, and change the first model); a dtype other than the module's is refused
    instead of silently ignored."""
    import copy

    from transformers import AutoModelForCausalLM

    from cometlm.lora import apply_lora

    base = saved_base(tmp_path)
    comet = apply_lora(randomize_memory(CometForCausalLM.from_backbone(str(base), SMALL)))
    for name, param in comet.named_parameters():
        if ".lora_B." in name:
            param.normal_(std=0.5)
    comet.save_pretrained(tmp_path / "adapter", adapter=True)
    module = AutoModelForCausalLM.from_pretrained(base)
    spare = copy.deepcopy(module)
    ids = random_ids(1, 30)
    first = CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=module)
    want = first(ids).logits
    with pytest.raises(ValueError, match="already carries LoRA.*its own copy of the base"):
        CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=module)
    assert torch.equal(first(ids).logits, want)
    assert torch.equal(CometForCausalLM.from_pretrained(tmp_path / "adapter", base_model=spare)(ids).logits, want)
    with pytest.raises(ValueError, match="dtype=torch.bfloat16 applies to a backbone loaded here.*cast it first"):
        CometForCausalLM.from_backbone(AutoModelForCausalLM.from_pretrained(base), SMALL, dtype=torch.bfloat16)
    assert CometForCausalLM.from_backbone(module.to(torch.bfloat16), SMALL).backbone.dtype == torch.bfloat16


def test_a_crafted_adapter_is_refused_before_its_sizes_are_built(tmp_path):
    """Sizes an adapter's files claim are checked against each other before anything of those sizes is made (a
    million memory slots, a LoRA of rank 10^6: gigabytes); a bad config, a tensor of another shape and weights that
    are not finite numbers are ValueErrors."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cometlm.lora import apply_lora
    from cometlm.saving import CONFIG_FILE, LORA_FILE, WEIGHTS_FILE

    base = saved_base(tmp_path)
    comet = apply_lora(randomize_memory(CometForCausalLM.from_backbone(str(base), SMALL)))
    comet.save_pretrained(tmp_path / "good", adapter=True)

    def crafted(name, config=None, weights=None, lora_layout=None):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        if config is not None:
            meta = json.loads((folder / CONFIG_FILE).read_text())
            (folder / CONFIG_FILE).write_text(json.dumps(config(meta)))
        if weights is not None:
            save_file(weights(load_file(folder / WEIGHTS_FILE)), folder / WEIGHTS_FILE)
        if lora_layout is not None:
            with safe_open(str(folder / LORA_FILE), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            save_file(tensors, folder / LORA_FILE, metadata={"lora": lora_layout})
        return folder

    def first(tensors, change):
        key = next(k for k in tensors if k.endswith("gate.weight"))
        return {**tensors, key: change(tensors[key])}

    cases = [
        (crafted("slots", config=lambda m: {**m, "comet": {**m["comet"], "global_slots": 10**6}}), "tokens.readouts"),
        (crafted("rank", config=lambda m: {**m, "comet": {**m["comet"], "adapter_rank": 10**6}}), "adapter.down"),
        (crafted("kind", config=lambda m: {**m, "kind": "bogus"}), "kind 'bogus'"),
        (crafted("list", config=lambda m: [m]), "has format 'list'"),
        (crafted("nobase", config=lambda m: {k: v for k, v in m.items() if k != "base"}), "without the description"),
        (crafted("nan", weights=lambda t: first(t, lambda w: w * float("nan"))), "not finite"),
        (crafted("shape", weights=lambda t: first(t, lambda w: torch.cat([w, w], dim=-1))), "does not fit"),
        (crafted("lorarank", lora_layout=json.dumps({"rank": 10**6, "alpha": 16.0, "dropout": 0.0,
                                                     "targets": ["q_proj", "v_proj"]})), "rank 1000000"),
        (crafted("loratext", lora_layout='{"rank": 8}'), "not what save_lora writes"),
        (crafted("weights", config=lambda m: {**m, "base_weights": "abc"}), "'base_weights' must be a list"),
    ]
    for folder, said in cases:
        with pytest.raises(ValueError, match=said):
            CometForCausalLM.from_pretrained(folder)
    CometForCausalLM.from_pretrained(tmp_path / "good")  # the untouched copy loads


@torch.no_grad()
def test_memory_state_round_trip(tmp_path):
    comet = tiny_comet()
    ids = random_ids(2, 27)
    state = comet.ingest(ids[:, :20])
    state.save(tmp_path / "state.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no temporary file left behind
    loaded = MemoryState.load(tmp_path / "state.safetensors")
    a = comet.generate(ids[:, 20:], memory=state, max_new_tokens=12, eos_token_id=[])
    b = comet.generate(ids[:, 20:], memory=loaded, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(a, b)
    for key, value in state.tensors().items():
        assert torch.equal(value, loaded.tensors()[key]), key
    # to_bytes is the file's content (the server caches it); safetensors orders the header's keys as it likes
    data = state.to_bytes({"owner": "x"})
    assert MemoryState.read_notes(data) == {"owner": "x"}
    assert all(torch.equal(v, MemoryState.from_bytes(data).tensors()[k]) for k, v in state.tensors().items())


def test_corrupted_or_truncated_state_files(tmp_path):
    comet = tiny_comet()
    path = tmp_path / "state.safetensors"
    comet.ingest(random_ids(1, 20)).save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"not a state at all")
    for name in ("truncated", "garbage"):
        with pytest.raises(ValueError, match="not a readable CoMeT memory state"):
            MemoryState.load(tmp_path / f"{name}.safetensors")
    with pytest.raises(FileNotFoundError):
        MemoryState.load(tmp_path / "missing.safetensors")


@torch.no_grad()
def test_stack_then_select_round_trips():
    """Sessions of a server are read in one batch: stacking states of different fill and taking them apart again
    gives each back exactly, and the stacked batch reads each stream as it would have been read alone."""
    comet = tiny_comet()
    states = [comet.init_memory(1), comet.ingest(random_ids(1, 5, seed=1)), comet.ingest(random_ids(1, 19, seed=2))]
    stacked = MemoryState.stack(states)
    assert stacked.batch_size == 3 and stacked.pending.shape[1] == max(s.pending.shape[1] for s in states)
    for i, state in enumerate(states):
        back = stacked.select(torch.tensor([i]))
        for key, value in state.tensors().items():
            assert torch.equal(back.tensors()[key], value), (i, key)
    more = random_ids(3, 6, seed=3)
    batched = comet.ingest(more, stacked)
    for i, state in enumerate(states):
        assert_states_equal(batched.select(torch.tensor([i])), comet.ingest(more[i : i + 1], state))
    with pytest.raises(ValueError, match="at least one"):
        MemoryState.stack([])
    other = CometForCausalLM.from_backbone(tiny_backbone(), SMALL.__class__(chunk_size=16, global_slots=3, temp_stride=4, temp_capacity=5, adapter_rank=4))
    with pytest.raises(ValueError, match="different configs"):
        MemoryState.stack([states[0], other.init_memory(1)])


@torch.no_grad()
def test_state_from_bytes_equals_the_file_and_refuses_bad_bytes(tmp_path):
    comet = tiny_comet()
    path = tmp_path / "state.safetensors"
    state = comet.ingest(random_ids(1, 20))
    state.save(path, notes={"owner": "alice"})
    data = path.read_bytes()
    loaded = MemoryState.from_bytes(data)
    assert all(torch.equal(v, loaded.tensors()[k]) for k, v in state.tensors().items())
    assert MemoryState.read_notes(data) == MemoryState.read_notes(path) == {"owner": "alice"}
    for bad in (b"", data[:7], data[: len(data) // 2], b"\xff" * 64, data[:8] + b"{not json" + data[17:]):
        with pytest.raises(ValueError, match="not a readable CoMeT memory state"):
            MemoryState.from_bytes(bad)
    from safetensors.torch import save

    wrong = {k: v.double() if v.is_floating_point() else v.clone() for k, v in state.tensors().items()}
    meta = {"format": "cometlm.memory_state/1", "config": json.dumps(SMALL.to_dict())}
    with pytest.raises(ValueError, match="wrong dtypes"):
        MemoryState.from_bytes(save({**wrong, "layers.0.temp_valid": wrong["layers.0.temp_valid"].long()}, meta))
    with pytest.raises(ValueError, match="not a CoMeT memory state"):
        MemoryState.from_bytes(save({k: v.clone() for k, v in state.tensors().items()}, {"format": "something else"}))


def test_a_state_naming_a_huge_layer_costs_no_more_to_refuse_than_another():
    """A 164-byte file naming layer 3,000,000 made the reader build 15 million names (2 GiB) before refusing it: the
    layers are counted from the names present (and a layer number has at most six digits). Gaps, unknown names and a config number beyond a float are refused
    too (the last raised OverflowError, a 500 on the server)."""
    import tracemalloc

    from safetensors.torch import save

    meta = {"format": "cometlm.memory_state/1", "config": json.dumps(SMALL.to_dict())}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="lacks 'layers.0.global_memory'"):
            MemoryState.from_bytes(save({"layers.999999.temp": torch.zeros(1)}, meta))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB to refuse one tensor"
    comet = tiny_comet()
    tensors = {k: v.clone() for k, v in comet.init_memory(1).tensors().items()}
    assert len({k.split(".")[1] for k in tensors if k.startswith("layers.")}) >= 2
    gap = {k: v for k, v in tensors.items() if not k.startswith("layers.0.")}
    with pytest.raises(ValueError, match="lacks 'layers.0.global_memory'"):
        MemoryState.from_bytes(save(gap, meta))
    for name in ("layers.2999999.temp", "layers.01.temp", "layers.0.evil"):
        with pytest.raises(ValueError, match="tensors it does not have"):
            MemoryState.from_bytes(save({**tensors, name: torch.zeros(1)}, meta))
    huge = {**meta, "config": json.dumps({**SMALL.to_dict(), "gate_bias": [1, 10**400]})}
    with pytest.raises(ValueError, match="config is missing or invalid"):
        MemoryState.from_bytes(save(tensors, huge))
    assert MemoryState.from_bytes(save(tensors, meta)).batch_size == 1


def test_state_for_another_model_is_refused(tmp_path):
    comet = tiny_comet()
    other = CometForCausalLM.from_backbone(tiny_backbone(), SMALL.__class__(chunk_size=16, global_slots=3, temp_stride=4, temp_capacity=5, adapter_rank=4))
    state = comet.ingest(random_ids(1, 20))
    with pytest.raises(ValueError, match="memory state was made with"):
        other.ingest(random_ids(1, 4), state)
    with pytest.raises(ValueError, match="holds 1 streams but the input has 2 rows"):
        comet.ingest(random_ids(2, 4), state)


def test_failed_save_leaves_nothing(tmp_path):
    comet = tiny_comet()
    target = tmp_path / "model"
    with pytest.raises(ValueError, match="cannot save an adapter"):
        comet.base_model = None
        comet.save_pretrained(target, adapter=True)
    assert list(tmp_path.iterdir()) == []


def test_saving_replaces_a_saved_model_but_never_a_folder_of_other_files(tmp_path):
    """save_pretrained replaces its folder whole (atomically): into a folder of the user's own files it used to delete
    them all. A saved CoMeT model or an empty folder is replaced; anything else is refused and left as it was."""
    comet = tiny_comet()
    mine = tmp_path / "mine"
    (mine / "project").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a saved CoMeT model"):
        comet.save_pretrained(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "project"]
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="not a saved CoMeT model"):
        comet.save_pretrained(a_file)
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "mine"]
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "empty"):  # an empty folder, then the model saved there
        comet.save_pretrained(target)
        assert (target / "comet_config.json").is_file()


@torch.no_grad()
def test_a_memory_the_model_cannot_read_is_refused_before_it_is_read():
    """A state of another dtype, with an open chunk wider than what it holds, or with token ids outside the
    vocabulary: a ValueError saying so, not an error deep inside a layer."""
    import dataclasses

    comet = tiny_comet()
    state = comet.ingest(random_ids(1, 11), comet.init_memory(1))  # an open chunk of 3 ids (chunks of 8)
    ids = random_ids(1, 2, seed=1)
    comet.ingest(ids, state)  # as it is, it reads
    wider = dataclasses.replace(state, pending=torch.cat([state.pending, state.pending[:, :2]], dim=1))
    outside = dataclasses.replace(state, pending=torch.full_like(state.pending, 10**6))
    half = tiny_comet().to(torch.bfloat16)
    for model, memory, said in ((comet, wider, "ids wide but its longest stream holds 3"),
                                (comet, outside, "outside the vocabulary"),
                                (half, state, "holds torch.float32 rows but the model runs in torch.bfloat16")):
        with pytest.raises(ValueError, match=said):
            model.ingest(ids, memory)
        with pytest.raises(ValueError, match=said):
            model.generate(ids, memory=memory, max_new_tokens=2)
