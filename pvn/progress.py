"""Progress bars (tqdm) with rate and ETA; silent when ``progress=false``."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm.auto import tqdm


class Bar(tqdm):
    """A tqdm bar whose rate and ETA can be measured afresh when the pace changes."""

    def restart_rate(self, done: int) -> None:
        """Measure the rate and ETA from here on, with ``done`` already done: after a resume
        (the steps done before it took no time here), or when a phase at another speed begins
        (an agent's learning after its random warm-up). Otherwise the rate mixes the two and
        the ETA is wrong for as long as the smoothing remembers the first phase."""
        self.reset()
        self.initial = self.n = self.last_print_n = done
        if not self.disable:
            self.refresh()


def bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kw) -> Bar:
    """A tqdm bar showing rate and ETA; a no-op object when ``enabled`` is false."""
    return Bar(
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
