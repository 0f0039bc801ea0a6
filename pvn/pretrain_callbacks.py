"""What runs around the pretraining loop (:func:`pvn.pretraining.train`), as callbacks.

The loop itself is the algorithm: every worker samples a batch and the team's rule updates
(``team.rule.step``). After each update every callback sees the :class:`Run`, in order:

* :class:`NonFiniteGuard` notes the first update whose loss was not finite, per worker, on the
  device (no host sync); the others ask it before they log or save, so a run that diverged stops
  with the last good checkpoint kept;
* :class:`Metrics` accumulates each update's metrics on the device and, every ``log_every``
  updates and at the end, logs their means, the representation diagnostics (srank, dormant
  units) over the last batches' features, the rates and the team's own metrics;
* :class:`Checkpoints` saves the team's state (learners, samplers, rule) every
  ``checkpoint_every`` updates and at the end, atomically, keeping the last ``keep``, and where
  a signal asked the run to stop (:mod:`pvn.preemption`);
* :class:`Progress` advances the progress bar.

The model is Stable-Baselines3's ``BaseCallback`` chained by ``CallbackList``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pvn import preemption
from pvn.checkpoint import save_checkpoint
from pvn.diagnostics import DiagnosticsConfig, dormant_fraction, srank
from pvn.distributed.team import Team
from pvn.errors import DIVERGED_EXIT, PVNError
from pvn.metrics import MetricsLogger
from pvn.networks.moe import MOE_KEYS


class NonFiniteLoss(PVNError):
    """The loss became NaN or infinite; the last good checkpoint is kept. ``pvn pretrain``
    exits 3 (every rank of a multi-process run), which a study may count as the run's outcome
    (:attr:`pvn.experiments.plan.Stage.diverged`)."""

    exit_code = DIVERGED_EXIT


@dataclass
class Run:
    """The pretraining loop's state, as its callbacks see it.

    Attributes:
        team: the workers, their data and the rule.
        feeds: each worker's batch prefetcher (their sampler states are checkpointed).
        run_dir: the run directory.
        steps: the run's length in updates.
        step: updates done.
        outs: the last update's metrics, one dict of device tensors per worker.
        last: the last logged metrics.
    """

    team: Team
    feeds: list[Any]
    run_dir: Path
    steps: int
    step: int = 0
    outs: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, float] = field(default_factory=dict)

    def due(self, every: int) -> bool:
        """Whether a periodic action is due after this update (every ``every`` and the last)."""
        return self.step % every == 0 or self.step == self.steps


class Callback:
    """A hook called after each update; :meth:`close` when the loop ends, however it ends."""

    def on_update(self, run: Run) -> None:
        """Called after each update (``run.step`` already counts it)."""

    def close(self) -> None:
        """Release what the callback holds (files, bars)."""


class NonFiniteGuard(Callback):
    """The first update with a non-finite loss, per worker, kept on the device."""

    def __init__(self, workers: int, device: str | torch.device) -> None:
        self.first_bad = torch.full((workers,), -1, dtype=torch.long, device=device)

    def on_update(self, run: Run) -> None:
        for j, m in enumerate(run.outs):  # {} for a worker that sat the round out
            if "loss" in m:
                bad = ~torch.isfinite(m["loss"]) & (self.first_bad[j] < 0)
                self.first_bad[j] = torch.where(bad, run.step - 1, self.first_bad[j])

    def check(self, run: Run, params: bool = False) -> None:
        """Stop the run (:class:`NonFiniteLoss`) if a loss, or with ``params`` a parameter,
        is no longer finite."""
        where = (f"stopped at update {run.step}; last good checkpoint kept in "
                 f"{run.run_dir / 'checkpoints'}")  # fmt: skip
        bad = run.team.first_bad(self.first_bad)
        if bad >= 0:
            raise NonFiniteLoss(f"non-finite loss at update {bad}; {where}")
        if params and not run.team.params_finite():
            raise NonFiniteLoss(f"non-finite parameters after update {run.step}; {where}")


#: updates between a team's checks for a stop request (a collective each)
STOP_SYNC_EVERY = 10

#: the per-update metrics that are averaged between logs (local blocks' losses too)
LOGGED = {"td_loss", "calibration_loss", "q_mean", "grad_norm", *MOE_KEYS}


class Metrics(Callback):
    """Sums of the first worker's per-update metrics on the device, read back and logged every
    ``every`` updates (TensorBoard and ``metrics.jsonl``), with the diagnostics.

    Args:
        guard: checked before each log.
        logger: where the metrics go (``None`` on a worker that does not write).
        every: updates between logs.
        batch_size: transitions per update (for samples per second).
        diagnostics: srank and dormancy over the features of the last
            ``ceil(states / batch_size)`` batches (one batch of 32 caps srank at 32).
        indicator: the tasks are indicators (their firing rates are logged).
        pbar: the progress bar whose postfix shows the TD loss and firing rate.
    """

    def __init__(self, guard: NonFiniteGuard, logger: MetricsLogger | None, every: int,
                 batch_size: int, diagnostics: DiagnosticsConfig, indicator: bool,
                 pbar: Any) -> None:  # fmt: skip
        self.guard, self.logger, self.every, self.pbar = guard, logger, every, pbar
        self.batch_size, self.indicator, self.tau = batch_size, indicator, diagnostics.dormant_tau
        self.recent: deque[torch.Tensor] = deque(maxlen=math.ceil(diagnostics.states / batch_size))
        self.t, self.n = time.perf_counter(), 0
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.fire: torch.Tensor | None = None
        self.fire_n = 0

    def _add(self, m: dict[str, torch.Tensor]) -> None:
        for k in m:
            if k in LOGGED or k.startswith("local_loss/"):
                self.sums[k] = self.sums.get(k, 0) + m[k]
                self.counts[k] = self.counts.get(k, 0) + 1
        r = m["rewards"].float()
        if self.indicator:
            s = r.sum(0)
            self.fire = s if self.fire is None else self.fire + s
            self.fire_n += r.shape[0]
        self.sums["reward_mean"] = self.sums.get("reward_mean", 0) + r.mean()
        self.counts["reward_mean"] = self.counts.get("reward_mean", 0) + 1
        if "features" in m:
            self.recent.append(m["features"])

    def _read(self) -> dict[str, float]:
        out = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        if self.fire is not None:
            rate = self.fire / self.fire_n
            out.update(fire_mean=float(rate.mean()), fire_min=float(rate.min()),
                       fire_max=float(rate.max()))  # fmt: skip
        if self.recent:
            features = torch.cat(list(self.recent))
            out["srank"] = int(srank(features))
            out["dormant_fraction"] = float(dormant_fraction(features, self.tau))
        self._reset()
        return out

    def on_update(self, run: Run) -> None:
        if run.outs[0]:
            self._add(run.outs[0])
        self.n += 1
        if not run.due(self.every):
            return
        self.guard.check(run)
        last = self._read()
        dt = time.perf_counter() - self.t
        last["updates_per_s"] = self.n / dt
        last["samples_per_s"] = self.n * self.batch_size / dt
        last.update(run.team.metrics(run.outs))
        self.t, self.n = time.perf_counter(), 0
        if self.logger is not None:
            self.logger.log(run.step, last)
        self.pbar.set_postfix({k: f"{last[k]:.3g}" for k in ("td_loss", "fire_mean") if k in last})
        run.last = last

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


class Checkpoints(Callback):
    """The team's state every ``every`` updates and at the end, after the guard's check of the
    parameters, with ``meta`` (what :func:`pvn.encoder.load_encoder` needs); the last ``keep``
    are kept. Asked to stop by a signal (:mod:`pvn.preemption`), it saves after the update in
    flight and raises :class:`pvn.preemption.Preempted`; a team of processes agrees on the
    update to stop at (one collective every ``STOP_SYNC_EVERY`` updates)."""

    def __init__(self, guard: NonFiniteGuard, every: int, keep: int, meta: dict,
                 world: int = 1) -> None:  # fmt: skip
        self.guard, self.every, self.keep, self.meta = guard, every, keep, meta
        self.stop_every = 1 if world == 1 else STOP_SYNC_EVERY

    def on_update(self, run: Run) -> None:
        stop = (run.step < run.steps and run.step % self.stop_every == 0
                and run.team.any_true(preemption.requested()))  # fmt: skip
        if not (run.due(self.every) or stop):
            return
        self.guard.check(run, params=True)
        state = run.team.state(run.feeds)
        if state is not None:  # only the writing worker holds the state
            state = {"format": 1, "step": run.step, **state, "meta": self.meta}
            save_checkpoint(run.run_dir, run.step, state, self.keep)
        if stop:
            raise preemption.stopped(f"at update {run.step}")


class Progress(Callback):
    """One tick of the progress bar per update."""

    def __init__(self, pbar: Any) -> None:
        self.pbar = pbar

    def on_update(self, run: Run) -> None:
        self.pbar.update(1)
