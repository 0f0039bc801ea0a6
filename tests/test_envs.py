"""ALE through envpool and ale-py: protocol presets, backend agreement, errors."""

from __future__ import annotations

import numpy as np
import pytest

from pvn.envs import EnvError, FrameStack, Protocol, make_atari


def _play(env, actions):
    frames = [env.reset()]
    for a in actions:
        frames.append(env.step(a).obs)
    return np.stack(frames)


@pytest.mark.parametrize("game, n_actions", [("Pong", 6), ("Breakout", 4)])
def test_backends_share_preprocessing_pixel_for_pixel(game, n_actions):
    """Sticky actions off, same actions: once the reset phase agrees (ale-py draws 0 or 1 no-op
    frames when noop_max=2; envpool always runs one), every frame is identical."""
    from ale_py.vector_env import AtariVectorEnv

    actions = np.random.default_rng(0).integers(0, n_actions, size=(150, 1))
    with make_atari(game, 1, "eval", backend="envpool") as env:
        ref = _play(env, actions)
    rom = {"Pong": "pong", "Breakout": "breakout"}[game]
    matches = 0
    for seed in range(4):
        v = AtariVectorEnv(
            rom,
            1,
            stack_num=1,
            noop_max=2,
            use_fire_reset=False,
            reward_clipping=False,
            repeat_action_probability=0.0,
        )
        frames = [v.reset(seed=seed)[0]] + [v.step(a)[0] for a in actions]
        v.close()
        matches += np.array_equal(np.stack(frames), ref)
    assert matches >= 1


def test_envpool_reset_is_one_noop_frame_after_ale_reset():
    """Pins the one documented protocol difference against ALE itself (its RAM)."""
    import envpool
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path("breakout"))
    ale.reset_game()
    ram_reset = ale.getRAM().copy()
    ale.act(0)
    ram_one_noop = ale.getRAM().copy()
    env = envpool.make(
        "Breakout-v5",
        env_type="gymnasium",
        num_envs=1,
        noop_max=1,
        use_fire_reset=False,
        repeat_action_probability=0.0,
    )
    _, info = env.reset()
    assert np.array_equal(info["ram"][0], ram_one_noop)
    assert not np.array_equal(info["ram"][0], ram_reset)


@pytest.mark.parametrize("backend", ["envpool", "ale_py"])
def test_sticky_actions_follow_the_protocol(backend):
    """Two envs, same actions: identical without sticky actions ('eval'), different with the
    'dopamine' protocol's 0.25 (each env has its own seed)."""
    actions = np.random.default_rng(1).integers(0, 4, size=(120, 1)).repeat(2, axis=1)
    with make_atari("Breakout", 2, "eval", seed=0, backend=backend) as env:
        f = _play(env, actions)
    assert np.array_equal(f[:, 0], f[:, 1])
    with make_atari("Breakout", 2, "dopamine", seed=0, backend=backend) as env:
        f = _play(env, actions)
    assert not np.array_equal(f[:, 0], f[:, 1])


@pytest.mark.parametrize("backend", ["envpool", "ale_py"])
def test_shapes_action_set_and_time_limit(backend):
    p = Protocol(repeat_action_probability=0.0, max_episode_steps=40)
    with make_atari("Pong", 3, p, backend=backend, stack=4) as env:
        assert env.num_actions == 6  # minimal action set
        obs = env.reset()
        assert obs.shape == (3, 4, 84, 84) and obs.dtype == np.uint8
        for t in range(1, 41):
            r = env.step(np.zeros(3, np.int32))
            assert r.truncated.all() == (t == 40), t
            assert not r.terminated.any()
        assert r.obs.shape == (3, 4, 84, 84)


def test_async_batches():
    with make_atari("Pong", 4, "eval", batch_size=2) as env:
        env._env.async_reset()
        r = env.recv()
        assert r.obs.shape == (2, 1, 84, 84) and len(set(r.env_id.tolist())) == 2
        env.send(np.zeros(2, np.int32), r.env_id)
        assert env.recv().obs.shape == (2, 1, 84, 84)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"game": "Pongg"}, "did you mean Pong"),
        ({"backend": "gym"}, "backend='gym': unknown"),
        ({"protocol": "atari100k"}, "protocol='atari100k': unknown"),
        ({"num_envs": 0}, "num_envs=0"),
        ({"batch_size": 9}, "batch_size=9"),
    ],
)
def test_bad_requests(kw, msg):
    args = {"game": "Pong", "num_envs": 2, **kw}
    with pytest.raises(EnvError, match=msg):
        make_atari(**args)


def test_frame_stack_zero_pads_new_episodes():
    fs = FrameStack(2, stack=4, frame_shape=(1, 1))
    for v in (1, 2, 3):
        fs.push(np.full((2, 1, 1), v, np.uint8))
    out = fs.push(np.full((2, 1, 1), 9, np.uint8), np.array([False, True]))
    assert out[0, :, 0, 0].tolist() == [1, 2, 3, 9]
    assert out[1, :, 0, 0].tolist() == [0, 0, 0, 9]
