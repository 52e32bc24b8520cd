"""A Ctrl-C that is never lost: a SIGINT handler that also remembers it was pressed.

Python turns SIGINT into ``KeyboardInterrupt`` at the next bytecode the main thread runs. When
that bytecode belongs to a finalizer (a ``__del__``, a weakref callback, a garbage-collection
pass over matplotlib's figures, an after-fork hook), the exception cannot propagate: Python
reports it as "unraisable", drops it, and the run goes on as if no one had pressed anything.
CI saw exactly that: a Ctrl-C while the report was being drawn ended with exit code 0.

:func:`install` puts a handler in place of Python's default one that raises the same
``KeyboardInterrupt`` and also counts the press, so the session can ask :func:`pressed` at its
checkpoints (between tests, in the loop that waits for the clients, before drawing figures)
and end as interrupted even when the exception itself was dropped. No pytest here.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator

_presses = 0
_holding = 0  # > 0 inside held(): presses are counted, not raised


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _presses
    _presses += 1
    if not _holding:
        raise KeyboardInterrupt


def install() -> bool:
    """Count Ctrl-C presses from now on; ``True`` when this call took SIGINT over (the caller
    then owns it and calls :func:`uninstall`). ``False``, and nothing changed, when this is not
    the main thread, when the handler is already in place (an outer run owns it), or when
    someone other than Python's default handler owns SIGINT (a program that embeds pytest
    keeps its own handling)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, _on_sigint)
    return True


def uninstall() -> None:
    """Give SIGINT back to Python's default handler (only if :func:`install` took it)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def presses() -> int:
    """How many times Ctrl-C was pressed while the handler was installed."""
    return _presses


def pressed() -> bool:
    """Whether Ctrl-C was pressed, whether or not its ``KeyboardInterrupt`` got through."""
    return _presses > 0


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within the block Ctrl-C is counted but not raised, so a write that must be whole (the
    run's summary files) finishes; the caller asks :func:`pressed` afterwards. Without the
    handler installed (a plain script) the block is interruptible as usual."""
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1


def raise_if_pressed() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed: for loops that must not outlive it."""
    if _presses:
        raise KeyboardInterrupt


def forget() -> None:
    """Start counting from zero (a new session in the same process, e.g. under pytester)."""
    global _presses
    _presses = 0
