"""Backends as plugins: what a backend does, and the registry of one run's backends.

A :class:`Backend` deploys systems, launches the clients of an experiment, says what it would
create (``--lbbench-plan``), removes what a crashed run left behind (``--lbbench-cleanup``) and
releases what it holds at the end of the run. The built-in ones are ``local`` (this machine),
``sky`` (SkyPilot) and ``gke`` (the GKE gateway on real clusters); a plugin or ``conftest.py``
adds more with the ``pytest_lbbench_backends`` hook. A registry lives as long as one pytest
run (it is built with the run's configuration), so backends keep their state (a SkyPilot
session, say) on themselves, not in module globals.

No pytest import here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pytest_lbbench.backends.base import ClientLauncher, Deployment
    from pytest_lbbench.backends.ledger import ProcessLedger
    from pytest_lbbench.runconfig import LbbenchConfig
    from pytest_lbbench.systems import SystemSpec


class BackendUnavailable(Exception):
    """A backend cannot serve this system or run; the message says why and what to do (the
    plugin skips the system's tests with it)."""


@dataclass(frozen=True)
class BackendContext:
    """What a backend is given to act for one run."""

    config: LbbenchConfig
    ledger: ProcessLedger
    progress: Callable[[str], None] | None = None


@runtime_checkable
class Backend(Protocol):
    """One place systems can run."""

    name: str
    #: One line for ``--help`` and error messages.
    summary: str
    #: Whether its components honour ``--time-scale`` (simulated engines and links). A backend
    #: that runs real engines on real clocks cannot, and the run is refused at start-up.
    scales_time: bool

    def deployment(self, system: SystemSpec, ctx: BackendContext) -> Deployment:
        """A (not yet started) deployment of ``system``; :class:`BackendUnavailable` if this
        backend cannot run it."""
        ...

    def client_launcher(self, system: SystemSpec, ctx: BackendContext) -> ClientLauncher:
        """What runs the clients of an experiment on ``system``."""
        ...

    def plan(self, ctx: BackendContext) -> str | None:
        """What a run would create, for ``--lbbench-plan`` (``None``: nothing to provision)."""
        ...

    def cleanup(self, ctx: BackendContext) -> tuple[list[str], bool]:
        """Remove what the ledgers under the run's output directory list as still running;
        returns the lines to print and whether something could not be removed
        (:class:`BackendUnavailable` when it cannot even try)."""
        ...

    def close(self) -> list[str]:
        """Release whatever the run still holds (idempotent); returns errors, never raises."""
        ...


class BackendRegistry:
    """The backends of one run, by name, in registration order."""

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._backends: dict[str, Backend] = {}
        for backend in backends:
            self.add(backend)

    def add(self, backend: Backend) -> None:
        """Register ``backend``; ``ValueError`` if its name is taken or it lacks a method."""
        missing = [attr for attr in ("name", "summary", "scales_time", "deployment",
                                     "client_launcher", "plan", "cleanup", "close")
                   if not hasattr(backend, attr)]
        if missing:
            raise ValueError(f"{backend!r} is not a backend: it lacks {', '.join(missing)} "
                             "(see pytest_lbbench.backends.registry.Backend)")
        if backend.name in self._backends:
            raise ValueError(f"a backend named {backend.name!r} already exists "
                             f"(taken: {', '.join(self._backends)})")
        self._backends[backend.name] = backend

    def names(self) -> list[str]:
        return list(self._backends)

    def get(self, name: str) -> Backend:
        """The backend ``name``; ``ValueError`` lists the valid ones."""
        try:
            return self._backends[name]
        except KeyError:
            raise ValueError(f"unknown backend {name!r}. Valid backends: {', '.join(self._backends)}") from None

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def close_all(self) -> list[str]:
        """Close every backend; the errors of all of them (never raises)."""
        errors: list[str] = []
        for backend in self._backends.values():
            try:
                errors += backend.close()
            except Exception as exc:  # noqa: BLE001 - closing must reach every backend
                errors.append(f"{backend.name}: {exc}")
        return errors
