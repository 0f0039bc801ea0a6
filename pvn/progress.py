"""Progress bars (tqdm) with rate and ETA; silent when ``progress=false``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm.auto import tqdm


def bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kw) -> tqdm:
    """A tqdm bar showing rate and ETA; a no-op object when ``enabled`` is false."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        disable=not enabled,
        smoothing=0.05,
        # in a log file (not a terminal), one line every 30 s instead of ten a second
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
        **kw,
    )


def byte_bars(
    enabled: bool, unit: str = "B"
) -> Callable[[str, int], Callable[[int], None] | None] | None:
    """A factory for the logged data's ``progress`` argument (cache conversion): bars counting
    ``unit`` (bytes for :class:`replay.DQNReplayDataset`, checkpoints for RL Unplugged)."""
    if not enabled:
        return None

    def factory(desc: str, total: int) -> Callable[[int], None]:
        b = bar(total, desc, unit, unit_divisor=1024 if unit == "B" else 1000, leave=False)

        def update(n: int) -> None:
            b.update(n)
            if b.n >= total:
                b.close()

        return update

    return factory
