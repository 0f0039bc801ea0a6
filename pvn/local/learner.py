"""The PVN learner with a locally trained torso (DGL, MAN, MAN++, AugLocal).

Each update: the task rewards and the TD targets ``y`` are computed once, the targets from the
full target network with stop-gradient -- the RL counterpart of a class label. Then block k runs on
the detached output of block k-1, its auxiliary network maps its output to ``(B, tasks,
actions)``, and the PVN TD loss against ``y`` is back-propagated *at once*, so block k's graph is
freed before block k+1 runs: only one block's activations are ever alive, which is where the
memory saving comes from (InfoPro, Wang et al. ICLR 2021; the methods' papers). The last block is
trained by the real head and loss. Gradients accumulate; one optimizer step per batch.
"""

from __future__ import annotations

from typing import Any

import torch

from pvn.learner import PVNLearner
from pvn.local.methods import LocalAux
from pvn.replay import TorchBatch


class LocalPVNLearner(PVNLearner):
    """:class:`pvn.learner.PVNLearner` whose torso is trained block by block through ``local``."""

    def __init__(self, *args, local: LocalAux, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.local = local
        self._online_params += [p for p in local.parameters() if p.requires_grad]

    def backward(self, batch: TorchBatch, step: int) -> dict[str, Any]:
        obs, action, _, next_obs, terminal = batch[:5]
        out: dict[str, torch.Tensor] = {}
        td_on = step >= self.cfg.warmup_steps
        self._zero_grad()
        with self.autocast(obs.device):
            tasks = self.task_output(batch)
            calibration = self._calibration_loss(tasks, out)
        if calibration.requires_grad:
            calibration.backward()
        loss = calibration.detach()
        if td_on:
            with self.autocast(obs.device):
                y = self.td_targets(tasks.rewards, next_obs, terminal)
            x = self.online.torso.prepare(obs)
            last = len(self.local.blocks) - 1
            for k, block in enumerate(self.local.blocks):
                with self.autocast(obs.device):
                    h = block(x)
                    if k < last:
                        block_loss = self.td_loss(self.local(k, h), action, y)
                        out[f"local_loss/{self.local.names[k]}"] = block_loss.detach()
                    else:
                        q = self.online.head(h)
                        block_loss = self.td_loss(q, action, y, out) + self._moe_loss(out)
                        out["features"] = h.detach()
                block_loss.backward()  # frees block k's graph before block k+1 runs
                loss = loss + block_loss.detach()
                x = h.detach()
                del h, block_loss
        out["loss"] = loss
        out["rewards"] = tasks.rewards.detach()
        out["calibrating"] = tasks.calibration_loss is not None
        return out

    def apply(self, step: int, out: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().apply(step, out)
        if step >= self.cfg.warmup_steps:
            self.local.after_step()  # MAN: the EMA copies follow the stepped live layers
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "local": self.local.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.local.load_state_dict(state["local"])
