import sys, random, tempfile, os
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import tiny_model, rss_mib
from cometlm import CometConfig, CometForCausalLM
work = Path(tempfile.mkdtemp())
model = CometForCausalLM.from_backbone(tiny_model(work / "tiny"), CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128))
model.eval()
rng = random.Random(0)
template = model.init_memory(1)
print(type(template))
with torch.no_grad():
    for n in range(1, 4001):
        ids = torch.tensor([[rng.randrange(1000, 20000) for _ in range(rng.randint(int(sys.argv[1]), int(sys.argv[2])))]])
        state = model.ingest(ids, template, attention_mask=torch.ones_like(ids))
        if n in (100, 1000, 2000, 4000): print("model", n, round(rss_mib(os.getpid()), 1), flush=True)
