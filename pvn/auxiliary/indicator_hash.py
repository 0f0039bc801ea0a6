"""Hash indicators: ``r_i(x) = 1[h_i(x) mod m = 0]`` for a multiply-shift hash of the pixels.

``m = round(1/p)`` bins, so each indicator fires on about a fraction ``p`` of states, with no
calibration; ``x`` is the whole uint8 stack, ``P = 2^13 - 1`` and the coefficients ``a_ij`` are
drawn uniformly from ``[0, 2^16 - 1)``. Two variants of ``h``:

* ``official`` (default; the PVN code's ``multiply_shift_hash_function``): the pixels are read in
  the official layout (height, width, frame) and each product wraps to 16 bits and is folded
  once by the Mersenne shift, ``w_j = (v_j & P) + (v_j >> 13)`` with ``v_j = a_ij x_j mod 2^16``;
  the folded sum ``u = a_i0 + sum_j w_j`` (exact: below 2^28) is folded once more,
  ``h = (u & P) + (u >> 13)``. ``h`` is not reduced mod ``P`` (it reaches ~2 x 10^4); the
  indicator is ``h mod m = 0``.
* ``exact`` (Carter & Wegman 1979 as the paper writes it): ``h = ((a_i0 + sum_j a_ij x_j) mod
  P) mod m`` with the sum reduced exactly (below 2^39, exact in float64), pixels in pvn's
  (frame, height, width) layout.

Both spread states evenly enough over the bins that the firing rate is about ``1/m``.
"""

from __future__ import annotations

import torch

from pvn.auxiliary.base import TaskFamily, TaskOutput

MERSENNE_EXPONENT = 13
VARIANTS = ("official", "exact")


class IndicatorHash(TaskFamily):
    indicator = True

    def __init__(
        self,
        gen: torch.Generator,
        *,
        num_tasks: int,
        target_proportion: float,
        variant: str,
        input_shape: tuple[int, ...] = (4, 84, 84),
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"tasks.variant={variant!r}: choose one of {', '.join(VARIANTS)}")
        self.num_tasks, self.variant = num_tasks, variant
        self.prime = 2**MERSENNE_EXPONENT - 1
        self.bins = max(2, round(1.0 / target_proportion))
        if self.bins >= self.prime:
            raise ValueError(f"tasks.target_proportion={target_proportion}: too small (< 1/P)")
        n = 1
        for d in input_shape:
            n *= d
        a = torch.randint(0, 2**16 - 1, (num_tasks, n + 1), generator=gen, dtype=torch.int64)
        # a[:, 0] is the offset a_i0; a[:, 1:] pairs with the pixels in the variant's layout
        self.register_buffer("coefficients", a)

    @property
    def base_rate(self) -> float:
        return 1.0 / self.bins  # a universal hash spreads states evenly over the bins

    @torch.no_grad()
    def frozen(self, obs: torch.Tensor) -> torch.Tensor:
        h = self._official(obs) if self.variant == "official" else self._exact(obs)
        return (torch.remainder(h, self.bins) == 0).to(torch.float32)

    def _exact(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.reshape(obs.shape[0], -1).to(torch.float64)
        a = self.coefficients.to(torch.float64)
        s = torch.remainder(x @ a[:, 1:].T, self.prime)
        return torch.remainder(s + a[:, 0], self.prime)

    def _official(self, obs: torch.Tensor, chunk: int = 8) -> torch.Tensor:
        x = obs.permute(0, 2, 3, 1).reshape(obs.shape[0], 1, -1).to(torch.int32)  # HWC order
        a = self.coefficients[:, 1:].to(torch.int32)
        P, shift = self.prime, MERSENNE_EXPONENT
        sums = []
        for xb in x.split(chunk):  # (b, 1, n) x (T, n): products below 2^24, exact in int32
            v = (xb * a) & 0xFFFF  # uint8 x uint16 wraps to 16 bits
            sums.append(((v & P) + (v >> shift)).sum(-1, dtype=torch.int64))
        u = torch.cat(sums) + self.coefficients[:, 0]
        return (u & P) + (u >> shift)

    def from_frozen(self, frozen: torch.Tensor, reward: torch.Tensor) -> TaskOutput:
        return TaskOutput(rewards=frozen)
