"""Loss logging of a training run: a CSV (always), a PNG plot (matplotlib), TensorBoard (optional).

The trainer writes ``loss.csv`` with one row per optimiser step: ``step, loss, video_loss, audio_loss,
learning_rate, seconds``; the distiller writes ``distill_loss.csv`` with one row per generator update:
``step, generator_loss, fake_loss, seconds``. On resume, rows after the resumed step are dropped first,
so the file reads as one uninterrupted run. TensorBoard gets every column but ``step`` and ``seconds`` as
the scalar ``<tag>/<column>`` (``train/loss``, ``distill/generator_loss``) under ``<run>/tensorboard``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from magihuman.model.checkpoint import write_atomic

COLUMNS = ("step", "loss", "video_loss", "audio_loss", "learning_rate", "seconds")
#: Columns of the distiller's log.
DISTILL_COLUMNS = ("step", "generator_loss", "fake_loss", "seconds")
_NOT_PLOTTED = ("step", "seconds", "learning_rate")


class LossLog:
    """Append-only CSV of the step losses, with a PNG plot and optional TensorBoard scalars.

    Args:
        folder: the run folder (``<name>.csv`` and ``<name>.png`` go there).
        resume_step: keep only rows with ``step <= resume_step`` (0: start a new file).
        tensorboard: also write TensorBoard events under ``folder/tensorboard``.
        name: file stem (``loss``; the distiller's ``distill_loss``).
        columns: the CSV columns, ``step`` first (:data:`COLUMNS`, :data:`DISTILL_COLUMNS`).
        tag: TensorBoard scalar prefix.

    Raises:
        ImportError: ``tensorboard=True`` without the ``tensorboard`` package (``pip install magihuman[tensorboard]``).
    """

    def __init__(self, folder: Path, *, resume_step: int = 0, tensorboard: bool = False, name: str = "loss",
                 columns: Sequence[str] = COLUMNS, tag: str = "train"):
        self.path = Path(folder) / f"{name}.csv"
        self.plot_path = Path(folder) / f"{name}.png"
        self.columns, self.tag = tuple(columns), tag
        rows = [r for r in self.read() if int(r["step"]) <= resume_step] if resume_step else []
        self._rewrite(rows)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("tensorboard logging needs `pip install magihuman[tensorboard]`") from exc
            self.writer = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=resume_step + 1)

    def _rewrite(self, rows: list[dict]) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, self.columns)
                writer.writeheader()
                writer.writerows(rows)

        write_atomic(self.path, write)

    def read(self) -> list[dict]:
        """Rows of the CSV as dicts of strings (empty when there is no file)."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def append(self, step: int, values: dict[str, float]) -> None:
        """Log step ``step`` (a value for every column other than ``step``)."""
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(
                {"step": step, **{k: f"{values[k]:.8g}" for k in self.columns[1:]}})
        if self.writer is not None:
            for key in self.columns[1:]:
                if key != "seconds":
                    self.writer.add_scalar(f"{self.tag}/{key}", values[key], step)

    def plot(self) -> Path | None:
        """Draw the PNG (every loss column per step, log scale); None when no rows yet."""
        rows = self.read()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r["step"]) for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for i, key in enumerate(k for k in self.columns if k not in _NOT_PLOTTED):
            values = [float(r[key]) for r in rows]
            ax.plot(steps, values, label=key.removesuffix("_loss"), linewidth=1.0 if i == 0 else 0.7)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        write_atomic(self.plot_path, lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
        return self.plot_path

    def close(self) -> None:
        """Flush TensorBoard (the CSV is flushed per row)."""
        if self.writer is not None:
            self.writer.close()
