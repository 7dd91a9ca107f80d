"""Progress of long steps as plain lines on stdout (which the Prefect flow copies into its run log).

    with progress.Progress("model: converting x.gguf", total=n, unit="tensors") as p:
        for t in tensors:
            ...
            p.advance()            # or p.advance(k, "loss 2.31"): k more done, a detail for the next line

    with progress.step("model: loading x.gguf"):   # no count: a start line, then the done line
        ...

Lines: `<label> ...` as it starts; `<label>: 30/300 tensors (10%), 12s, ~1m48s left[, detail]` each
time another 10% is done, at most one every 10 s and at least one a minute while it advances; then
`<label>: done in 48.2s` (or `failed after 3.1s`, the exception going on). No bars, no carriage
returns: every line reads the same in a terminal and a log. Only rank 0 of a launched job prints; an
empty label (or None) prints nothing (for a caller that is sometimes silent, as inside a training step),
nor does a total of 0 (nothing to do).
"""

from __future__ import annotations

import os
import time

_now = time.monotonic  # tests replace it
EVERY_S = 10.0  # the least time between two progress lines
EVERY_FRACTION = 0.1  # a line each time this share more is done...
QUIET_S = 60.0  # ...or this long since the last line


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """A step of `total` units (None: unknown) under `label`, reported by `advance` as a context manager."""

    def __init__(self, label: str | None, total: int | None = None, unit: str = ""):
        self.label, self.total, self.unit = label, total, unit
        self.done, self.detail = 0, ""
        self.quiet = not label or total == 0 or os.environ.get("RANK", "0") != "0"

    def __enter__(self) -> Progress:
        self.started = self.last = _now()
        self.last_done = 0
        self._print(f"{self.label} ...")
        return self

    def advance(self, n: int = 1, detail: str = "") -> None:
        """`n` more units done; `detail` (a loss, a count) is shown on the next lines."""
        self.done += n
        self.detail = detail or self.detail
        now = _now()
        if now - self.last < EVERY_S or (self.total and self.done >= self.total):  # the done line follows
            return
        share = (self.done - self.last_done) / self.total if self.total else 0.0
        if share >= EVERY_FRACTION or now - self.last >= QUIET_S:
            self.last, self.last_done = now, self.done
            self._print(f"{self.label}: {self._status(now - self.started)}")

    def _status(self, elapsed: float) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            text = f"{self.done}/{self.total}{unit} ({100 * self.done // self.total}%), {_duration(elapsed)}"
            if 0 < self.done < self.total:
                text += f", ~{_duration(elapsed * (self.total - self.done) / self.done)} left"
        else:
            text = f"{self.done}{unit}, {_duration(elapsed)}"
        return text + (f", {self.detail}" if self.detail else "")

    def __exit__(self, kind, *_) -> None:
        seconds = _now() - self.started
        end = f"done in {seconds:.1f}s" if kind is None else f"failed after {seconds:.1f}s"
        self._print(f"{self.label}: {end}" + (f" ({self.detail})" if self.detail else ""))

    def _print(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)


def step(label: str | None) -> Progress:
    """A step with no count to report: `with step("sft: saving the model"): ...` prints its start and
    `done in Xs`."""
    return Progress(label)
