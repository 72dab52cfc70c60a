"""Makes `lm_eval --model cometlm` work: registers cometlm's lm-evaluation-harness backend when lm-eval loads.

lm-eval 0.4.13 discovers no model plugins (entry points came later upstream), so pip puts `cometlm-lm-eval.pth`
in site-packages, and Python runs that file's one line, `import _cometlm_lm_eval`, at start-up. This module
imports nothing but `sys` (every Python in the environment pays for it): it waits for `lm_eval.models` (the
harness's built-in backends, which must be registered first) and, right after that module has run, imports
`cometlm.evaluation.harness`, whose `@register_model` adds "cometlm". A program that never imports lm-eval never
loads cometlm.
"""

import sys

WATCHED = "lm_eval.models"
BACKEND = "cometlm.evaluation.harness"


class _RegisterAfterLoading:
    """A meta-path finder that finds `lm_eval.models` through the finders after it and runs BACKEND's import once
    that module has been executed."""

    def find_spec(self, name, path=None, target=None):
        if name != WATCHED:
            return None
        sys.meta_path.remove(self)  # once is enough, and the real spec comes from the other finders
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def load_then_register(module):
            load(module)
            try:
                __import__(BACKEND)
            except Exception as err:  # a broken cometlm must not break the harness's other backends
                import warnings

                warnings.warn(f"lm_eval --model cometlm is unavailable: importing {BACKEND} failed ({err!r})")

        spec.loader.exec_module = load_then_register
        return spec


if WATCHED not in sys.modules and not any(type(f).__name__ == "_RegisterAfterLoading" for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterLoading())
