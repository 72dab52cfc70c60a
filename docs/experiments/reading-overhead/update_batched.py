import time, torch, sys
from cometlm.cell import MemoryCell, ChunkOutput
from cometlm.state import MemoryState
from cometlm.loading import ModelOptions, load_model
torch.set_num_threads(1)
model = load_model(ModelOptions(adapter="smollm2-135m-passkey", dtype=sys.argv[1]))
c = model.comet_config.chunk_size
ids = torch.randint(1000, 20000, (1, 2048 + 1))
batched_run = MemoryCell.run
def per_layer_run(self, state, text_ids, text_len, closing, cache=None, keep_beacons=False):
    inputs = self.start(text_ids, text_len, closing, state.layers[0].row_valid())
    hidden, new_layers = inputs.hidden, []
    for index, layer in enumerate(state.layers):
        hidden, layer = self.layer(index, hidden, layer, inputs, cache)
        new_layers.append(layer)
    after = MemoryState(state.config, tuple(new_layers), state.pending, state.pending_len, state.chunks_closed + closing.long())
    return ChunkOutput(self.end(hidden, inputs), after, inputs.layout, None)
real_upd = MemoryCell.update_memories
def bare():
    for a in range(0, 2048, c): model.backbone.hidden_states(ids[:, a:a+c])
variants = {"batched": (batched_run, real_upd), "per layer": (per_layer_run, real_upd), "no update": (batched_run, lambda self, i, layers, *a: list(layers)), "bare": None}
res = {k: [] for k in variants}
with torch.inference_mode():
    model.ingest(ids[:, :300]); bare()
    for r in range(4):
        for name, v in variants.items():
            if v: MemoryCell.run, MemoryCell.update_memories = v
            fn = bare if v is None else (lambda: model.ingest(ids))
            t = time.process_time(); fn(); res[name].append(time.process_time() - t)
added = model.comet_config.beacons_per_chunk + model.comet_config.global_slots + 1
b = min(res["bare"]) * (c + added) / c
for k, v in res.items(): print(sys.argv[1], k, [round(x, 3) for x in v], "best", round(min(v), 3), "target ratio %.3f" % (min(v) / b))
