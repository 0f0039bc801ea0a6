"""Background sampling: batches are drawn and gathered on a thread while the learner computes.

numpy's gathers release the GIL, so a sampling thread overlaps with the learner's torch ops.
Batches are gathered straight into torch-owned (pinned, when the device is CUDA) memory and
moved with ``non_blocking=True``, so the hot loop never waits on a host copy.

Host buffers are a ring allocated once (fresh multi-MB allocations per batch cost page faults
that halve throughput), so **a batch is valid until the next one is taken**: the learner must use
(or copy) it before calling ``next`` again, as with any reusing loader. On CUDA a buffer is
recycled only after the event recorded behind its non-blocking copy has completed.

Resuming is exact: :meth:`Prefetcher.state_dict` is the sampler state *after the last batch
handed out*, not after the batches drawn ahead, so restoring it into a fresh dataset replays
the same stream from the next unconsumed batch.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, NamedTuple

import torch

from pvn.replay.dataset import DQNReplayDataset
from pvn.replay.transitions import TransitionBatch


class TorchBatch(NamedTuple):
    observation: torch.Tensor  # uint8 (B, stack, 84, 84)
    action: torch.Tensor  # int64 (B,)
    reward: torch.Tensor  # float32 (B,)
    next_observation: torch.Tensor  # uint8 (B, stack, 84, 84)
    terminal: torch.Tensor  # bool (B,)
    shard: torch.Tensor | None = None  # int64 (B,): each row's shard (a checkpoint) ...
    index: torch.Tensor | None = None  # int64 (B,): ... and slot (keys of per-state caches)

    def to(self, device: torch.device) -> TorchBatch:
        return TorchBatch(*(None if t is None else t.to(device, non_blocking=True) for t in self))


def torch_batch(batch_size: int, stack_size: int, pin: bool) -> tuple[TorchBatch, TransitionBatch]:
    """Torch tensors and a :class:`TransitionBatch` of numpy views sharing their memory."""
    frames = (batch_size, stack_size, 84, 84)
    tb = TorchBatch(
        torch.empty(frames, dtype=torch.uint8, pin_memory=pin),
        torch.empty(batch_size, dtype=torch.int64, pin_memory=pin),
        torch.empty(batch_size, dtype=torch.float32, pin_memory=pin),
        torch.empty(frames, dtype=torch.uint8, pin_memory=pin),
        torch.empty(batch_size, dtype=torch.bool, pin_memory=pin),
        torch.empty(batch_size, dtype=torch.int64, pin_memory=pin),
        torch.empty(batch_size, dtype=torch.int64, pin_memory=pin),
    )
    nb = TransitionBatch(
        observation=tb.observation.numpy(),
        action=tb.action.numpy(),
        reward=tb.reward.numpy(),
        next_observation=tb.next_observation.numpy(),
        terminal=tb.terminal.numpy(),
        shard=tb.shard.numpy(),
        index=tb.index.numpy(),
    )
    return tb, nb


class Prefetcher:
    """Iterate over batches of ``dataset`` sampled ``depth`` ahead on a background thread.

    Args:
        dataset: the sampler (its generator advances on the worker thread).
        batch_size: transitions per batch.
        device: where batches are delivered (``cpu`` or ``cuda``).
        depth: batches kept ready ahead of the learner.
        pin_memory: page-lock host buffers (default: when ``device`` is CUDA).
    """

    def __init__(
        self,
        dataset: DQNReplayDataset,
        batch_size: int,
        device: str | torch.device = "cpu",
        depth: int = 3,
        pin_memory: bool | None = None,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda" if pin_memory is None else pin_memory
        self._state = dataset.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._free: queue.Queue = queue.Queue()
        for _ in range(depth + 2):  # depth queued + one being filled + one held by the learner
            self._free.put((torch_batch(batch_size, dataset.stack_size, self.pin), None))
        self._held = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="pvn-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take_free(self):
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _work(self) -> None:
        try:
            while (item := self._take_free()) is not None:
                (tb, nb), copied = item
                if copied is not None:
                    copied.synchronize()  # the device copy out of this buffer has finished
                self.dataset.sample(self.batch_size, out=nb)
                if not self._put(((tb, nb), self.dataset.state_dict())):
                    return
        except BaseException as e:  # hand the error to the consumer instead of dying silently
            self._put(e)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> TorchBatch:
        if self._held is not None:  # the learner is done with the previous batch
            self._free.put(self._held)
            self._held = None
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        buffers, self._state = item
        host = buffers[0]
        if self.device.type == "cpu":
            self._held = (buffers, None)
            return host
        batch = host.to(self.device)
        event = torch.cuda.Event()
        event.record()
        self._held = (buffers, event)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Sampler state after the last batch handed out (restore with the dataset's loader)."""
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
