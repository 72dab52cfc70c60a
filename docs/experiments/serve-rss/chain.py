import sys, random, tempfile, os, secrets, time, threading
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import tiny_model, rss_mib, text_of
from cometlm import CometConfig, CometForCausalLM
from cometlm.bundled import encode
from cometlm.state import MemoryState
from cometlm.serving.store import SessionStore
mode = sys.argv[1]
work = Path(tempfile.mkdtemp())
model = CometForCausalLM.from_backbone(tiny_model(work / "tiny"), CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128)).eval()
store = SessionStore(work / "s", model, 8 << 20)
rng = random.Random(0)
def step(n):
    info = store.write("sess_" + secrets.token_hex(16), "local", int(time.time()), store.template, 0)
    state = store.load(info)
    ids = torch.tensor([encode(model.tokenizer, text_of(rng, 32))])
    with torch.inference_mode():
        after = model.ingest(ids, MemoryState.stack([state]), attention_mask=torch.ones_like(ids)).select(torch.tensor([0]))
    store.write(info.id, "local", info.created, after, 1)
def run():
    for n in range(1, 4001):
        step(n)
        if n in (100, 1000, 2000, 4000): print(mode, n, round(rss_mib(os.getpid()), 1), flush=True)
if mode == "main": run()
else:
    t = threading.Thread(target=run); t.start(); t.join()
