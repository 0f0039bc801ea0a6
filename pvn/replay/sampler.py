"""Uniform sampling over the valid slots of memory-mapped shards: what every
:class:`replay.LoggedData` implementation shares (the Dopamine logs, RL Unplugged).

A source turns each shard into slot arrays (``observation`` frames, ``action``, ``reward``,
``terminal`` in Dopamine's convention: the episode ended after the slot's action) and a validity
mask by its own rule; :class:`ShardSampler` keeps the masks bit-packed (1 bit per slot, so the
process's memory does not grow with the number of shards; frames live in the page cache),
draws slots uniformly over the valid ones and gathers stacked transitions
(:func:`replay.transitions.gather_into`), with the generator's state for an exact resume.

``sample_run = K > 1`` (``data.sample_run``; off by default) draws the slots in windows of K
consecutive valid ones instead: every valid slot keeps the same probability of being drawn, but
a batch then holds runs of neighbouring transitions, which share their frames and the compressed
chunks those sit in, so a compressed store decodes about K times fewer frames per transition
(``docs/store.md`` measures the speed and the effect on learning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pvn.replay.errors import ReplayError
from pvn.replay.transitions import TransitionBatch, discount_vector, gather_into


class ShardSampler:
    """Shards of slot arrays with their validity masks, sampled uniformly.

    Args:
        ids: the shard ids, in order.
        shards: each shard's slot arrays (``observation``, ``action``, ``reward``,
            ``terminal``, ``id`` and ``capacity``).
        masks: each shard's validity mask over its slots.
        stack_size: frames per state.
        n_step: update horizon; rewards are discounted sums truncated at the first terminal.
        gamma: discount of the n-step reward.
        seed: seed of the sampling generator (its state is in :meth:`state_dict`).
    """

    def __init__(self, ids: Sequence[int], shards: Sequence[Any], masks: Sequence[np.ndarray],
                 stack_size: int, n_step: int, gamma: float, seed: int) -> None:  # fmt: skip
        self._ids = [int(i) for i in ids]
        self._shards = list(shards)
        self._packed = [np.packbits(m) for m in masks]
        self._counts = np.asarray([int(m.sum()) for m in masks], dtype=np.int64)
        self.stack_size, self.n_step, self.gamma = stack_size, n_step, gamma
        self._discount = discount_vector(gamma, n_step)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._run = 1

    @property
    def sample_run(self) -> int:
        """Transitions drawn per window of consecutive slots (1: each drawn on its own)."""
        return self._run

    @sample_run.setter
    def sample_run(self, k: int) -> None:
        if int(k) != k or k < 1:
            raise ReplayError(f"sample_run={k}: must be an integer >= 1")
        self._run = int(k)

    def __len__(self) -> int:
        return int(self._counts.sum())

    @property
    def shards(self) -> list[int]:
        """The shard ids (:class:`replay.LoggedData`)."""
        return list(self._ids)

    def _pos(self, shard: int) -> int:
        try:
            return self._ids.index(int(shard))
        except ValueError:
            raise ReplayError(f"shard {shard} is not one of {self._ids}") from None

    def slots(self, shard: int) -> int:
        """Addressable slots of ``shard``."""
        return self._shards[self._pos(shard)].capacity

    def valid_counts(self) -> dict[int, int]:
        """Number of valid transitions in each shard."""
        return dict(zip(self._ids, self._counts.tolist(), strict=True))

    def valid_mask(self, shard: int) -> np.ndarray:
        """Bool over the slots of ``shard``: where a transition starts."""
        pos = self._pos(shard)
        return np.unpackbits(self._packed[pos], count=self._shards[pos].capacity).astype(bool)

    def _is_valid(self, pos: int, idx: np.ndarray) -> np.ndarray:
        return ((self._packed[pos][idx >> 3] >> (7 - (idx & 7))) & 1).astype(bool)

    def gather(self, shard: int, indices: Sequence[int] | np.ndarray) -> TransitionBatch:
        """The transitions at slots ``indices`` of ``shard`` (validity is not checked)."""
        pos = self._pos(shard)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        cap = self._shards[pos].capacity
        if idx.size and (idx.min() < 0 or idx.max() >= cap):
            raise ReplayError(f"indices out of range [0, {cap}) for shard {shard}")
        out = TransitionBatch.empty(len(idx), self.stack_size)
        gather_into(self._shards[pos], idx, out, 0, self.stack_size, self._discount)
        return out

    def sample_indices(self, batch_size: int) -> list[tuple[int, np.ndarray]]:
        """Draw ``batch_size`` slots uniformly over the valid transitions of all shards.

        Returns ``(shard position, slots)`` groups. The number per shard is multinomial with
        probabilities proportional to the valid counts; within a shard, slots are drawn
        uniformly and invalid ones rejected (valid fractions are ~99% in real data). With
        :attr:`sample_run` K > 1: :meth:`_windows`.
        """
        if self._run > 1:
            return self._windows(batch_size)
        per = self._rng.multinomial(batch_size, self._counts / self._counts.sum())
        return [(pos, self._uniform(pos, m)) for pos, m in enumerate(per.tolist()) if m]

    def _uniform(self, pos: int, m: int) -> np.ndarray:
        """``m`` valid slots of shard ``pos``, each drawn uniformly (rejection of invalid ones)."""
        cap, frac = self._shards[pos].capacity, self._counts[pos] / self._shards[pos].capacity
        got: list[np.ndarray] = []
        need = m
        while need > 0:
            cand = self._rng.integers(0, cap, size=int(need / frac * 1.1) + 8)
            cand = cand[self._is_valid(pos, cand)][:need]
            got.append(cand)
            need -= len(cand)
        return np.concatenate(got)

    def _windows(self, batch_size: int) -> list[tuple[int, np.ndarray]]:
        """``batch_size // K`` windows of K consecutive valid slots (and one of the remainder),
        spread over the shards in proportion to their valid counts: each window starts at a
        valid slot drawn uniformly and holds the valid slots that follow it in slot order
        (wrapping, as the circular buffer does). A valid slot is in exactly L of the windows
        of length L, so every one is drawn with the probability of independent draws."""
        k, rng = self._run, self._rng
        probs = self._counts / self._counts.sum()
        full, rest = divmod(batch_size, k)
        lengths: dict[int, list[int]] = {}
        for pos, n in enumerate(rng.multinomial(full, probs).tolist()):
            if n:
                lengths[pos] = [k] * n
        if rest:
            lengths.setdefault(int(rng.choice(len(probs), p=probs)), []).append(rest)
        return [(pos, self._following(pos, self._uniform(pos, len(ls)), ls))
                for pos, ls in sorted(lengths.items())]  # fmt: skip

    def _following(self, pos: int, starts: np.ndarray, lengths: list[int]) -> np.ndarray:
        """For each valid ``starts[i]``, it and the valid slots after it, ``lengths[i]`` in
        all (circular slot order), concatenated."""
        cap, span = self._shards[pos].capacity, max(lengths) + 16
        cand = (starts[:, None] + np.arange(span)) % cap  # invalid gaps are a few slots
        valid = self._is_valid(pos, cand)
        want = np.asarray(lengths)[:, None]
        take = valid & (np.cumsum(valid, axis=1) <= want)
        short = take.sum(1) < want[:, 0]
        if not short.any():
            return cand[take]
        ranked = np.flatnonzero(self.valid_mask(pos))  # a long gap: walk the valid slots
        out = []
        for i, s in enumerate(starts.tolist()):
            if short[i]:
                r = int(np.searchsorted(ranked, s))
                out.append(ranked[(r + np.arange(lengths[i])) % len(ranked)])
            else:
                out.append(cand[i][take[i]])
        return np.concatenate(out)

    def sample(self, batch_size: int, out: TransitionBatch | None = None) -> TransitionBatch:
        """A batch of ``batch_size`` transitions drawn uniformly from the valid ones.

        Rows are grouped by shard (the order within a batch carries no meaning). ``out`` may
        be a preallocated batch to fill, avoiding allocations in a hot loop.
        """
        if batch_size < 1:
            raise ReplayError(f"batch_size={batch_size}: must be >= 1")
        if out is None:
            out = TransitionBatch.empty(batch_size, self.stack_size)
        start = 0
        for pos, idx in self.sample_indices(batch_size):
            gather_into(self._shards[pos], idx, out, start, self.stack_size, self._discount)
            start += len(idx)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The sampler's generator state (JSON-serialisable)."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
