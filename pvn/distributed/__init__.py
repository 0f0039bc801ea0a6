"""Multi-worker pretraining on torch.distributed (or simulated): ``distributed=...``."""

from pvn.distributed.aggregators import AGGREGATORS, craft, nearest_neighbour_average
from pvn.distributed.algorithms import DDP, FedAvgM, Gossip, Single, Worker
from pvn.distributed.comm import Comm, SimulatedComm, TorchComm

__all__ = [
    "AGGREGATORS",
    "DDP",
    "Comm",
    "FedAvgM",
    "Gossip",
    "SimulatedComm",
    "Single",
    "TorchComm",
    "Worker",
    "craft",
    "nearest_neighbour_average",
]
