"""A replay of encoder features for linear control: each state is encoded once, when it is seen.

Linear evaluation of a frozen representation (Farebrother et al. 2023, Sec. 5; the PVN code's
``online.py`` runs Acme DQN with the frozen encoder inside the actor and replays its features)
never needs frames again after acting, so the buffer stores ``phi(s_t)`` (float16 by default,
on the learner's device) instead of frames, and updates never re-run the torso.

Each env has its own circular stream; slot ``k`` of env ``e`` holds
``(phi(s_k), a_k, r_k, terminated_k, ended_k)`` where ``ended`` is terminated or truncated. An
``n``-step transition from slot ``k`` is::

    L        = n, or 1 + the offset of the first episode end in slots k .. k+n-1
    return   = sum_{i<L} gamma^i r_{k+i}
    discount = 0 if the episode terminated within the window, else gamma^n
    next     = phi(s_{k+n})   (needs slot k+n, i.e. the state the agent saw n steps later)

Windows cut by a time-limit truncation are not sampled (their bootstrap state was never stored;
a handful of transitions per 27,000-step episode), nor are windows that reach past the newest
slot or into overwritten ones.

End-to-end DQN learns from frames instead: with ``stack_size=4`` and ``feature_dim=(84, 84)``
each slot holds the newest frame of its state, stored once, and the stacks are rebuilt at sample
time from slots ``k-3 .. k`` of the same env, zero-padded before the episode's first slot (as
:class:`envs.FrameStack` pads while acting) and where those slots were overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pvn.replay.transitions import discount_vector, discounted_sum, window_length


@dataclass
class FeatureBatch:
    features: torch.Tensor  # (B, D) float32 (or uint8 (B, stack, H, W)) on the replay's device
    action: torch.Tensor  # (B,) int64
    ret: torch.Tensor  # (B,) float32 n-step return
    discount: torch.Tensor  # (B,) float32: gamma^n, or 0 after a termination
    next_features: torch.Tensor  # like features (any value where discount is 0)
    env: np.ndarray  # (B,) env of each transition (host)
    slot: np.ndarray  # (B,) absolute slot index in its env's stream (host)

    def split(self, n: int) -> list[FeatureBatch]:
        """``n`` equal batches of consecutive rows (one sample serves several updates, so the
        sampler's fixed costs are paid once)."""
        size = len(self.env) // n
        cols = [
            v.split(size) if isinstance(v, torch.Tensor) else np.split(v, n)
            for v in vars(self).values()
        ]
        return [FeatureBatch(*row) for row in zip(*cols, strict=True)]


def exact_view(t: torch.Tensor) -> torch.Tensor:
    """``t`` (contiguous) on a storage of exactly its own bytes, sharing its memory.

    ``torch.save`` writes a tensor's whole storage, so a slice of a large buffer would be saved
    as the whole buffer; a copy of the slice avoids that at the price of its size in memory.
    This view costs neither.
    """
    if not t.is_contiguous():
        raise ValueError("exact_view needs a contiguous tensor")
    size = t.element_size()
    storage = t.untyped_storage()[
        t.storage_offset() * size : (t.storage_offset() + t.numel()) * size
    ]
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, t.shape)


class FeatureReplay:
    """Per-env circular buffers of features with n-step sampling.

    Args:
        capacity: total slots over all envs (each env gets ``capacity // num_envs``).
        num_envs: parallel env streams.
        feature_dim: size of ``phi`` (or the frame shape, e.g. ``(84, 84)``, with frames).
        n_step, gamma: the n-step return.
        device, dtype: where and how features are stored (float16 halves memory; 1M x 4096
            float16 features are 8 GB).
        seed: the sampler's generator (state in :meth:`state_dict`).
        stack_size: 1 for features; the frame-stack depth (4) when slots hold frames.
    """

    # (each parameter is a setting of the replay the agents' configs choose)
    def __init__(
        self,
        capacity: int,
        num_envs: int,
        feature_dim: int,
        n_step: int,
        gamma: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float16,
        seed: int = 0,
        stack_size: int = 1,
    ) -> None:
        if capacity // num_envs <= n_step:
            raise ValueError(f"capacity={capacity}: needs more than n_step slots per env")
        self.num_envs, self.slots = num_envs, capacity // num_envs
        self.n_step, self.gamma = n_step, gamma
        self.device = torch.device(device)
        item = (feature_dim,) if isinstance(feature_dim, int) else tuple(feature_dim)
        # empty, not zeros: pages are touched as slots are written, so memory grows with what is
        # stored, not with capacity (a 1M-frame buffer is 7 GB). Unwritten slots are never read:
        # sampled windows lie in written slots, and stacks mask slots before the stored ones.
        self.features = torch.empty(num_envs, self.slots, *item, dtype=dtype, device=device)
        self.stack_size = stack_size
        shape = (num_envs, self.slots)
        self.action = np.zeros(shape, np.int64)
        self.reward = np.zeros(shape, np.float32)
        self.terminated = np.zeros(shape, bool)
        self.ended = np.zeros(shape, bool)
        self.count = np.zeros(num_envs, np.int64)  # slots ever written per env
        self.discounts = discount_vector(gamma, n_step)
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __len__(self) -> int:
        return int(np.minimum(self.count, self.slots).sum())

    def add(
        self,
        env_ids: np.ndarray,
        features: torch.Tensor,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Append one step of envs ``env_ids``: the features of the state acted in, the action,
        the (clipped) reward received and how the step ended."""
        e = np.asarray(env_ids, np.int64)
        k = self.count[e] % self.slots
        self.features[
            torch.as_tensor(e, device=self.device), torch.as_tensor(k, device=self.device)
        ] = features.to(self.device, self.features.dtype)
        self.action[e, k] = actions
        self.reward[e, k] = rewards
        self.terminated[e, k] = terminated
        self.ended[e, k] = np.asarray(terminated) | np.asarray(truncated)
        self.count[e] += 1

    def stored(self) -> torch.Tensor:
        """Every item the replay holds (each env's written slots, env by env)."""
        return torch.cat([self.features[e, : min(int(c), self.slots)] for e, c in
                          enumerate(self.count)])  # fmt: skip

    def start_new_episodes(self) -> None:
        """Cut every env's stream after its newest slot, as a time limit would (a resumed run
        starts fresh episodes): no window or stack crosses the cut."""
        e = np.flatnonzero(self.count > 0)
        self.ended[e, (self.count[e] - 1) % self.slots] = True

    def _windows(self, e: np.ndarray, k: np.ndarray):
        """Validity, length and termination of the n-step windows at absolute slots ``k``."""
        n, C = self.n_step, self.slots
        idx = k[:, None] + np.arange(n)
        written = idx < self.count[e][:, None]
        length, has_end = window_length(self.ended[e[:, None], idx % C] & written)
        terminal = has_end & self.terminated[e, (k + length - 1) % C]
        valid = np.where(has_end, terminal, k + n < self.count[e])
        valid &= k >= self.count[e] - C  # not overwritten
        return valid, length, terminal

    def valid_mask(self, env: int) -> tuple[np.ndarray, np.ndarray]:
        """(absolute slots stored for ``env``, whether each starts a sampleable transition)."""
        w = int(self.count[env])
        k = np.arange(max(0, w - self.slots), w)
        valid, _, _ = self._windows(np.full(len(k), env), k)
        return k, valid

    def sample(self, batch_size: int) -> FeatureBatch:
        """``batch_size`` transitions, uniform over the sampleable ones (rejection sampling)."""
        stored = np.minimum(self.count, self.slots)
        if stored.sum() == 0:
            raise ValueError("the replay is empty")
        parts = []  # (env, slot, length, terminal) of accepted candidates
        need = batch_size
        for _ in range(1000):
            m = 2 * need + 8
            e = self.rng.choice(self.num_envs, size=m, p=stored / stored.sum())
            k = self.count[e] - stored[e] + (self.rng.random(m) * stored[e]).astype(np.int64)
            valid, length, terminal = self._windows(e, k)
            parts.append(tuple(a[valid][:need] for a in (e, k, length, terminal)))
            need -= len(parts[-1][0])
            if need == 0:
                break
        else:
            raise ValueError("no sampleable transition in the replay yet")
        e, k, length, terminal = (np.concatenate(col) for col in zip(*parts, strict=True))
        C = self.slots
        idx = (k[:, None] + np.arange(self.n_step)) % C
        ret = discounted_sum(self.reward[e[:, None], idx], length, self.discounts)
        discount = np.where(terminal, 0.0, self.gamma**self.n_step).astype(np.float32)
        dev = self.device
        return FeatureBatch(
            features=self._states(e, k),
            action=torch.as_tensor(self.action[e, k % C], device=dev),
            ret=torch.as_tensor(ret, device=dev),
            discount=torch.as_tensor(discount, device=dev),
            next_features=self._states(e, k + self.n_step),
            env=e,
            slot=k,
        )

    def _states(self, e: np.ndarray, k: np.ndarray) -> torch.Tensor:
        """The states at absolute slots ``k`` of envs ``e``: float features, or uint8 stacks."""
        dev, C, s = self.device, self.slots, self.stack_size
        te = torch.as_tensor(e, device=dev)
        if s == 1:
            return self.features[te, torch.as_tensor(k % C, device=dev)].float()
        j = k[:, None] - np.arange(s - 1, -1, -1)  # (B, s) slots, oldest first
        stored = j >= np.maximum(0, self.count[e] - C)[:, None]
        ends = self.ended[e[:, None], j % C] & stored
        ends[:, -1] = False  # how the state's own step ended does not matter
        # a slot belongs to the state's episode if no episode ends at it or after it (before k)
        later_end = np.flip(np.logical_or.accumulate(np.flip(ends, 1), axis=1), 1)
        keep = torch.as_tensor(stored & ~later_end, device=dev)
        frames = self.features[te[:, None], torch.as_tensor(j % C, device=dev)]
        return frames * keep.view(*keep.shape, *(1,) * (frames.dim() - 2)).to(frames.dtype)

    def state_dict(self) -> dict[str, Any]:
        """The replay's state; ``features`` is one tensor per env over its written slots that
        shares the buffer's memory (no copy: a 1M-frame buffer is 7 GB, and a copy at each
        checkpoint doubled a long run's peak memory)."""
        return {
            "features": [
                exact_view(self.features[e, : min(int(c), self.slots)])
                for e, c in enumerate(self.count)
            ],
            "action": torch.from_numpy(self.action),
            "reward": torch.from_numpy(self.reward),
            "terminated": torch.from_numpy(self.terminated),
            "ended": torch.from_numpy(self.ended),
            "count": torch.from_numpy(self.count),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # one tensor per env (or, from older checkpoints, one (num_envs, filled, ...) tensor)
        for e, written in enumerate(state["features"]):
            self.features[e, : len(written)] = written
        for k in ("action", "reward", "terminated", "ended", "count"):
            getattr(self, k)[...] = state[k].numpy()
        self.rng.bit_generator.state = state["rng"]
