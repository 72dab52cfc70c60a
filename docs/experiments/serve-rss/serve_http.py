import sys, threading, time, random, socket, tempfile, ctypes, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import httpx
from serve_load import tiny_model, text_of, rss_mib
from cometlm import CometConfig, CometForCausalLM
from cometlm.serving import ServerSettings, build_app, serve
work = Path(tempfile.mkdtemp())
path = tiny_model(work / "tiny")
model = CometForCausalLM.from_backbone(path, CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128))
settings = ServerSettings(state_dir=work / "s", api_keys=None, cache_bytes=8 << 20, max_sessions_per_key=100000)
app = build_app(model, settings, model_id="tiny")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
threading.Thread(target=serve, args=(app,), kwargs=dict(port=port, log_level="warning"), daemon=True).start()
url = f"http://127.0.0.1:{port}"
for _ in range(100):
    try: httpx.get(url + "/v1/models"); break
    except httpx.TransportError: time.sleep(0.2)
http = httpx.Client(base_url=url, timeout=60)
rng, sids = random.Random(0), []
libc = ctypes.CDLL("libc.so.6")
MODE = sys.argv[1]
if MODE == "tracemalloc":  # as `ask`, 500 -> 2,500 sessions under tracemalloc: the Python heap's share of the growth
    import gc, tracemalloc

    def grow(n):
        while len(sids) < n:
            sid = http.post("/v1/sessions").raise_for_status().json()["id"]
            http.post(f"/v1/sessions/{sid}/append", json={"text": text_of(rng, 32)}).raise_for_status()
            sids.append(sid)
            if len(sids) % 10 == 0:
                http.post(f"/v1/sessions/{rng.choice(sids)}/ask", json={"question": " Why?", "max_tokens": 2}).raise_for_status()
    grow(500); gc.collect()
    tracemalloc.start(25)
    s1, r1 = tracemalloc.take_snapshot(), rss_mib(os.getpid())
    grow(2500); gc.collect()
    s2, r2 = tracemalloc.take_snapshot(), rss_mib(os.getpid())
    print("RSS", r1, "->", r2, "traced", sum(s.size for s in s1.statistics("filename")) >> 10, "->",
          sum(s.size for s in s2.statistics("filename")) >> 10, "KiB")
    for stat in s2.compare_to(s1, "traceback")[:8]:
        print(stat.size_diff >> 10, "KiB", stat.count_diff)
        for line in stat.traceback.format()[-12:]:
            print("   ", line)
    sys.exit(0)
if MODE == "cycle":  # 100 sessions, then appends to them in turn: RSS by the number of appends
    sids = [http.post("/v1/sessions").raise_for_status().json()["id"] for _ in range(100)]
    for n in range(1, max(int(a) for a in sys.argv[2:]) + 1):
        http.post(f"/v1/sessions/{sids[n % 100]}/append", json={"text": text_of(rng, 32)}).raise_for_status()
        if str(n) in sys.argv[2:]:
            before = rss_mib(os.getpid()); libc.malloc_trim(0)
            print(n, "appends to 100 sessions: RSS", round(before, 1), "after malloc_trim", round(rss_mib(os.getpid()), 1), flush=True)
    sys.exit(0)
for n in [int(a) for a in sys.argv[2:]]:
    while len(sids) < n:
        sid = http.post("/v1/sessions").raise_for_status().json()["id"]
        if MODE == "append": http.post(f"/v1/sessions/{sid}/append", json={"text": text_of(rng, 32)}).raise_for_status()
        sids.append(sid)
        if MODE == "ask" and len(sids) % 10 == 0:
            http.post(f"/v1/sessions/{rng.choice(sids)}/ask", json={"question": " Why?", "max_tokens": 2}).raise_for_status()
    before = rss_mib(os.getpid()); libc.malloc_trim(0); after = rss_mib(os.getpid())
    print(n, "sessions RSS", round(before, 1), "after malloc_trim", round(after, 1), flush=True)
