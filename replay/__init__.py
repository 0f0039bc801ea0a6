"""Logged data: the :class:`LoggedData` protocol every consumer reads through, and the DQN
Replay (Dopamine) data path behind it (read, write, cache, sample, prefetch)."""

from replay.dataset import DQNReplayDataset
from replay.errors import ReplayError
from replay.prefetch import Prefetcher, TorchBatch
from replay.protocol import LoggedData, ShardLog
from replay.transitions import TransitionBatch
from replay.writer import DQNReplayWriter

__all__ = [
    "DQNReplayDataset",
    "DQNReplayWriter",
    "LoggedData",
    "Prefetcher",
    "ReplayError",
    "ShardLog",
    "TorchBatch",
    "TransitionBatch",
]
