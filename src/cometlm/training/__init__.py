"""Training inputs for CoMeT: synthetic retrieval tasks (`tasks`), datasets and batching (`data`) and chunk
plans used as augmentation (`chunking`).

The submodules are imported explicitly (``from cometlm.training.data import PasskeyDataset``); this package
imports nothing itself, so evaluation code can use `tasks` without pulling in the rest.
"""
