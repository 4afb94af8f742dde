"""Loss logging of a training run: ``loss.csv`` (always), ``loss.png`` (matplotlib), TensorBoard (optional).

The CSV has one row per optimiser step: ``step, loss, video_loss, audio_loss, learning_rate, seconds``.
On resume, rows after the resumed step are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from magihuman.model.checkpoint import write_atomic

COLUMNS = ("step", "loss", "video_loss", "audio_loss", "learning_rate", "seconds")


class LossLog:
    """Append-only CSV of the step losses, with a PNG plot and optional TensorBoard scalars.

    Args:
        folder: the run folder (``loss.csv`` and ``loss.png`` go there).
        resume_step: keep only rows with ``step <= resume_step`` (0: start a new file).
        tensorboard: also write TensorBoard events under ``folder/tensorboard``.
        columns: the CSV columns, ``step`` first (default :data:`COLUMNS`; codec runs log their own terms).

    Raises:
        ImportError: ``tensorboard=True`` without the ``tensorboard`` package (``pip install magihuman[tensorboard]``).
    """

    def __init__(self, folder: Path, *, resume_step: int = 0, tensorboard: bool = False,
                 columns: tuple[str, ...] = COLUMNS):
        self.columns = tuple(columns)
        self.path = Path(folder) / "loss.csv"
        self.plot_path = Path(folder) / "loss.png"
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
        """Log step ``step`` (the columns other than ``step``)."""
        with self.path.open("a", newline="") as handle:
            row = {"step": step, **{k: f"{values[k]:.8g}" for k in self.columns[1:]}}
            csv.DictWriter(handle, self.columns).writerow(row)
        if self.writer is not None:
            for key in self.columns[1:]:
                if key != "seconds":
                    self.writer.add_scalar(f"train/{key}", values[key], step)

    def plot(self) -> Path | None:
        """Draw ``loss.png`` (loss per step, log scale, with a running mean); None when no rows yet."""
        rows = self.read()
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [int(r["step"]) for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for key, label in (("loss", "loss"), ("video_loss", "video"), ("audio_loss", "audio")):
            if key not in rows[0]:
                continue
            values = [float(r[key]) for r in rows]
            ax.plot(steps, values, label=label, linewidth=1.0 if key == "loss" else 0.7)
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
