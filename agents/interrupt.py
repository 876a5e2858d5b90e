"""Stopping a search cleanly on SIGINT and SIGTERM.

During set-up a signal stops the search at once (nothing to save yet); once episodes run,
the handler only records it, and the loop stops at its next step, after which the last
finished episode's state is saved and :class:`SearchInterrupted` tells the caller how to
resume.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by SIGINT or SIGTERM after saving its state.

    A KeyboardInterrupt, so a caller that does not catch it stops as on Ctrl-C. Its message
    is one line: what stopped, and how to go on.

    Attributes:
        run: the run folder.
        episodes: episodes the saved state covers (None: stopped before the first one, nothing saved).
        total: planned episodes.
        signum: the signal.
        resumable: ``amc search --resume RUN`` continues it (default: when a state is saved).
    """

    def __init__(self, run: Path, episodes: int | None, total: int, signum: int,
                 resumable: bool | None = None) -> None:
        self.run, self.episodes, self.total, self.signum = run, episodes, total, signum
        self.resumable = episodes is not None if resumable is None else resumable
        name = signal.Signals(signum).name
        if episodes is None and not self.resumable:
            what = f"stopped by {name} before the first episode; nothing to resume, start it again"
        elif episodes is None:
            what = f"stopped by {name} before the first episode; resume with: amc search --resume {run}"
        else:
            what = (f"stopped by {name} after {episodes} of {total} episodes (the search state is saved in "
                    f"{run}); resume with: amc search --resume {run}")
        super().__init__(what)

    def __reduce__(self):  # a worker process of amc bench quality sends it back to its parent
        return type(self), (self.run, self.episodes, self.total, self.signum, self.resumable)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Stop(BaseException):
    """Raised on SIGINT or SIGTERM during set-up; a BaseException so no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalHandler:
    """The SIGINT and SIGTERM handler of a search.

    During set-up a signal raises :class:`Stop` at once: there is nothing to save yet. Once
    episodes run (``deferred``), it only records the signal, and the search stops at its next
    step. Raising from a handler at an arbitrary point could leave a lock of the TensorBoard
    writer or of a queue held, and the clean stop would then hang.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return  # stopping already: a second Ctrl-C must not tear what is being saved
        self.signum = signum
        if not self.deferred:
            raise Stop(signum)

    def stop_requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def installed(handler: SignalHandler):
    """``handler`` takes SIGINT and SIGTERM (main thread only; elsewhere signals stay as they are)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
