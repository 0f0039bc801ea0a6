"""The ``pvn`` command's entry point, kept free of heavy imports.

OpenMP reads ``OMP_WAIT_POLICY`` once, when PyTorch loads it, and ``pvn.cli`` imports PyTorch
(through the data path). So the wait policy of the thread plan (:mod:`pvn.threads`) is set here,
from ``threads.wait_policy=`` on the command line if given, before anything imports torch.
"""

from __future__ import annotations

import os
import sys

from pvn.threads import set_wait_policy


def wait_policy_from(argv: list[str]) -> str:
    """``threads.wait_policy=`` from the command line (the last one wins), else ``PASSIVE``."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("threads.wait_policy=")]
    return given[-1] if given and given[-1] not in ("null", "") else "PASSIVE"


def entry() -> None:
    set_wait_policy(wait_policy_from(sys.argv[1:]))
    from pvn.cli import main

    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`pvn ... | head`): not an error of pvn's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        code = 0
    sys.exit(code)
