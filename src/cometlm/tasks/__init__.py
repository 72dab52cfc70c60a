"""Task and data generators shared by training and evaluation: the bundled corpora, the passkey and the needle
in a haystack. Training builds its samples here and evaluation builds its prompts here, so a model is scored on
exactly the format (and the held-out part of each generator) it was trained for. Nothing here imports the
model, training or evaluation."""
