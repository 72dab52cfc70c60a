import sys, random, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from serve_load import text_of, rss_mib
from cometlm.bundled import encode
from transformers import AutoTokenizer
from cometlm.bundled import bundled_model_dir
tok = AutoTokenizer.from_pretrained(bundled_model_dir())
rng = random.Random(0)
for n in range(1, 8001):
    encode(tok, text_of(rng, 32))
    if n in (100, 1000, 2000, 4000, 8000): print("tok", n, round(rss_mib(os.getpid()), 1), flush=True)
