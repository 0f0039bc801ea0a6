"""Multi-worker training rules, each written once for simulated and torchrun workers.

Every rule is called once per update with this process's workers and their batches
(:meth:`Algorithm.step`) and talks to the other workers only through :class:`Comm`.

* ``ddp`` -- data parallel SGD: gradients averaged over workers (``all_reduce``), then the run's
  optimizer steps everywhere: the same as one worker with an N-times batch.
* ``fedavg_m`` / ``scaffold_m`` -- Cheng et al. (ICLR 2024), client momentum: rounds of K local
  steps; in each, S of N workers (a seeded sampler, the same on every rank) start from the server
  model x and step ``x_i <- x_i - eta d_i`` with ``d_i = beta grad_i + (1 - beta) g``
  (SCAFFOLD-M: ``grad_i - c_i + c`` in place of ``grad_i``); the server sets
  ``g <- sum_i (x - x_i) / (eta S K)`` and ``x <- x - gamma g``. beta = 1 is FedAvg / SCAFFOLD.
  SCAFFOLD's control variates follow its option II: ``c_i+ = c_i - c + (x - x_i) / (K eta)``,
  ``c <- c + sum_i (c_i+ - c_i) / N``.
* ``fedavg_m_vr`` / ``scaffold_m_vr`` -- the same with a STORM-style correction (Cutkosky &
  Orabona 2019) carried across rounds: ``d_i += (1 - beta) (grad_i(x_i; xi) - grad_i(x_prev;
  xi))`` with the *same* batch xi at the previous round's server model ``x_prev`` (where the
  server direction g was estimated), i.e. ``d_i = grad_i(x_i) + (1 - beta)(g - grad_i(x_prev))``
  for FedAvg-M-VR. Each local step costs two backward passes. The paper's Algorithms 3-4 could
  not be read here (REFERENCES.md gives the correction; the anchor x_prev is our reading).
* ``dsgd`` / ``monna`` / ``trimmed_mean`` / ``median`` -- every worker takes a local Polyak
  momentum step (``m <- beta m + (1 - beta) grad``, ``theta <- theta - lr m``; MoNNA: beta 0.99),
  all-gathers the parameter vectors and replaces its own by the rule's aggregate of them
  (:mod:`pvn.distributed.aggregators`); Byzantine workers send crafted vectors instead.

The network's parameters form the exchanged vector of the parameter-averaging rules; each
worker's target network keeps following its own online network by Polyak averaging, and its task
calibration (and, with local learning, its auxiliary networks) stays local. DDP averages all of
them, so its workers stay identical. Workers on different games (``partition=games``) share only
the torso: their heads (other action sets) and tasks (other random nets) take plain local SGD
steps on their own gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector

from pvn.distributed.aggregators import AGGREGATORS, craft, flip_rewards, nearest
from pvn.distributed.comm import Comm
from pvn.learner import PVNLearner


@dataclass
class Worker:
    """One worker's learner. ``torso_only``: only the torso is shared with the others (workers
    on different games: each keeps its own head, tasks and auxiliary nets, trained locally)."""

    id: int
    learner: PVNLearner
    byzantine: bool = False
    torso_only: bool = False

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The shared parameters: what the rules exchange, average and step with momentum."""
        net = self.learner.online
        return list((net.torso if self.torso_only else net).parameters())

    def vector(self) -> torch.Tensor:
        return parameters_to_vector(self.params).detach()

    def load_vector(self, v: torch.Tensor) -> None:
        """Copy ``v`` into the parameters (``vector_to_parameters`` would make them views of it)."""
        with torch.no_grad():
            ps = self.params
            torch._foreach_copy_(
                ps,
                [t.view_as(p) for t, p in zip(v.split([p.numel() for p in ps]), ps, strict=True)],
            )

    def grads(self, params: list[torch.nn.Parameter] | None = None) -> torch.Tensor:
        ps = self.params if params is None else params
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
        )

    def set_grads(self, v: torch.Tensor, params: list[torch.nn.Parameter] | None = None) -> None:
        i = 0
        for p in self.params if params is None else params:
            n = p.numel()
            p.grad = v[i : i + n].view_as(p).clone()
            i += n


def _trainable(w: Worker) -> list[torch.nn.Parameter]:
    """Everything DDP averages: the network, the task calibration parameters and, with local
    learning, the auxiliary networks (only the torso for workers on different games)."""
    if w.torso_only:
        return w.params
    extra = [p for p in w.learner.tasks.parameters() if p.requires_grad]
    if getattr(w.learner, "local", None) is not None:
        extra += [p for p in w.learner.local.parameters() if p.requires_grad]
    return w.params + extra


class Algorithm:
    """A training rule: how this process's workers take one update together."""

    def __init__(self, comm: Comm | None, workers: list[Worker]) -> None:
        self.comm, self.workers = comm, workers

    def step(self, batches: list, step: int) -> list[dict[str, Any]]:
        """One update of this process's workers; their metrics, one dict per worker."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Single(Algorithm):
    """A plain run: one worker, its own optimizer, nothing exchanged."""

    def step(self, batches, step):
        return [self.workers[0].learner.update(batches[0], step)]


class DDP(Algorithm):
    def step(self, batches, step):
        outs = [w.learner.backward(b, step) for w, b in zip(self.workers, batches, strict=True)]
        mean = self.comm.all_reduce_sum([w.grads(_trainable(w)) for w in self.workers])
        mean /= self.comm.world
        for w in self.workers:
            w.set_grads(mean, _trainable(w))
        return [w.learner.apply(step, o) for w, o in zip(self.workers, outs, strict=True)]


class FedAvgM(Algorithm):
    """FedAvg-M (``scaffold=False``) and SCAFFOLD-M, their VR versions with ``vr``; the workers'
    optimizers are plain SGD(eta) (:mod:`pvn.distributed.team` refuses any other)."""

    # (keyword-only: the published rules' settings, one per parameter of configs/distributed/)
    def __init__(
        self,
        comm,
        workers,
        *,
        beta,
        eta,
        gamma,
        local_steps,
        participants,
        seed,
        scaffold: bool,
        vr: bool = False,
    ) -> None:
        super().__init__(comm, workers)
        self.beta, self.eta, self.gamma, self.K = beta, eta, gamma, local_steps
        self.S, self.scaffold, self.vr = participants, scaffold, vr
        self.rng = np.random.default_rng(seed)
        x = workers[0].vector()
        self.x, self.g = x.clone(), torch.zeros_like(x)
        self.x_prev = x.clone()  # the previous round's server model (VR)
        self.c = torch.zeros_like(x)
        self.c_i = {w.id: torch.zeros_like(x) for w in workers}
        self.chosen: set[int] = set()

    def step(self, batches, step):
        k = step % self.K
        if k == 0:  # a new round: the server picks S workers; they start from x
            self.chosen = set(self.rng.choice(self.comm.world, self.S, replace=False).tolist())
            for w in self.workers:
                w.load_vector(self.x)
        outs = []
        for w, b in zip(self.workers, batches, strict=True):
            if w.id not in self.chosen:
                outs.append({})
                continue
            old = self._grad_at(w, self.x_prev, b, step) if self.vr else None
            out = w.learner.backward(b, step)
            grad = raw = w.grads()
            if self.scaffold:
                grad = grad - self.c_i[w.id] + self.c
            d = self.beta * grad + (1.0 - self.beta) * self.g
            if old is not None:
                d += (1.0 - self.beta) * (raw - old)
            w.set_grads(d)
            outs.append(w.learner.apply(step, out))
        if k == self.K - 1:
            self._server()
        return outs

    @staticmethod
    def _grad_at(w: Worker, x: torch.Tensor, batch, step: int) -> torch.Tensor:
        """The network's gradient on ``batch`` at parameters ``x`` (the worker's are restored)."""
        now = w.vector()
        w.load_vector(x)
        w.learner.backward(batch, step)
        grad = w.grads()
        w.load_vector(now)
        return grad

    def _server(self) -> None:
        delta = [
            (self.x - w.vector()) if w.id in self.chosen else torch.zeros_like(self.x)
            for w in self.workers
        ]
        total = self.comm.all_reduce_sum(delta)
        if self.scaffold:
            dc = [torch.zeros_like(self.x) for _ in self.workers]
            for j, w in enumerate(self.workers):
                if w.id in self.chosen:
                    new = self.c_i[w.id] - self.c + delta[j] / (self.K * self.eta)
                    dc[j] = new - self.c_i[w.id]
                    self.c_i[w.id] = new
            self.c = self.c + self.comm.all_reduce_sum(dc) / self.comm.world
        self.g = total / (self.eta * self.S * self.K)
        self.x_prev = self.x
        self.x = self.x - self.gamma * self.g
        for w in self.workers:
            w.load_vector(self.x)

    def state_dict(self):
        return {
            "x": self.x,
            "x_prev": self.x_prev,
            "g": self.g,
            "c": self.c,
            "c_i": dict(self.c_i),
            "chosen": sorted(self.chosen),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state):
        self.x, self.g, self.c = state["x"], state["g"], state["c"]
        self.x_prev = state["x_prev"]
        self.c_i.update({k: v for k, v in state["c_i"].items() if k in self.c_i})
        self.chosen = set(state["chosen"])
        self.rng.bit_generator.state = state["rng"]


class Gossip(Algorithm):
    """Local Polyak momentum, then aggregation of all workers' parameter vectors."""

    # (keyword-only: the robust rule's published settings, one per parameter of distributed.yaml)
    def __init__(self, comm, workers, *, rule, f, beta, byzantine, attack, scale, seed) -> None:
        super().__init__(comm, workers)
        self.aggregate, self.f, self.beta = AGGREGATORS[rule], f, beta
        self.byzantine, self.attack, self.scale = sorted(byzantine), attack, scale
        if attack == "reward_flip":  # poisoned data, honest-looking vectors
            for w in workers:
                if w.id in self.byzantine:
                    flip_rewards(w.learner.tasks)
        self.gen = torch.Generator().manual_seed(seed)
        self.m = {w.id: torch.zeros_like(w.vector()) for w in workers}
        self.reference = workers[0].vector().clone()
        self.last: dict[str, float] = {}

    def step(self, batches, step):
        outs = []
        for w, b in zip(self.workers, batches, strict=True):
            out = w.learner.backward(b, step)
            self.m[w.id].mul_(self.beta).add_(w.grads(), alpha=1.0 - self.beta)
            w.set_grads(self.m[w.id])
            outs.append(w.learner.apply(step, out))
        V = self.comm.all_gather([w.vector() for w in self.workers])
        honest = [i for i in range(self.comm.world) if i not in self.byzantine]
        if self.byzantine and self.attack != "reward_flip":  # every rank crafts the same vectors
            bad = craft(
                self.attack,
                V[honest],
                self.reference,
                self.comm.world,
                self.f,
                self.scale,
                self.gen,
            )
            V[self.byzantine] = bad
        self.reference = V[honest].mean(0)
        kept_bad = []
        for w in self.workers:
            if w.byzantine:
                continue
            new = self.aggregate(V, w.id, self.f)
            kept_bad.append(_kept_byzantine(V, w.id, self.f, self.byzantine))
            w.load_vector(new)
        self.last = {"byzantine_kept": float(np.mean(kept_bad)) if kept_bad else 0.0}
        return outs

    def state_dict(self):
        return {"m": dict(self.m), "reference": self.reference, "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.m.update({k: v for k, v in state["m"].items() if k in self.m})
        self.reference = state["reference"]
        self.gen.set_state(state["gen"])


def _kept_byzantine(V: torch.Tensor, own: int, f: int, byzantine: list[int]) -> int:
    """How many Byzantine vectors a nearest-neighbour average around ``own`` keeps."""
    if not byzantine:
        return 0
    return len(set(nearest(V, own, f).tolist()) & set(byzantine))
