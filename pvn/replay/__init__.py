"""Logged data: the :class:`LoggedData` protocol every consumer reads through, and its sources:
the DQN Replay (Dopamine) data path (read, write, cache, sample, prefetch) and RL Unplugged's
Atari episodes (:mod:`replay.rlu`, :class:`RLUDataset`)."""

from pvn.replay.dataset import DQNReplayDataset
from pvn.replay.errors import ReplayError
from pvn.replay.prefetch import Prefetcher, TorchBatch
from pvn.replay.protocol import LoggedData, ShardLog
from pvn.replay.rlu_dataset import RLUDataset
from pvn.replay.transitions import TransitionBatch
from pvn.replay.writer import DQNReplayWriter

__all__ = [
    "DQNReplayDataset",
    "DQNReplayWriter",
    "LoggedData",
    "Prefetcher",
    "RLUDataset",
    "ReplayError",
    "ShardLog",
    "TorchBatch",
    "TransitionBatch",
]
