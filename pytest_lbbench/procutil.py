"""Process plumbing shared by every server we start: readiness lines, parent watchdogs, spawning.

Every long-running component (simulated replica, load balancer, delay links) is a plain
``python -m pytest_lbbench.<component>`` process. They all follow one small protocol so the
local backend can start them without races and stop them without leftovers:

* the child binds its listening socket itself (port 0 = any free port), then prints exactly one
  line ``LBBENCH_READY {json}`` on stdout, where the JSON holds at least ``{"port": <int>}``;
* the child exits when its parent process disappears (``--parent-pid``), so a killed pytest
  worker never leaves servers behind;
* the child exits cleanly on SIGTERM and SIGINT.

No pytest import here: this module is used by the layers below the plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Sequence

READY_PREFIX = "LBBENCH_READY "

# Linux prctl option: deliver a signal to the child when the thread that forked it dies.
_PR_SET_PDEATHSIG = 1


def positive_float(text: str) -> float:
    """``argparse`` type of the components' CLIs for seconds and factors: a finite number > 0
    (``nan`` and ``inf`` are refused: a wait must end, a scale must be a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def announce_ready(info: dict[str, Any]) -> None:
    """Print the readiness line that :func:`spawn` waits for (call once, after binding)."""
    sys.stdout.write(READY_PREFIX + json.dumps(info) + "\n")
    sys.stdout.flush()


def watch_parent(parent_pid: int | None, interval_s: float = 0.5) -> None:
    """Exit this process as soon as ``parent_pid`` is gone (a daemon thread polls for it).

    ``PR_SET_PDEATHSIG`` covers most cases, but only on Linux and only for the forking thread;
    the poll covers the rest (for example a parent that was itself re-parented).
    """
    if not parent_pid:
        return

    def _poll() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(interval_s)

    threading.Thread(target=_poll, name="lbbench-parent-watch", daemon=True).start()


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Make SIGTERM and SIGINT set ``stop`` so servers shut down through their normal path."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop for a server process: uvloop where installed (it is on Linux), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind a listening TCP socket (port 0 = any free port) and keep it, so no other process
    can take the port between choosing it and serving on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """Pick a free port for a third-party server that cannot bind port 0 itself.

    There is a short race window; callers retry the launch if the port was taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    # A new session: Ctrl-C in the terminal reaches pytest only, which then stops the children
    # in order instead of having every child die at once mid-request.
    os.setsid()


class SpawnError(RuntimeError):
    """A child process failed to start or to report readiness in time."""


@dataclass
class ManagedProcess:
    """A child process we started; ``stop()`` is idempotent and always reaps it."""

    name: str
    popen: subprocess.Popen[str]
    argv: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    log_path: Path | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Block until the child printed its ``LBBENCH_READY`` line; stop it and raise if not."""
        if not self._ready.wait(timeout_s) or not self.info:
            self.stop()
            raise SpawnError(
                f"{self.name} did not report readiness within {timeout_s:.0f} s "
                f"(exit code {self.popen.poll()}). Command: {' '.join(self.argv)}\n"
                f"Last log lines ({self.log_path}):\n{self.log_tail()}"
            )
        return self.info

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        if self._drain is not None:
            self._drain.join(timeout_s)  # it closes stdout at EOF, which follows the exit

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM) without waiting; :meth:`stop` reaps it."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class _LostInterrupts:
    """Catch a Ctrl-C that lands during ``fork`` (``with _LostInterrupts() as lost:``).

    Python runs its after-fork hooks (``logging`` releases its lock there) as plain Python
    code; a SIGINT whose ``KeyboardInterrupt`` is raised inside one cannot propagate, is
    reported as "unraisable" and dropped, and the run went on for its full length (3 runs in
    10 in our Ctrl-C test). Such an interrupt is caught on its way to ``sys.unraisablehook``;
    :attr:`caught` tells the caller to clean up and raise it again."""

    def __init__(self) -> None:
        self.caught: BaseException | None = None
        self._previous = sys.unraisablehook

    def _keep(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self.caught = unraisable.exc_value
        else:
            self._previous(unraisable)

    def __enter__(self) -> _LostInterrupts:
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._keep
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.unraisablehook = self._previous


def stop_all(procs: Sequence[ManagedProcess], timeout_s: float = 3.0) -> None:
    """Stop every process at once: SIGTERM to all, then wait for all within one shared
    ``timeout_s``, then SIGKILL whoever is left. Stopping ten servers one by one, each allowed
    its graceful shutdown, took longer than a user waits after Ctrl-C."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        # SIGKILL here, not through stop(): stop() would grant each survivor, one after
        # another, another graceful timeout_s first.
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.kill()
    for proc in procs:
        proc.stop(timeout_s=timeout_s)  # reap (all are dead or dying now), join its log drain


def launch(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    wait_ready_line: bool = True,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start ``argv`` as a child that dies with us; do not wait (see ``wait_ready``).

    Call this from the main thread: the parent-death signal fires when the *thread* that
    started the child exits, so a child launched from a pool thread would die with the pool.
    stderr goes to ``log_path``; stdout is read for the readiness line and then copied to the
    same log by a thread, so the child never blocks on a full pipe.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file: IO[str] = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed by the drain
    with _LostInterrupts() as interrupts:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if wait_ready_line else log_file,
            stderr=log_file,
            text=True,
            preexec_fn=_set_pdeathsig,
            env=env,
        )
    if interrupts.caught is not None:
        # Ctrl-C arrived while forking: the child is nobody's yet, so stop it here, then go on
        # with the interrupt as if it had arrived a moment later.
        popen.kill()
        popen.wait(timeout=5)
        if popen.stdout is not None:
            popen.stdout.close()
        log_file.close()
        raise KeyboardInterrupt from interrupts.caught
    proc = ManagedProcess(name=name, popen=popen, argv=list(argv), log_path=log_path)
    if not wait_ready_line:
        log_file.close()  # the child holds its own copy of the descriptor
        return proc

    def _drain() -> None:
        assert popen.stdout is not None
        with log_file, popen.stdout:
            for line in popen.stdout:
                if not proc.info and line.startswith(READY_PREFIX):
                    proc.info.update(json.loads(line[len(READY_PREFIX):]))
                    proc._ready.set()
                else:
                    log_file.write(line)
        proc._ready.set()  # EOF: the child exited; wait_ready sees no info and reports it

    proc._drain = threading.Thread(target=_drain, name=f"lbbench-drain-{name}", daemon=True)
    proc._drain.start()
    return proc


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    ready_timeout_s: float = 30.0,
    wait_ready_line: bool = True,
    env: dict[str, str] | None = None,
) -> ManagedProcess:
    """:func:`launch`, then wait for the readiness line (unless ``wait_ready_line`` is off)."""
    proc = launch(name, argv, log_path=log_path, wait_ready_line=wait_ready_line, env=env)
    if wait_ready_line:
        proc.wait_ready(ready_timeout_s)
    return proc


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[sys.executable, -m, module, *args, --parent-pid <us>]`` for one of our components."""
    return [sys.executable, "-m", module, *args, "--parent-pid", str(os.getpid())]
