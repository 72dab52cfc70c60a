"""What a training run shows and leaves behind: a live progress bar, ``metrics.jsonl`` (one line every
``log_every`` steps), optional TensorBoard, and the loss curve ``loss.png``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from cometlm.files import atomic_path, write_text
from cometlm.progress import progress_bar
from cometlm.runtime import peak_rss_mib

from .config import METRICS_FILE, TrainConfig


class TrainingLog:
    """A tqdm bar (loss, tokens/s, ETA) every step; every ``log_every`` steps and at the last step a line in
    ``metrics.jsonl`` (and TensorBoard when asked and installed): the mean loss, learning rate, gradient norm and
    tokens/s of those steps, the run's tokens and seconds so far, the process's peak resident memory so far, and
    for a mixture each dataset's loss."""

    def __init__(self, config: TrainConfig, start_step: int):
        self.config = config
        self.path = Path(config.output_dir) / METRICS_FILE
        drop_metrics_after(self.path, start_step)  # steps past the checkpoint are run again, and logged again
        self.writer = _tensorboard_writer(Path(config.output_dir)) if config.tensorboard else None
        self.bar = progress_bar(total=config.last_step, initial=start_step, desc="training", unit="step")
        self.window = []

    def step(self, progress, lr: float, grad_norm: float, tokens: int, seconds: float,
             sources: set[str] | None = None, by_source: dict[str, list] | None = None) -> None:
        """``sources``: the datasets of a mixture the step's samples came from; ``by_source``: {dataset: [summed
        loss, targets]} of those samples, when the trainer knows each sample's loss (one process)."""
        self.window.append((progress.loss, grad_norm, tokens, seconds, sources, by_source))
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{progress.loss:.4f}", tok_s=f"{tokens / max(seconds, 1e-9):,.0f}")
        if progress.step % self.config.log_every and progress.step != self.config.last_step:
            return
        losses, norms, counts, times, sources, parts = zip(*self.window)
        self.window = []
        record = {
            "step": progress.step,
            "loss": sum(losses) / len(losses),
            "lr": lr,
            "grad_norm": sum(norms) / len(norms),
            "tokens_per_s": sum(counts) / max(sum(times), 1e-9),
            "tokens": progress.tokens,
            "elapsed": round(progress.elapsed, 3),
            "peak_rss_mib": round(peak_rss_mib()),  # this process's so far: whether a longer run will fit
        }
        if sources[0] is not None:  # a mixture: which of its datasets the logged steps' samples came from
            record["sources"] = sorted(set().union(*sources))
            if all(part is not None for part in parts):
                # Each dataset's loss per target token over the window's samples from it, mixed steps included:
                # one dataset's long targets (a book's) would otherwise hide another's few (an answer's).
                totals: dict[str, list] = {}
                for part in parts:
                    for name, (nats, targets) in part.items():
                        total = totals.setdefault(name, [0.0, 0])
                        total[0], total[1] = total[0] + nats, total[1] + targets
                counted = sorted((k, v) for k, v in totals.items() if v[1])
                record["loss_by_source"] = {k: nats / targets for k, (nats, targets) in counted}
                record["targets_by_source"] = {k: targets for k, (_, targets) in counted}
            else:  # a parallel job: only the steps of one dataset's samples tell its loss
                by_source: dict[str, list[float]] = {}
                for loss, step_sources in zip(losses, sources):
                    if len(step_sources) == 1:
                        by_source.setdefault(next(iter(step_sources)), []).append(loss)
                if by_source:
                    record["loss_by_source"] = {k: sum(v) / len(v) for k, v in sorted(by_source.items())}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                self.writer.add_scalar(f"train/{key}", record[key], progress.step)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def drop_metrics_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    write_text(path, "".join(json.dumps(record) + "\n" for record in kept))


def _tensorboard_writer(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("tensorboard is not installed, so nothing is logged to TensorBoard (pip install tensorboard)",
                      stacklevel=3)
        return None
    return SummaryWriter(str(output / "tensorboard"))


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (the process was killed while writing it) is left out."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(metrics: Path, png: Path, smooth: int = 25) -> Path:
    """Loss against step from the metrics file (every run of a resumed training), as a PNG; no pyplot state.

    The logged losses are drawn faintly with a moving average of `smooth` of them on top. For a mixture, each
    dataset gets its own colour, from its samples' loss per target token (`loss_by_source`; in a parallel job, and
    in runs logged before this existed, from the steps whose samples all came from it, and a record whose every
    step mixed datasets is drawn as "mixed"), since sources with losses as different as a passkey answer's and a
    book's would otherwise hide each other's trends.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics)
    series: dict[str, list[tuple[int, float]]] = {}  # name -> (step, loss)
    for record in records:
        if "sources" not in record:
            series.setdefault("training loss", []).append((record["step"], record["loss"]))
            continue
        by_source = record.get("loss_by_source") or {}
        for name, loss in by_source.items():
            series.setdefault(name, []).append((record["step"], loss))
        if len(record["sources"]) > 1 and not by_source:  # only steps that mixed datasets
            series.setdefault("mixed", []).append((record["step"], record["loss"]))
    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, (name, part) in enumerate(series.items()):
        steps, losses = [step for step, _ in part], [loss for _, loss in part]
        color = f"C{k}"
        if len(part) < 50:
            axes.plot(steps, losses, marker=".", color=color, label=name)
            continue
        axes.plot(steps, losses, linestyle="none", marker=".", markersize=2, alpha=0.25, color=color)
        window = min(smooth, len(part))
        average = [sum(losses[i - window + 1 : i + 1]) / window for i in range(window - 1, len(losses))]
        axes.plot(steps[window - 1 :], average, color=color, label=f"{name} (mean of {window})")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    if len(series) > 1 or len(records) >= 50:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(png) as tmp:
        figure.savefig(tmp)
    return png
