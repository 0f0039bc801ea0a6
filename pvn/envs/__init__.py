"""ALE through envpool (batched, threaded) with an ale-py fallback, under protocol presets."""

from pvn.envs.atari import BACKENDS, AtariVecEnv, StepResult, check_game, make_atari
from pvn.envs.errors import EnvError
from pvn.envs.protocols import PROTOCOLS, Protocol, get_protocol
from pvn.envs.stacking import FrameStack

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
