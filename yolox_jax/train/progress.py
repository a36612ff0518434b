"""The training progress bar: one tqdm bar per epoch with images/s, ETA and the current losses.

Shown only where someone watches: on process 0, when stderr is a terminal and the environment
variable CI is unset. The log lines (console, metrics.jsonl, tensorboard) are written either way;
with a bar on screen the console lines go through `tqdm.write` so that they do not break it.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled(is_main: bool = True, stream: Any = None) -> bool:
    """A bar only on process 0, on a terminal, outside CI."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(is_main and isatty is not None and isatty() and not os.environ.get("CI"))


class EpochProgress:
    """`start(epoch, done, total)` opens the epoch's bar at `done` of `total` steps;
    `update(metrics, images_per_s, eta_s)` advances it by one step; `write(msg)` prints a line
    above it (or plainly, when there is no bar)."""

    def __init__(self, enabled: bool, max_epoch: int, file: Any = None):
        self.enabled = bool(enabled)
        self.max_epoch = int(max_epoch)
        self.file = file  # None: stderr
        self._bar = None

    def start(self, epoch: int, done: int, total: int) -> None:
        self.close()
        if not self.enabled:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{self.max_epoch}",
                         unit="step", dynamic_ncols=True, leave=True, file=self.file)

    def update(self, metrics: dict[str, float], images_per_s: float, eta_s: float) -> None:
        if self._bar is None:
            return
        post = {k: f"{metrics[k]:.3f}" for k in ("total", "iou", "obj", "cls", "l1")
                if k in metrics}
        post["img/s"] = f"{images_per_s:.1f}"
        post["ETA"] = _hms(eta_s)
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=self.file)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _hms(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):  # nan / inf: no rate yet
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
