"""Makes `lm_eval --model cometlm` work: registers cometlm's lm-evaluation-harness backend when lm-eval loads.

lm-eval 0.4.13 discovers no model plugins (entry points came later upstream), so pip puts `cometlm-lm-eval.pth`
in site-packages, and Python runs that file's one line, `import _cometlm_lm_eval`, at start-up. This module
imports nothing heavy: it waits for `lm_eval.models` (the harness's built-in backends, which must be registered
first) and, right after that module has run, imports `cometlm.evaluation.harness`, whose `@register_model`
adds "cometlm". A program that never imports lm-eval never loads cometlm.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

WATCHED = "lm_eval.models"
BACKEND = "cometlm.evaluation.harness"


class _RegisterAfterLoading(importlib.abc.MetaPathFinder):
    """Finds `lm_eval.models` through the other finders and runs BACKEND's import after it."""

    def find_spec(self, name, path=None, target=None):
        if name != WATCHED:
            return None
        sys.meta_path.remove(self)  # once is enough, and the real spec comes from the other finders
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def load_then_register(module):
            load(module)
            try:
                importlib.import_module(BACKEND)
            except Exception as err:  # a broken cometlm must not break the harness's other backends
                warnings.warn(f"lm_eval --model cometlm is unavailable: importing {BACKEND} failed ({err!r})")

        spec.loader.exec_module = load_then_register
        return spec


if WATCHED not in sys.modules and not any(isinstance(f, _RegisterAfterLoading) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterLoading())
