import sys, random, tempfile, os
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import tiny_model, rss_mib
from cometlm import CometConfig, CometForCausalLM
work = Path(tempfile.mkdtemp())
model = CometForCausalLM.from_backbone(tiny_model(work / "tiny"), CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128)).eval()
rng = random.Random(0)
MODE = sys.argv[1]
from cometlm.serving.store import SessionStore
import time, secrets
store = SessionStore(work / "s", model, 8 << 20)
infos = [store.write("sess_" + secrets.token_hex(16), "local", 1, store.template, 0) for _ in range(100)]
with torch.inference_mode():
    for n in range(1, 4001):
        ids = torch.tensor([[rng.randrange(1000, 20000) for _ in range(rng.randint(25, 40))]])
        info = infos[n % 100]
        state = store.load(info) if MODE != "noload" else None
        after = model.ingest(ids, state, attention_mask=torch.ones_like(ids))
        infos[n % 100] = store.write(info.id, "local", 1, after, info.appends + 1) if MODE != "nowrite" else info
        if n in (100, 1000, 2000, 4000): print("acc", n, round(rss_mib(os.getpid()), 1), MODE, flush=True)
