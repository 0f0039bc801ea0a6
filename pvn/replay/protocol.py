"""What the rest of pvn needs from logged data: the :class:`LoggedData` protocol.

Pretraining samples batches of stacked transitions; the task cache and the probes walk every
state a log holds; the distributed team splits a log across workers; a resumed run restores the
sampler. Each asks for it through this one small interface, so a new source of logged data (RL
Unplugged's TFRecords, a compressed store) is one class here, and nothing outside ``replay/``
knows how a source lays out its files. :class:`replay.DQNReplayDataset` (Dopamine's checkpoints)
is the first implementation.

Vocabulary: a log is split into **shards**, the units a source is read in and that workers can
divide among them (a Dopamine checkpoint, an RL Unplugged checkpoint split); a shard has
**slots**, addressed ``0 .. slots(shard) - 1``, each holding one logged state; a slot is
**valid** when a transition starts there under the source's rules. Batches are
:class:`replay.transitions.TransitionBatch` (their ``checkpoint`` column holds the shard id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pvn.replay.transitions import TransitionBatch


@dataclass(frozen=True)
class ShardLog:
    """A shard's written slots in the order they were logged, with what each step logged.

    Attributes:
        order: slot indices, oldest first.
        reward: the logged (clipped) reward of each of those slots, float32.
        terminal: whether the episode terminated at each of those slots.
    """

    order: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray


@runtime_checkable
class LoggedData(Protocol):
    """Logged transitions of one game: sampled, walked shard by shard, resumed exactly.

    Attributes:
        path: where the data lives (named in messages; keys caches derived from it).
        stack_size: frames per state (4).
        shards: the shard ids this dataset reads, in order.
    """

    path: Path
    stack_size: int

    @property
    def shards(self) -> list[int]: ...

    def __len__(self) -> int:
        """Valid transitions over all shards (what :meth:`sample` draws from uniformly)."""
        ...

    def num_actions(self) -> int:
        """Actions of the logging agent's action set (the largest logged action + 1)."""
        ...

    def slots(self, shard: int) -> int:
        """Addressable slots of ``shard``."""
        ...

    def valid_mask(self, shard: int) -> np.ndarray:
        """Bool over the slots of ``shard``: where a transition starts."""
        ...

    def gather(self, shard: int, indices: Sequence[int] | np.ndarray) -> TransitionBatch:
        """The transitions at slots ``indices`` of ``shard`` (validity not checked)."""
        ...

    def logged(self, shard: int) -> ShardLog:
        """The shard's written slots in logged order, with their rewards and terminals."""
        ...

    def sample(self, batch_size: int, out: TransitionBatch | None = None) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly from the valid ones (into ``out``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state, so a resumed run draws the batches it would have drawn."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
