"""Logged data: the :class:`LoggedData` protocol every consumer reads through, and the DQN
Replay (Dopamine) data path behind it (read, write, cache, sample, prefetch)."""

from pvn.replay.dataset import DQNReplayDataset
from pvn.replay.errors import ReplayError
from pvn.replay.prefetch import Prefetcher, TorchBatch
from pvn.replay.protocol import LoggedData, ShardLog
from pvn.replay.transitions import TransitionBatch
from pvn.replay.writer import DQNReplayWriter

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
