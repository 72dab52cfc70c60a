"""The evaluation methods' names, defaults and help text: plain constants, so the command line can offer them
without importing torch."""

METHODS = ("comet", "no-memory", "full", "truncated", "sliding-window")
MEMORY_METHODS = ("comet", "no-memory")
LAYOUTS = ("primed", "fixed")
DEFAULT_PRIME_TOKENS = 256
DEFAULT_WINDOW = 8192  # for a backbone whose config names no max_position_embeddings
DEFAULT_SINK_TOKENS = 4  # StreamingLLM's choice
READ_BLOCK = 128  # tokens the sliding-window method reads at once
READ_BAR_MIN_STEPS = 8  # a nested reading bar only for reads of at least this many chunks or blocks
SNAPSHOT_SECONDS = 300.0  # how often a long read by a memory method saves its state (`streaming.Snapshot`)
LOSS_ROWS = 1024  # positions per LM-head call when scoring: logits never exceed LOSS_ROWS x vocabulary

METHOD_HELP = (
    "comet: the model with its memories (default; ablations: --comet DIR of a model saved with other switches); "
    "no-memory: the same model with both memories off (plain chunking); full: the backbone over the whole input, "
    "refusing inputs longer than its window; truncated: the backbone over the input's last --window tokens; "
    "sliding-window: StreamingLLM, the backbone with a KV cache of --sink-tokens first tokens plus the --window most "
    "recent ones, positions counted within the cache, trimmed before each block of 128 tokens read or generated (a "
    "token sees the sinks, --window older tokens and its block up to itself). full, truncated and sliding-window read with the backbone as "
    "loaded (with --comet, including the adapter's LoRA if it has one)"
)
