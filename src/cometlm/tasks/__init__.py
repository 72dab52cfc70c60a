"""Task and data generators shared by training and evaluation: the bundled corpora (`corpora`), the passkey and the
needle in a haystack (`retrieval`), and the long-context task suites (`suite` names them): RULER-style needles,
variable tracking and word counting (`ruler`), BABILong-style stories in real text (`babilong`), user-behaviour QA
(`user_events`) and agent-trajectory QA (`agent_trace`), built on `sample`, `haystack` and `logs`. Training builds its
samples here and evaluation builds its prompts here, so a model is scored on exactly the format (and the held-out part
of each generator) it was trained for. Nothing here imports the model, training or evaluation."""
