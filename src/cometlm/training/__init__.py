"""Fine-tuning CoMeT (METHOD.md section 3), one concern a module, as torchtitan splits its components:

- ``config``: ``TrainConfig``, what shapes a run;
- ``loop``: ``train``, the deterministic, exactly resumable loop (``prepare_model`` picks what trains);
- ``optimizer``: parameter groups, AdamW, the learning-rate schedule, clipping;
- ``checkpoint``: trainable weights, optimizer, scheduler and RNG states, written atomically;
- ``metrics``: the progress bar, ``metrics.jsonl``, TensorBoard and the loss curve;
- ``data``, ``specs``, ``chunking``: datasets and batching, the ``--data`` sources, chunk-size augmentation.

The generated tasks themselves (passkey, needle, corpora) live in ``cometlm.tasks``, shared with evaluation.
The submodules are imported explicitly (``from cometlm.training.loop import train``); this package imports
nothing itself.
"""
