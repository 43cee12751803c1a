"""Progress output that suits where it goes.

On a terminal: a tqdm bar (when tqdm is installed). Written to a file or a pipe (CI logs,
``make demo > log``, nohup), a bar prints one line per refresh, thousands per epoch; there a
task prints a plain summary line every ``interval`` seconds while it runs and one when it ends.

``KMGAN_EXT_PROGRESS`` forces a mode: ``bar``, ``lines`` or ``off``;
``KMGAN_EXT_PROGRESS_INTERVAL`` sets the seconds between lines (default 30).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import IO

MODES = ("auto", "bar", "lines", "off")
DEFAULT_INTERVAL = 30.0


def _env_mode() -> str:
    mode = os.environ.get("KMGAN_EXT_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"KMGAN_EXT_PROGRESS must be one of {MODES}, got {mode!r}")
    return mode


def _isatty(file: IO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def mode_for(file: IO, enabled: bool = True) -> str:
    """The mode a progress on ``file`` uses here: "bar", "lines" or "off"."""
    if not enabled:
        return "off"
    mode = _env_mode()
    if mode == "auto":
        tqdm_here = importlib.util.find_spec("tqdm") is not None
        mode = "bar" if tqdm_here and _isatty(file) else "lines"
    elif mode == "bar" and importlib.util.find_spec("tqdm") is None:
        mode = "lines"  # a nicety: without tqdm a terminal gets the summary lines
    return mode


def _interval() -> float:
    text = os.environ.get("KMGAN_EXT_PROGRESS_INTERVAL", "")
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"KMGAN_EXT_PROGRESS_INTERVAL must be a number of seconds >= 0, got {text!r}")
    return value


def _fmt(v) -> str:
    """A postfix value as text; a 0-d tensor is read only here, so that a hidden progress
    never syncs a GPU."""
    if hasattr(v, "item"):
        v = v.item()
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class _Off:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, values: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Bar(_Off):
    def __init__(self, total, desc, unit, initial, leave, file):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                        dynamic_ncols=True, file=file)  # fmt: skip

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, values: dict) -> None:
        self.bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)

    def close(self) -> None:
        self.bar.close()


class _Lines(_Off):
    """One line every ``interval`` seconds and one at the end: ``desc: n/total unit in s``."""

    def __init__(self, total, desc, unit, initial, summary, file, interval):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n, self.start_n, self.summary, self.interval = initial, initial, summary, interval
        self.postfix: dict = {}
        self.t0 = self.last = time.monotonic()
        self.printed = False
        self.closed = False

    def _line(self, now: float, end: bool) -> str:
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        secs = now - self.t0
        rate = (self.n - self.start_n) / secs if secs > 0 else 0.0
        text = f"{self.desc}: {done} {self.unit} {'in' if end else 'after'} {secs:.1f} s ({rate:.3g} {self.unit}/s)"
        if self.postfix:
            text += ", " + " ".join(f"{k}={_fmt(v)}" for k, v in self.postfix.items())
        return text

    def _print(self, now: float, end: bool) -> None:
        print(self._line(now, end), file=self.file, flush=True)
        self.printed, self.last = True, now

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and not (self.total is not None and self.n >= self.total):
            self._print(now, end=False)

    def set_postfix(self, values: dict) -> None:
        self.postfix = dict(values)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.monotonic()
        # A short task that printed nothing stays silent unless its summary was asked for.
        if self.summary or self.printed or now - self.t0 >= self.interval:
            self._print(now, end=True)


def progress(
    total: int | None = None,
    *,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    summary: bool = True,
    file: IO | None = None,
):
    """A progress reporter with ``update(n)``, ``set_postfix(dict)`` and ``close()`` (also a
    context manager), in the mode ``mode_for(file, enabled)`` picks.

    ``leave``: keep the finished bar on the terminal. ``summary``: in lines mode, always print
    the closing line; False for inner tasks, which print one only when they ran longer than
    the interval. ``file`` defaults to sys.stderr.
    """
    file = sys.stderr if file is None else file
    mode = mode_for(file, enabled)
    if mode == "off":
        return _Off()
    if mode == "bar":
        return _Bar(total, desc, unit, initial, leave, file)
    return _Lines(total, desc, unit, initial, summary, file, _interval())
