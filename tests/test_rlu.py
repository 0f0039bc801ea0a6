"""RL Unplugged Atari without TensorFlow, against TensorFlow's own writer and reader.

The fixture (``tests/data/rlu``, made by ``scripts/gen_rlu_fixture.py``) holds raw GZIP files
of real Asterix frames written with TensorFlow, the prepared TFDS directories its real
``rlu_atari_checkpoints_ordered`` builder made from them (1.1.0, and 1.0.0's fields), TFDS's own
reading of every episode, and the official PVN code's transitions (``_episode_to_transitions``
run through ``rlds``). pvn's episodes and transitions are compared with them field by field.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from pvn.replay import ReplayError, RLUDataset
from pvn.replay.rlu import episodes, official_transitions
from pvn.replay.tfrecord import _example_class, masked_crc32c

DATA = Path(__file__).parent / "data" / "rlu"
TFDS, RAW, ANSWERS = DATA / "tfds", DATA / "raw", DATA / "answers"
PREPARED = TFDS / "rlu_atari_checkpoints_ordered" / "Asterix_run_1"


def _tfds_answers(version: str) -> list[dict]:
    """TFDS's reading of every episode of every split, in its order."""
    info = json.loads((ANSWERS / f"tfds_{version}.json").read_text())
    arrays = np.load(ANSWERS / f"tfds_{version}.npz", allow_pickle=False)
    out = []
    for split in sorted(info["splits"]):
        for ep in info["splits"][split]["episodes"]:
            p = ep["npz_prefix"]
            steps = {k: arrays[f"{p}.{k}"] for k in ("action", "reward", "discount", "is_first",
                                                     "is_last", "is_terminal")}  # fmt: skip
            steps["observation"] = arrays[f"{p}.observation"][..., 0]
            ids = {k: ep[k] for k in ("checkpoint_id", "episode_id", "episode_return")}
            out.append({**steps, **ids})
    return out


def _assert_same_episodes(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for key in ("checkpoint_id", "episode_id"):
            assert a[key] == b[key], key
        assert a["episode_return"] == pytest.approx(b["episode_return"])
        for key in ("observation", "action", "reward", "discount", "is_first", "is_last",
                    "is_terminal"):  # fmt: skip
            assert a[key].dtype == np.asarray(b[key]).dtype or key == "action", key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_prepared_episodes_equal_tfds_reading(version):
    ours = list(episodes(TFDS, "Asterix", 1, version=version))
    _assert_same_episodes(ours, _tfds_answers(version))


def test_raw_files_convert_as_tfds_converts_them():
    """Raw GZIP files (episodes stored out of order, one with unpacked lists) give TFDS's
    prepared episodes: sorted by id, terminal from the last discount, discounts shifted."""
    _assert_same_episodes(list(episodes(RAW, "Asterix", 1)), _tfds_answers("1.1.0"))


def _official(split: str) -> dict[str, np.ndarray]:
    z = np.load(ANSWERS / "pvn_transitions.npz", allow_pickle=False)
    t = {k[len(split) + 1 :]: z[k] for k in z.files if k.startswith(split + ".")}
    order = np.lexsort((t["start"], t["episode_id"], t["checkpoint_id"]))
    return {k: v[order] for k, v in t.items()}


@pytest.mark.parametrize("proportion, split", [(1.0, "full"), (0.5, "full_p0.5")])
def test_official_transitions_equal_the_official_codes(proportion, split):
    want = _official(split)
    rows = {k: [] for k in ("observation", "next_observation", "action", "terminal")}
    for ep in episodes(TFDS, "Asterix", 1, split="full", proportion=proportion):
        for k, v in official_transitions(ep).items():
            rows[k].append(v)
    got = {k: np.concatenate(v) for k, v in rows.items()}
    assert len(got["action"]) == len(want["action"]) > 0
    # the official code stacks frames last (84, 84, 4); pvn channels first (4, 84, 84)
    np.testing.assert_array_equal(got["observation"], want["observation"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got["next_observation"],
                                  want["next_observation"].transpose(0, 3, 1, 2))  # fmt: skip
    np.testing.assert_array_equal(got["action"], want["action"])
    np.testing.assert_array_equal(got["terminal"], want["terminal"])


@pytest.mark.parametrize("root", [TFDS, RAW], ids=["prepared", "raw"])
def test_dataset_holds_exactly_the_official_transitions_and_samples_them_uniformly(tmp_path, root):
    want = _official("full")
    ds = RLUDataset(root, "Asterix", 1, cache_dir=tmp_path, seed=3)
    assert len(ds) == len(want["action"]) == 11 and ds.shards == [0, 1]
    got = {k: [] for k in ("observation", "next_observation", "action", "terminal")}
    for shard in ds.shards:
        batch = ds.gather(shard, np.flatnonzero(ds.valid_mask(shard)))
        for k in got:
            got[k].append(getattr(batch, k))
    got = {k: np.concatenate(v) for k, v in got.items()}
    np.testing.assert_array_equal(got["observation"], want["observation"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got["next_observation"],
                                  want["next_observation"].transpose(0, 3, 1, 2))  # fmt: skip
    np.testing.assert_array_equal(got["action"], want["action"])
    np.testing.assert_array_equal(got["terminal"], want["terminal"])
    assert ds.num_actions() <= 9
    # uniform over the 11: 11,000 draws, each within 5 standard deviations of 1,000
    batch = ds.sample(11_000)
    keys = batch.shard * 1000 + batch.index
    valid = {c * 1000 + i for c in ds.shards for i in np.flatnonzero(ds.valid_mask(c))}
    assert set(keys.tolist()) == valid
    counts = np.unique(keys, return_counts=True)[1]
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(1000 * (1 - 1 / 11)))
    # the sampler resumes exactly, and a second open reads the cache
    state = ds.state_dict()
    again = RLUDataset(root, "Asterix", 1, cache_dir=tmp_path, seed=99)
    again.load_state_dict(state)
    np.testing.assert_array_equal(ds.sample(64).index, again.sample(64).index)


def _five_runs(tmp_path: Path, layout: str) -> tuple[Path, list[int]]:
    """A data directory of runs 1-5 made from the fixture's run 1: prepared, five copies of it;
    raw, run ``r``'s first file is run 1's checkpoint ``(r - 1) % 2``, so the runs differ.
    Returns the directory and the fixture checkpoint each run's checkpoint 0 holds."""
    if layout == "prepared":
        root = tmp_path / "tfds"
        for r in range(1, 6):
            shutil.copytree(PREPARED, root / PREPARED.parent.name / f"Asterix_run_{r}")
        return root, [0] * 5
    root = tmp_path / "raw"
    (root / "Asterix").mkdir(parents=True)
    for r in range(1, 6):
        for c in (0, 1):
            src = RAW / "Asterix" / f"run_1-{(r - 1 + c) % 2:05d}-of-00002"
            shutil.copy(src, root / "Asterix" / f"run_{r}-{c:05d}-of-00002")
    return root, [(r - 1) % 2 for r in range(1, 6)]


@pytest.mark.parametrize("layout", ["prepared", "raw"])
def test_the_weak_split_reads_checkpoint_0_of_each_of_the_five_runs(tmp_path, layout):
    """``weak`` (the official code's ``checkpoint_00`` of runs 1-5, whatever ``run`` is):
    episodes run by run, and a dataset whose shards are the runs, each holding the official
    transitions of the checkpoint its run's checkpoint 0 was made from."""
    root, held = _five_runs(tmp_path, layout)
    answers = _tfds_answers("1.1.0")
    want = [ep for c in held for ep in answers if ep["checkpoint_id"] == c]
    _assert_same_episodes(list(episodes(root, "Asterix", 3, "1.1.0", split="weak")), want)
    official = _official("full")
    ds = RLUDataset(root, "Asterix", 3, "1.1.0", split="weak", cache_dir=tmp_path / "c", seed=1)
    assert ds.shards == [1, 2, 3, 4, 5]
    for run, c in zip(ds.shards, held, strict=True):
        mine = official["checkpoint_id"] == c
        batch = ds.gather(run, np.flatnonzero(ds.valid_mask(run)))
        frames = official["observation"][mine].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(batch.observation, frames)
        np.testing.assert_array_equal(batch.action, official["action"][mine])
        np.testing.assert_array_equal(batch.terminal, official["terminal"][mine])
    assert set(ds.sample(2000).shard.tolist()) == {1, 2, 3, 4, 5}


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(TFDS, tmp_path / "tfds")
    return tmp_path / "tfds" / PREPARED.relative_to(TFDS) / "1.1.0"


def _shard(version_dir: Path, checkpoint: int = 0) -> Path:
    return version_dir / (
        f"rlu_atari_checkpoints_ordered-checkpoint_{checkpoint:02d}.tfrecord-00000-of-00001"
    )


def _read_all(root: Path) -> None:
    list(episodes(root, "Asterix", 1, version="1.1.0"))


def test_corrupt_and_truncated_records_and_missing_shards_are_named(tmp_path):
    version_dir = _copy(tmp_path)
    root = tmp_path / "tfds"
    shard = _shard(version_dir)
    data = bytearray(shard.read_bytes())
    first = struct.unpack("<Q", data[:8])[0]
    data[16 + first + 40] ^= 0xFF  # a byte inside the second record's data
    shard.write_bytes(bytes(data))
    with pytest.raises(ReplayError, match=rf"{shard}: record 1 at byte {16 + first}: corrupt"):
        _read_all(root)
    shard.write_bytes(bytes(data[: 16 + first + 100]))
    with pytest.raises(ReplayError, match=rf"{shard}: record 1 at byte {16 + first}: truncated"):
        _read_all(root)
    shard.unlink()
    with pytest.raises(ReplayError, match=rf"{shard}: missing shard 0 of split checkpoint_00"):
        _read_all(root)


def _write_record(path: Path, example: bytes) -> None:
    head = struct.pack("<Q", len(example))
    path.write_bytes(head + struct.pack("<I", masked_crc32c(head)) + example
                     + struct.pack("<I", masked_crc32c(example)))  # fmt: skip


def test_a_frame_that_is_not_84x84_grey_is_named(tmp_path):
    import io

    from PIL import Image

    version_dir = _copy(tmp_path)
    ex = _example_class()()
    f = ex.features.feature
    png = io.BytesIO()
    Image.fromarray(np.zeros((84, 84, 3), np.uint8)).save(png, format="PNG")
    f["steps/observation"].bytes_list.value.extend([png.getvalue()] * 5)
    for key in ("checkpoint_id", "episode_id"):
        f[key].int64_list.value.append(0)
    f["episode_return"].float_list.value.append(0.0)
    _write_record(_shard(version_dir), ex.SerializeToString())
    with pytest.raises(ReplayError, match=r"record 0 \(byte 0\): step 0: a PNG, 84x84 8-bit RGB, "
                                          "not an 84x84 grey frame"):  # fmt: skip
        _read_all(tmp_path / "tfds")


def test_unknown_game_run_and_split_are_one_line_errors():
    with pytest.raises(ReplayError, match="game='Asterisk': not an RL Unplugged Atari game"):
        list(episodes(TFDS, "Asterisk", 1))
    with pytest.raises(ReplayError, match="run=6: RL Unplugged has runs 1-5"):
        list(episodes(TFDS, "Asterix", 6))
    with pytest.raises(ReplayError, match="no RL Unplugged data for Pong run 1"):
        list(episodes(TFDS, "Pong", 1))
    with pytest.raises(ReplayError, match=r"split='mixed': .* has no checkpoint 9"):
        list(episodes(TFDS, "Asterix", 1, version="1.1.0", split="mixed"))


def test_pretrain_reads_rl_unplugged_like_dqn_replay(tmp_path, capsys):
    """``pvn pretrain`` on the prepared directory (format detected), and a one-line error,
    exit 2, for a corrupt shard."""
    from pvn.cli import main

    args = ["pretrain", f"data.path={TFDS}", "data.game=Asterix", "data.version=1.1.0",
            f"data.cache_dir={tmp_path / 'cache'}", "steps=4", "batch_size=4",
            "tasks.num_tasks=4", "tasks.tasks_per_module=4", "torso.feature_dim=16",
            "td.warmup_steps=0", "progress=false"]  # fmt: skip
    assert main([*args, f"run_dir={tmp_path / 'run'}"]) == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["step"] == 4
    capsys.readouterr()
    version_dir = _copy(tmp_path)
    _shard(version_dir, 1).write_bytes(b"\x00" * 7)
    bad = [a.replace(str(TFDS), str(tmp_path / "tfds")) for a in args]
    assert main([*bad, f"run_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint_01" in err[0] and "truncated" in err[0], err


@pytest.mark.parametrize("source", [TFDS, RAW])
def test_a_store_converted_from_rlu_samples_as_its_source(source, tmp_path):
    """``pvn data convert --game``: whole checkpoints decoded once; read back under any split
    (a proportion cut when read), the same slots and the same draws as the source."""
    from pvn.replay.rlu_dataset import convert_rlu
    from pvn.replay.store import verify_store

    store = tmp_path / "store"
    convert_rlu(source, "Asterix", 1, store, workers=1)
    assert not any(r["problems"] for r in verify_store(store))
    for split, proportion in [("full", 1.0), ("full", 0.5), ("checkpoint_01", 1.0)]:
        kw = {"split": split, "proportion": proportion, "seed": 4, "n_step": 2}
        a = RLUDataset(source, "Asterix", 1, cache_dir=tmp_path / "cache", **kw)
        b = RLUDataset(store, "Asterix", 1, **kw)
        assert a.shards == b.shards and len(a) == len(b), (split, proportion)
        for s in a.shards:
            np.testing.assert_array_equal(a.valid_mask(s), b.valid_mask(s))
        x, y = a.sample(128), b.sample(128)
        for field in ("observation", "next_observation", "action", "reward", "terminal", "index"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
    with pytest.raises(ReplayError, match="not RL Unplugged Pong run 1"):
        RLUDataset(store, "Pong", 1)


def test_pretraining_reads_an_rlu_store_by_itself(tmp_path):
    import subprocess
    import sys

    run = [sys.executable, "-m", "pvn"]
    store = tmp_path / "store"
    conv = subprocess.run([*run, "data", "convert", str(TFDS), str(store), "--game", "Asterix"],
                          capture_output=True, text=True)  # fmt: skip
    assert conv.returncode == 0, conv.stderr
    assert "Asterix run 1, checkpoints [0, 1]" in conv.stdout
    args = ["pretrain", f"data.path={store}", f"run_dir={tmp_path / 'run'}", "steps=2",
            "batch_size=4", "torso.feature_dim=16", "tasks.num_tasks=10",
            "progress=false"]  # fmt: skip
    proc = subprocess.run([*run, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run([*run, "data", "convert", str(TFDS), str(store), "--run", "2"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "add --game" in bad.stderr


def test_data_info_of_an_rlu_run_counts_what_the_episodes_hold(capsys):
    """Episodes, steps, terminal episodes and mean return per checkpoint, read without decoding
    a frame, equal what the decoded episodes hold."""
    from pvn.cli import main

    eps = list(episodes(TFDS, "Asterix", 1))
    assert main(["data", "info", str(TFDS), "--game", "Asterix"]) == 0
    out = capsys.readouterr().out
    for c in (0, 1):
        mine = [e for e in eps if e["checkpoint_id"] == c]
        steps = sum(len(e["action"]) for e in mine)
        term = sum(bool(e["is_terminal"][-1]) for e in mine)
        mean = np.mean([e["episode_return"] for e in mine])
        row = f"{c:>5} {len(mine):>9} {steps:>10} {term:>9} {mean:>12.2f}"
        assert row in out, (row, out)
    assert main(["data", "info", str(TFDS), "--run", "2"]) == 2
    assert "add --game" in capsys.readouterr().err
    assert main(["data", "info", str(TFDS), "--game", "Asterix", "--run", "0"]) == 2
    assert "runs 1-5" in capsys.readouterr().err
