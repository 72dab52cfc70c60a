import sys, random, tempfile, os, secrets, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import tiny_model, rss_mib
from cometlm import CometConfig, CometForCausalLM
from cometlm.serving.store import SessionStore
from cometlm.serving.index import SessionIndex, SessionInfo
mode = sys.argv[1]
work = Path(tempfile.mkdtemp())
model = CometForCausalLM.from_backbone(tiny_model(work / "tiny"), CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128))
if mode == "store":
    store = SessionStore(work / "s", model, 8 << 20)
    infos = []
    for n in range(1, 8001):
        infos.append(store.write("sess_" + secrets.token_hex(16), "local", int(time.time()), store.template, 0))
        if n % 10 == 0:
            store.load(random.choice(infos))
        if n in (100, 1000, 2000, 4000, 8000): print(mode, n, round(rss_mib(os.getpid()), 1), flush=True)
else:
    index = SessionIndex(work / "i.sqlite")
    for n in range(1, 8001):
        index.put(SessionInfo("sess_" + secrets.token_hex(16), "local", 1, 1, 0, 0, 0, 100, "x"))
        if n in (100, 1000, 2000, 4000, 8000): print(mode, n, round(rss_mib(os.getpid()), 1), flush=True)
