"""Stopping a run when asked: a checkpoint where it stands, then exit 75 (``PREEMPTED_EXIT``).

A cluster warns a job before its time limit or a preemption (SLURM: the ``--signal`` that
submitit sets, USR2 by default; SIGTERM at the limit itself, then SIGKILL after ``KillWait``);
``kill`` and a stopping ``pvn experiment`` runner send SIGTERM. Without a handler the run dies
and loses everything since its last periodic checkpoint (up to ``checkpoint_every``: half an
hour of a 1M-step DQN on a CPU). Inside :func:`stop_on_signals` these signals only raise a
flag; the loops' checkpoint callbacks (:class:`pvn.agents.control.Checkpoints`,
:class:`pvn.pretrain_callbacks.Checkpoints`, ``pvn collect``'s loop) see it after the step in
flight, write a checkpoint there and raise :class:`Preempted`, and the command exits 75
(sysexits' ``EX_TEMPFAIL``: run it again). The same command resumes from that checkpoint, as
from a periodic one.

Outside the loops (building a task cache, opening data) the signals keep their default action:
that work is resumable by its own files.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pvn.errors import PREEMPTED_EXIT, PVNError

#: the signals that ask a run to stop at its next step with a checkpoint
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

_requested: list[int] = []  # the signals received inside stop_on_signals, in order


class Preempted(PVNError):
    """A run stopped by a signal after writing a checkpoint; the same command resumes it."""

    exit_code = PREEMPTED_EXIT


def requested() -> bool:
    """Whether a stop signal came inside :func:`stop_on_signals`."""
    return bool(_requested)


@contextmanager
def stop_on_signals(also: Callable[[int], None] | None = None) -> Iterator[None]:
    """Within it, :data:`SIGNALS` only mark a stop request (:func:`requested`); the previous
    handlers come back on leaving. Off the main thread (where Python cannot take signals) it
    does nothing.

    Args:
        also: called with each such signal's number as it comes (a runner passes them on to
            its stage's process).

    Returns:
        A context manager.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: object) -> None:
        _requested.append(signum)
        if also is not None:
            also(signum)

    _requested.clear()
    before = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _requested.clear()


def stopped(where: str) -> Preempted:
    """The one-line stop: which signal, where (``"at agent step 1200"``), and how to go on."""
    name = signal.Signals(_requested[0]).name if _requested else "another worker's signal"
    return Preempted(f"stopped by {name} {where}; the same command resumes")
