"""The DQN Replay (Dopamine) data path: read, write, cache, sample and prefetch."""

from replay.dataset import DQNReplayDataset
from replay.errors import ReplayError
from replay.prefetch import Prefetcher, TorchBatch
from replay.transitions import TransitionBatch
from replay.writer import DQNReplayWriter

__all__ = [
    "DQNReplayDataset",
    "DQNReplayWriter",
    "Prefetcher",
    "ReplayError",
    "TorchBatch",
    "TransitionBatch",
]
