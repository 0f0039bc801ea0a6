"""Hash indicators: ``r_i(x) = 1[h_i(x) = 0]`` for a multiply-shift hash of the pixels.

``h_i(x) = ((a_i0 + sum_j a_ij x_j) mod P) mod m`` (Carter & Wegman 1979), with ``P = 2^13 - 1``
and ``m = round(1/p)`` bins, so each indicator fires on about a fraction ``p`` of states, with no
calibration. ``x`` is the whole uint8 stack. The sum is exact: ``a_ij < 2^16`` and ``x_j < 2^8``
over 28,224 pixels stay below 2^39, exactly representable in float64. (The PVN code folds each
product once with a Mersenne shift instead of reducing fully; the family of functions is the
same, individual hash values are not.)
"""

from __future__ import annotations

import torch

from auxiliary.base import TaskFamily, TaskOutput

MERSENNE_EXPONENT = 13


class IndicatorHash(TaskFamily):
    indicator = True

    def __init__(
        self,
        num_tasks: int,
        gen: torch.Generator,
        target_proportion: float = 0.01,
        input_shape: tuple[int, ...] = (4, 84, 84),
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.prime = 2**MERSENNE_EXPONENT - 1
        self.bins = max(2, round(1.0 / target_proportion))
        if self.bins >= self.prime:
            raise ValueError(f"tasks.target_proportion={target_proportion}: too small (< 1/P)")
        n = 1
        for d in input_shape:
            n *= d
        a = torch.randint(0, 2**16 - 1, (num_tasks, n + 1), generator=gen, dtype=torch.int64)
        self.register_buffer("a0", a[:, 0].to(torch.float64))
        self.register_buffer("a", a[:, 1:].to(torch.float64).T.contiguous())  # (pixels, T)

    @property
    def base_rate(self) -> float:
        return 1.0 / self.bins  # a universal hash spreads states evenly over the bins

    @torch.no_grad()
    def frozen(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1).to(torch.float64)
        s = torch.remainder(x @ self.a, self.prime)
        h = torch.remainder(torch.remainder(s + self.a0, self.prime), self.bins)
        return (h == 0).to(torch.float32)

    def from_frozen(self, frozen: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        return TaskOutput(rewards=frozen)
