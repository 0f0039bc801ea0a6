"""pvn: proto-value networks, representation learning for RL from logged Atari data."""

__version__ = "0.1.0"
