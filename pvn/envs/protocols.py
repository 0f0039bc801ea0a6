"""ALE protocol presets: how the emulator is driven and what an agent sees.

``dopamine`` is the protocol the DQN Replay Dataset was logged with (Dopamine ``atari_lib``;
Machado et al. 2018): sticky actions with probability 0.25, frame-skip 4 with a max-pool over the
last two frames, 84x84 grayscale by area interpolation, no no-op starts, no fire on reset, no
life-loss termination, a 27,000-agent-step (108,000-frame) cap and the minimal action set.
``eval`` is the same without sticky actions, as in the PVN paper's online evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pvn.envs.errors import EnvError


@dataclass(frozen=True)
class Protocol:
    repeat_action_probability: float = 0.25
    frame_skip: int = 4
    max_episode_steps: int = 27_000  # agent steps (= 108k frames at frame-skip 4)
    episodic_life: bool = False
    fire_reset: bool = False
    full_action_space: bool = False
    img_size: int = 84


PROTOCOLS: dict[str, Protocol] = {
    "dopamine": Protocol(),
    "eval": Protocol(repeat_action_probability=0.0),
}


def get_protocol(protocol: str | Protocol, **overrides) -> Protocol:
    """A preset by name (or a :class:`Protocol` as is), with field overrides."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise EnvError(f"protocol={protocol!r}: unknown; choose one of {sorted(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    return replace(protocol, **overrides) if overrides else protocol
