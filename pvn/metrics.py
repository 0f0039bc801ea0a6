"""Run metrics: TensorBoard (``run_dir/tb``) and ``run_dir/metrics.jsonl``, one record per log.

TensorBoard keys follow one convention (``losses/...``, ``tasks/...``, ``repr/...``,
``charts/...``); ``metrics.jsonl`` uses the bare names (``td_loss``, ``fire_mean``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

TB_GROUP = {
    "td_loss": "losses",
    "calibration_loss": "losses",
    "q_mean": "losses",
    "loss": "losses",
    "episodic_return": "charts",
    "eval_return": "charts",
    "steps_per_s": "charts",
    "fire_mean": "tasks",
    "fire_min": "tasks",
    "fire_max": "tasks",
    "reward_mean": "tasks",
    "srank": "repr",
    "dormant_fraction": "repr",
    "grad_norm": "charts",
    "updates_per_s": "charts",
    "samples_per_s": "charts",
}


class MetricsLogger:
    def __init__(self, run_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.tb = SummaryWriter(str(self.run_dir / "tb"))
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 (kept open)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            tag = k if "/" in k else f"{TB_GROUP.get(k, 'charts')}/{k}"  # local_loss/<block>
            self.tb.add_scalar(tag, v, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self._jsonl.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run's ``metrics.jsonl``, one dict per log, in step order. A run resumed from a
    checkpoint logs again the steps after it; the killed attempt's records of those steps are
    dropped, so each step appears as the finished run computed it."""
    out: list[dict] = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last = out[-1] if out else None
        if last and (rec["step"] < last["step"] or (rec["step"] == last["step"]
                                                     and rec.keys() == last.keys())):  # fmt: skip
            out = [r for r in out if r["step"] < rec["step"]]  # a resume: these were redone
        out.append(rec)
    return out
