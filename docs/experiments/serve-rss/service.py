"""The append path without HTTP: MemoryService.append on 100 sessions in turn, RSS by the number of appends.
`service.py service|direct N...`: `direct` replaces the scheduler's model thread by a read in the calling thread; `inline` also runs the store's
calls (run with asyncio.to_thread by the service) in the loop's thread."""
import asyncio, os, random, sys, tempfile, ctypes
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import tiny_model, rss_mib, text_of
from cometlm import CometConfig, CometForCausalLM
from cometlm.serving.service import MemoryService
from cometlm.serving.scheduler import Scheduler
from cometlm.serving.settings import ServerSettings
from cometlm.serving.store import SessionStore

mode, marks = sys.argv[1], {int(a) for a in sys.argv[2:]}
work = Path(tempfile.mkdtemp())
model = CometForCausalLM.from_backbone(tiny_model(work / "tiny"), CometConfig(chunk_size=64, global_slots=64, temp_stride=8, temp_capacity=128)).eval()
settings = ServerSettings(state_dir=work / "s", api_keys=None, cache_bytes=int(os.environ.get("CACHE_BYTES", 8 << 20)),
                          max_sessions_per_key=100000)
store = SessionStore(settings.state_dir, model, settings.cache_bytes)
scheduler = Scheduler(model, settings.batch_window_ms, settings.max_batch)
if os.environ.get("CACHE_PAGES"):  # SQLite's page cache of the index's connection, in pages (default: 2,000 KiB)
    store.index._db.execute(f"PRAGMA cache_size={int(os.environ['CACHE_PAGES'])}")  # a lab script may reach in
if mode.startswith("inline"):  # no threads: the store's calls run in the loop's thread too (inline-NAME: all but NAME)
    import cometlm.serving.service as service_module
    threaded = mode.partition("-")[2]

    async def inline(fn, *args, **kwargs):
        if threaded and getattr(fn, "__name__", "") == threaded:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)
    service_module.to_thread = inline
if mode == "single":  # the store's calls on one worker thread instead of asyncio's default pool
    import concurrent.futures, functools
    import cometlm.serving.service as service_module
    one = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    async def single(fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(one, functools.partial(fn, *args, **kwargs))
    service_module.to_thread = single
if mode == "direct" or mode.startswith("inline"):
    async def read(state, ids):
        with torch.inference_mode():
            ids = torch.tensor([ids])
            return model.ingest(ids, state, attention_mask=torch.ones_like(ids))
    scheduler.read = read
if mode == "bytes":  # tensors live only in the model thread: the store hands it a state file's bytes and gets bytes back
    from cometlm.files import write_bytes
    from cometlm.serving.index import SessionInfo
    from cometlm.state import MemoryState

    def load_bytes(info):
        data = store.cache.get(info.id)
        if data is None:
            data = store.path(info.id).read_bytes()
            store.cache.put(info.id, data)
        return data

    def write_any(session_id, owner, created, state, appends):
        data = state if isinstance(state, bytes) else state.to_bytes({})
        write_bytes(store.path(session_id), data, durable=True)
        info = SessionInfo(session_id, owner, created, 0, appends, 0, 0, len(data), store.fingerprint)
        store.index.put(info)
        store.cache.put(session_id, data)
        return info

    def read_in_model_thread(jobs):
        for job in jobs:
            job.state = MemoryState.from_bytes(job.state)
        state, ids, mask = scheduler._batch(jobs, [job.ids for job in jobs], left=False)
        after = model.ingest(ids, state, attention_mask=mask)
        for i, job in enumerate(jobs):
            job.resolve(after.select(torch.tensor([i])).to_bytes({}))
    store.load, store.write, scheduler._read = load_bytes, write_any, read_in_model_thread
libc, rng = ctypes.CDLL("libc.so.6"), random.Random(0)


async def main():
    scheduler.start()
    service = MemoryService(model, store, scheduler, settings)
    sids = [(await service.create("local")).id for _ in range(100)]
    for n in range(1, max(marks) + 1):
        ids = await service.tokenize(text_of(rng, 32), "text")
        await service.append("local", sids[n % 100], ids, None)
        if n in marks:
            libc.malloc_trim(0)
            print(mode, n, "appends: RSS", round(rss_mib(os.getpid()), 1), flush=True)

asyncio.run(main())
