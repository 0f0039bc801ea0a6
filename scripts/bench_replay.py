"""Replay sampling throughput and memory (prints JSON).

Compares, in one run and on the same memory-mapped data (page cache warm):
  * pvn: ``DQNReplayDataset.sample(out=...)`` (vectorised rejection sampling, one gather per
    stack, into a reused batch as a training loop does);
  * dopamine_loop: a per-index sampler written the way Dopamine's is (draw an index, check
    ``is_valid_transition`` in Python, retry; then build each stack and n-step reward in a loop);
  * bare_gather: one numpy gather of the stack + n frames each transition needs, and nothing
    else: the memory-copy limit;
  * prefetcher: batches per second handed to a consumer by ``replay.Prefetcher``.
Then the process's anonymous memory (RssAnon, not the page cache of the maps) while sampling
from 1 and from 10 checkpoints, each in a fresh subprocess. Then ``pvn data verify`` (every byte
read and checked) against a bare ``gunzip -c > /dev/null`` of the same files, interleaved
(goal: verify within 1.5x of gunzip).

    python scripts/bench_replay.py [--capacity 20000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, proc_status, real_frames, write_log

from pvn.replay import DQNReplayDataset, Prefetcher, TransitionBatch


def dopamine_loop_sampler(ds: DQNReplayDataset, rng: np.random.Generator):
    """Dopamine's ``sample_transition_batch`` as Dopamine writes it, index by index.

    Same structure as ``circular_replay_buffer.py``: ``sample_index_batch`` draws one index at
    a time in [min_id, max_id) and retries while ``is_valid_transition`` (which builds
    ``set(invalid_range)`` and a terminal stack through ``get_range``) rejects it; then every
    element (state, action, reward, next_state, next_action, next_reward, terminal, indices) is
    filled per index, stacks through ``get_range`` and ``np.moveaxis`` to channels-last.
    Run on the same memory-mapped arrays as pvn.
    """
    ck = ds.checkpoint(ds.checkpoints[0])
    cap, stack, n = ck.capacity, ds.stack_size, ds.n_step
    store = {
        "observation": ck.observation,
        "action": ck.action,
        "reward": ck.reward,
        "terminal": ck.terminal,
    }
    disc = np.array([ds.gamma**k for k in range(n)], dtype=np.float32)

    def get_range(array, start, end):
        if start % cap < end % cap:
            return array[start:end, ...]
        return array[[(start + i) % cap for i in range(end - start)], ...]

    def is_valid(index):
        if index < 0 or index >= cap:
            return False
        if not ck.is_full and (index >= ck.cursor - n or index < stack - 1):
            return False
        if index in set(ck.invalid_range):
            return False
        return not get_range(store["terminal"], index - stack + 1, index + 1)[:-1].any()

    def stack_at(index):
        return np.moveaxis(get_range(store["observation"], index - stack + 1, index + 1), 0, -1)

    def sample(batch: int) -> int:
        if ck.is_full:
            min_id, max_id = ck.cursor - cap + stack - 1, ck.cursor - n
        else:
            min_id, max_id = stack - 1, ck.cursor - n
        indices = []
        while len(indices) < batch:
            index = int(rng.integers(min_id, max_id)) % cap
            if is_valid(index):
                indices.append(index)
        state = np.empty((batch, 84, 84, stack), np.uint8)
        next_state = np.empty_like(state)
        out = {
            k: np.empty(batch, t)
            for k, t in (
                ("action", np.int32),
                ("reward", np.float32),
                ("next_action", np.int32),
                ("next_reward", np.float32),
                ("terminal", np.uint8),
                ("indices", np.int32),
            )
        }
        for b, index in enumerate(indices):
            traj = [(index + j) % cap for j in range(n)]
            traj_terminals = store["terminal"][traj]
            is_terminal = traj_terminals.any()
            length = n if not is_terminal else int(np.argmax(traj_terminals.astype(bool), 0)) + 1
            nxt = index + length
            traj_rewards = get_range(store["reward"], index, nxt)
            state[b] = stack_at(index)
            out["action"][b] = store["action"][index]
            out["reward"][b] = np.sum(disc[:length] * traj_rewards, axis=0)
            next_state[b] = stack_at(nxt % cap)
            out["next_action"][b] = store["action"][nxt % cap]
            out["next_reward"][b] = store["reward"][nxt % cap]
            out["terminal"][b] = is_terminal
            out["indices"][b] = index
        return batch

    return sample


def bare_gather(ds: DQNReplayDataset, rng: np.random.Generator):
    ck = ds.checkpoint(ds.checkpoints[0])
    offsets = np.arange(-ds.stack_size + 1, ds.n_step + 1)

    def sample(batch: int) -> int:
        idx = rng.integers(ds.stack_size, ck.capacity - ds.n_step - 1, size=batch)
        ck.observation[idx[:, None] + offsets]
        return batch

    return sample


def throughput(path: Path, cache: Path, seconds: float) -> dict:
    out = {}
    for n in (1, 3):
        ds = DQNReplayDataset(path, checkpoints=[0], n_step=n, cache_dir=cache, seed=0)
        np.asarray(ds.checkpoint(0).observation).sum()  # warm the page cache
        loop = dopamine_loop_sampler(ds, np.random.default_rng(0))
        bare = bare_gather(ds, np.random.default_rng(0))
        for batch in (32, 256):
            buf = TransitionBatch.empty(batch, ds.stack_size)  # reused, as in a hot loop
            with Prefetcher(ds, batch, depth=4) as pf:
                out[f"n{n}_b{batch}"] = compare(
                    {
                        "pvn": lambda b=batch, d=ds, o=buf: (d.sample(b, out=o), b)[1],
                        "dopamine_loop": lambda b=batch, f=loop: f(b),
                        "bare_gather": lambda b=batch, f=bare: f(b),
                        "prefetcher": lambda b=batch, p=pf: (next(p), b)[1],
                    },
                    seconds=seconds,
                )
    return out


_MEM_CHILD = """
import sys, numpy as np
sys.path.insert(0, {scripts!r})
from _bench import proc_status
from pvn.replay import DQNReplayDataset, TransitionBatch
ds = DQNReplayDataset({path!r}, checkpoints=list(range({k})), cache_dir={cache!r}, seed=0)
out = TransitionBatch.empty(256, 4)
base = proc_status("RssAnon")
for _ in range(300):
    ds.sample(256, out=out)
print(proc_status("RssAnon"), proc_status("RssFile"), base)
"""


def memory(path: Path, cache: Path) -> dict:
    out = {}
    for k in (1, 10):
        code = _MEM_CHILD.format(
            scripts=str(Path(__file__).resolve().parent), path=str(path), k=k, cache=str(cache)
        )
        anon, file_, base = map(int, subprocess.check_output([sys.executable, "-c", code]).split())
        out[f"{k}_checkpoints"] = {
            "rss_anon_mb": round(anon / 2**20, 1),
            "rss_file_mb": round(file_ / 2**20, 1),
            "rss_anon_growth_while_sampling_mb": round((anon - base) / 2**20, 1),
        }
    out["anon_ratio_10_vs_1"] = round(
        out["10_checkpoints"]["rss_anon_mb"] / out["1_checkpoints"]["rss_anon_mb"], 3
    )
    return out


def verify_speed(log_dir: Path, rounds: int = 3) -> dict:
    """Seconds for ``replay.verify.verify`` and for the ``gunzip`` command on the same files."""
    import shutil
    import time

    from pvn.replay.verify import verify

    files = sorted(p for p in log_dir.glob("*_ckpt.*.gz"))
    mb = sum(p.stat().st_size for p in files) / 1e6
    gunzip = shutil.which("gunzip")
    t_verify, t_gunzip = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        rows = verify(log_dir)
        t_verify.append(time.perf_counter() - t)
        assert not any(r["problems"] for r in rows)
        if gunzip:
            t = time.perf_counter()
            for f in files:
                subprocess.run([gunzip, "-c", str(f)], stdout=subprocess.DEVNULL, check=True)
            t_gunzip.append(time.perf_counter() - t)
    out = {"compressed_mb": round(mb, 1), "verify_s": round(float(np.median(t_verify)), 2),
           "verify_mb_per_s": round(mb / float(np.median(t_verify)), 1)}  # fmt: skip
    if gunzip:
        out["gunzip_s"] = round(float(np.median(t_gunzip)), 2)
        out["verify_vs_gunzip"] = round(float(np.median(np.array(t_verify) / t_gunzip)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--capacity", type=int, default=20_000, help="slots per checkpoint")
    ap.add_argument("--seconds", type=float, default=0.4, help="time per run (5 rounds each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = real_frames()
        write_log(tmp / "replay_logs", frames, args.capacity, 10 * args.capacity)
        DQNReplayDataset(tmp / "replay_logs", cache_dir=tmp / "cache")  # convert once
        emit(
            {
                "capacity": args.capacity,
                "throughput_transitions_per_s": throughput(
                    tmp / "replay_logs", tmp / "cache", args.seconds
                ),
                "memory": memory(tmp / "replay_logs", tmp / "cache"),
                "verify": verify_speed(tmp / "replay_logs"),
                "rss_anon_parent_mb": round(proc_status("RssAnon") / 2**20, 1),
            }
        )


if __name__ == "__main__":
    main()
