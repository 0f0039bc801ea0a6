"""ALE through envpool (batched, threaded) with an ale-py fallback, under protocol presets."""

from envs.atari import BACKENDS, AtariVecEnv, StepResult, check_game, make_atari
from envs.errors import EnvError
from envs.protocols import PROTOCOLS, Protocol, get_protocol
from envs.stacking import FrameStack

__all__ = [
    "BACKENDS",
    "PROTOCOLS",
    "AtariVecEnv",
    "EnvError",
    "FrameStack",
    "Protocol",
    "StepResult",
    "check_game",
    "get_protocol",
    "make_atari",
]
