"""Task outputs computed once per logged state, like the frames: the frozen part of the rewards.

Why: the PVN tasks' random networks (and the hashes) are fixed functions of the state
(:meth:`auxiliary.TaskFamily.frozen`). Recomputing them for every sampled batch costs, on CPU, as
much as the nature torso's whole training step (``scripts/bench_pretrain.py``). A run that draws
more samples than the data holds slots (``steps * batch_size >= slots``; the paper draws 400M
samples from 50M states) computes them once per slot instead and looks them up by (shard,
slot) at update time: one gather on the learner's device, no host sync.

Slots are computed in order at a fixed chunk size, so the values do not depend on which batches
were drawn (a conv's last bit can depend on the batch size), and are kept in
``run_dir/task_outputs/<key>/ckpt.<id>.npy`` (float32, written atomically; the key hashes the
data path and the frozen task tensors, so workers on different games never share a file): a
resumed run reads the same values, so resume stays bit-exact. The learned parts (the
indicators' biases) are applied after the lookup.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from pvn.auxiliary import TaskFamily
from pvn.progress import bar
from pvn.replay import LoggedData
from pvn.replay.cache import claimed

CHUNK = 32


class TaskOutputCache:
    """``cache(shard, index) -> (B, T)``: the stored frozen task outputs of those slots."""

    def __init__(self, values: torch.Tensor, offsets: torch.Tensor) -> None:
        self.values, self.offsets = values, offsets

    def __call__(self, shard: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.values[self.offsets[shard] + index]


AUTO_MAX_BYTES = 8 * 2**30  # ``auto`` keeps the table (in memory, on the device) below this


def cache_wanted(
    mode: bool | str, steps: int, batch_size: int, slots: int, num_tasks: int = 1
) -> bool:
    """``mode`` true/false, or ``auto``: only when the run draws at least as many samples as there
    are slots (otherwise computing every slot once costs more than computing the batches) and
    the float32 table fits in :data:`AUTO_MAX_BYTES`."""
    if mode == "auto":
        return steps * batch_size >= slots and slots * num_tasks * 4 <= AUTO_MAX_BYTES
    return bool(mode)


def build_task_cache(
    ds: LoggedData,
    tasks: TaskFamily,
    directory: str | Path,
    device: str | torch.device,
    autocast: AbstractContextManager | None = None,
    progress: bool = False,
) -> TaskOutputCache:
    """Load (or compute and store) the frozen outputs of ``tasks`` for every slot of ``ds``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    ids = ds.shards
    caps = [ds.slots(c) for c in ids]
    arrays = []
    size = sum(caps) * tasks.num_tasks * 4 / 2**20  # float32 per slot and task
    desc = f"task outputs in {directory} ({size:.1f} MB)"
    with bar(sum(caps), desc, "states", progress) as pbar:
        for ckpt, cap in zip(ids, caps, strict=True):
            path = directory / f"ckpt.{ckpt}.npy"
            arr = _load(path, (cap, tasks.num_tasks))
            if arr is None:
                arr = _compute(ds, ckpt, cap, tasks, path, device, autocast, pbar)
            else:
                pbar.update(cap)
            arrays.append(arr)
    values = torch.from_numpy(np.concatenate(arrays)).to(device)
    offsets = torch.zeros(max(ids) + 1, dtype=torch.int64)
    offsets[torch.tensor(ids)] = torch.tensor(np.cumsum([0, *caps[:-1]]), dtype=torch.int64)
    return TaskOutputCache(values, offsets.to(device))


def _key(ds: LoggedData, tasks: TaskFamily) -> str:
    """A short hash of the data path and the task family's frozen (not learned) tensors."""
    h = hashlib.sha1(str(ds.path.resolve()).encode())
    for name, t in sorted(tasks.state_dict(keep_vars=True).items()):
        if not t.requires_grad:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def _load(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The stored array if it is complete and of the expected shape, else ``None``."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.float32 else None


@torch.no_grad()
def _compute(ds, ckpt, cap, tasks, path, device, autocast, pbar) -> np.ndarray:
    """Checkpoint ``ckpt``'s outputs into ``path``: under its lock (:func:`replay.cache.claimed`:
    workers sharing the directory compute it once, and a killed run's temporary file goes),
    written to a temporary file and renamed into place once complete."""
    shape = (cap, tasks.num_tasks)
    with claimed(path.parent, path.name) as tmp:
        arr = _load(path, shape)
        if arr is not None:  # another process computed it meanwhile
            pbar.update(cap)
            return arr
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for start in range(0, cap, CHUNK):
            idx = np.arange(start, min(start + CHUNK, cap))
            obs = torch.from_numpy(ds.gather(ckpt, idx).observation).to(device)
            with autocast or nullcontext():
                out[idx] = tasks.frozen(obs).float().cpu().numpy()
            pbar.update(len(idx))
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def attach_task_cache(learner, ds: LoggedData, mode: bool | str, run_dir: Path, steps: int,
                      batch_size: int, device: torch.device, progress: bool) -> None:  # fmt: skip
    """Give ``learner`` (a :class:`pvn.learner.PVNLearner`) the stored task outputs of ``ds`` when
    the run asks for them and the task family has a frozen part. A run that stored them keeps
    using them, so a resumed run whose ``steps`` grew does not switch paths.

    Args:
        learner: the learner whose tasks' frozen outputs are stored.
        ds: its logged data.
        mode: ``data.task_cache``: ``auto`` (when the run draws at least as many transitions as
            the data holds), true or false.
        run_dir: the run directory (the outputs go in ``run_dir/task_outputs``).
        steps: the run's updates.
        batch_size: transitions per update.
        device: where the task networks run.
        progress: show a progress bar while computing them.
    """
    if mode is False or not learner.tasks.cacheable:
        return
    directory = _directory(run_dir, ds, learner.tasks)
    slots = sum(ds.slots(c) for c in ds.shards)
    stored = any(directory.glob("ckpt.*.npy"))
    if stored or cache_wanted(mode, steps, batch_size, slots, learner.tasks.num_tasks):
        learner.task_cache = build_task_cache(
            ds, learner.tasks, directory, device, learner.autocast(device), progress
        )


def _directory(run_dir: str | Path, ds: LoggedData, tasks: TaskFamily) -> Path:
    """Where a run keeps ``tasks``' outputs on ``ds``."""
    return Path(run_dir) / "task_outputs" / _key(ds, tasks)


def task_rewards(tasks: TaskFamily, ds: LoggedData, run_dir: str | Path, chunk: int = CHUNK):
    """``tasks``' rewards at any slots of ``ds`` (:data:`pvn.analysis.probes.TaskRewards`):
    the frozen outputs the run stored for a shard where it has them, else computed from the
    shard's frames (nothing is written: a stored file would switch a resumed run that did not
    store them onto the stored path), then the learned parts as they are now; a family with no
    frozen part from the logged rewards.

    Args:
        tasks: a trained run's task family (its calibration as trained).
        ds: the log.
        run_dir: the run whose ``task_outputs`` to read.
        chunk: slots per call of the tasks (the cache's: a conv's last bit can depend on it).

    Returns:
        ``rewards(shard, slots, logged_rewards) -> (len(slots), K)`` float32.
    """
    directory = _directory(run_dir, ds, tasks)

    @torch.no_grad()
    def rewards(shard: int, slots: np.ndarray, logged: np.ndarray) -> np.ndarray:
        stored = None
        if tasks.cacheable:
            stored = _load(directory / f"ckpt.{shard}.npy", (ds.slots(shard), tasks.num_tasks))
        out = []
        for s in range(0, len(slots), chunk):
            idx = np.asarray(slots[s : s + chunk], np.int64)
            if not tasks.cacheable:
                frozen = None
            elif stored is not None:
                frozen = torch.from_numpy(np.ascontiguousarray(stored[idx]))
            else:  # as the cache computes them: the stacks of those slots
                frozen = tasks.frozen(torch.from_numpy(ds.gather(shard, idx).observation))
            reward = torch.from_numpy(np.asarray(logged[s : s + chunk], np.float32))
            out.append(tasks.from_frozen(frozen, reward).rewards.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, tasks.num_tasks), np.float32)

    return rewards
