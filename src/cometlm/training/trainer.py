"""Deprecated alias: the trainer was split by concern (``training.config``, ``loop``, ``optimizer``,
``metrics``, ``specs``; the command in ``cometlm.cli.train``). Import from those modules; this alias goes in 0.3."""

import warnings

from .config import TrainConfig
from .loop import export_model, prepare_model, train
from .metrics import plot_loss_curve, read_metrics

__all__ = ["TrainConfig", "export_model", "plot_loss_curve", "prepare_model", "read_metrics", "train"]

warnings.warn("cometlm.training.trainer is deprecated; use cometlm.training.loop.train and "
              "cometlm.training.config.TrainConfig", DeprecationWarning, stacklevel=2)
