"""Build the RL Unplugged Atari fixture in ``tests/data/rlu/`` with TensorFlow's own tools.

pvn reads RL Unplugged (``rlu_atari_checkpoints_ordered``, the data set of the official PVN code)
without TensorFlow. This script makes the test data for that reader, and the answers it must
give, with the real writers and readers: TensorFlow writes the raw files, the real TensorFlow
Datasets builder converts them, TFDS reads them back, and the official PVN transition rule runs
on TFDS's episodes through ``rlds``. TensorFlow is needed here only, never at run time or in the
tests: they read the files this script left in ``tests/data/rlu/``.

How to run it (from the repository root), with two virtual environments:

* pvn's own ``.venv`` (envpool, numpy) plays Asterix for the frames. The script calls it itself,
  as ``.venv/bin/python scripts/gen_rlu_fixture.py --frames-only OUT.npz``; ``--pvn-python``
  names another interpreter.
* a throw-away TensorFlow venv (never ``.venv``) runs everything else::

      python3.11 -m venv /work/notes/tfvenv
      /work/notes/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tensorflow-datasets==4.9.10 \\
          importlib_resources rlds==0.1.8
      /work/notes/tfvenv/bin/python scripts/gen_rlu_fixture.py

  (``importlib_resources`` is a dependency TFDS 4.9.10 forgets to declare; ``rlds`` imports
  ``reverb`` without using it for ``rlds.transformations.batch``, so this script puts a stub
  ``reverb`` module in ``sys.modules`` instead of installing dm-reverb.)

What it does (``tests/data/rlu/README.md`` describes every output file):

1. ``--frames-only``: real ALE frames. ``make_atari("Asterix", 1, "dopamine", seed=0)``, uniform
   random actions; the newest 84x84 frame of each observation and the action taken there are
   saved to an ``.npz`` in a temporary directory.
2. Raw files, as ``gs://rl_unplugged/atari_episodes_ordered/Asterix/run_1-0000K-of-00002`` would
   hold them: GZIP TFRecords of ``tf.train.Example`` episodes written by ``tf.io.TFRecordWriter``,
   frames PNG-encoded by ``tf.io.encode_png`` (84, 84, 1). Two checkpoint files, three episodes
   each, written out of episode order; lengths 4 to 7, terminal and truncated episodes, rewards
   outside [-1, 1]. TF's serializer always packs repeated numbers, so one episode's ``actions``
   (int64) and ``unclipped_rewards`` (float) are spliced in by hand in the unpacked encoding
   (wire types 0 and 5), which TF parses the same; the bytes still go through TF's writer.
3. The real ``RluAtariCheckpointsOrdered`` builder of TFDS 4.9.10 converts them (its
   ``_INPUT_FILE_PREFIX`` and ``_SHARDS`` overridden, as TFDS's own unit test does): version
   1.1.0, as that TFDS writes it.
   Version 1.0.0 cannot be built the original way (TFDS <= 4.5.x, which wrote it, does not run
   on current TF/protobuf). It is made by the same 4.9.10 builder with VERSION set to 1.0.0, the
   release notes of TFDS 4.5.2, the features of TFDS 4.5.2's ``atari_utils.features_dict`` (with
   ``steps/clipped_reward`` and ``clipped_episode_return``) and those two fields added to each
   episode exactly as 4.5.2's ``atari_example_to_rlds`` did (the conversion was otherwise the
   same). Its ``dataset_info.json`` is then rewritten without ``filepathTemplate`` (a field
   TFDS 4.5.x did not have) by TFDS's own proto and JSON writer. Its ``features.json`` stays in
   the 4.9.10 dialect (4.5.x wrote a double-encoded legacy one), and its description text is
   4.9.10's.
4. The answers, from a fresh process with no patches: TFDS's reading of every episode of every
   split of both versions (``tfds.builder(name:version, data_dir).as_dataset``), TF's parse of
   every raw record, and the transitions of the official PVN pipeline (``_episode_to_transitions``
   copied below from google-research, run through ``rlds.transformations.batch`` on the episodes
   ``tfds.load`` returns for PVN's split strings). The generator checks them against the source
   frames and actions before writing.

Options: ``--out`` (default ``tests/data/rlu``; ``raw/``, ``tfds/`` and ``answers/`` there are
replaced), ``--keep-tmp``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GAME, RUN, SHARDS, SEED = "Asterix", 1, 2, 0
DATASET = "rlu_atari_checkpoints_ordered"
CONFIG = f"{GAME}_run_{RUN}"
VERSIONS = ("1.0.0", "1.1.0")
# Episodes of each raw file (file K = checkpoint K) in the order they are written:
# (episode_idx, length, ends in a terminal state, written with unpacked number lists)
EPISODES = {
    0: [(2, 7, False, False), (0, 6, True, False), (1, 4, False, False)],
    1: [(1, 7, True, False), (2, 6, False, True), (0, 5, True, False)],
}
REWARDS = [0.0, 2.0, -3.0, 1.0, 0.0, -1.0, 5.0, 0.5]  # raw unclipped_rewards cycle through these
# PVN's split strings (google-research pvn/datasets/atari.py create_dataset); mixed_small and
# mixed name checkpoint_24/49 and do not apply to two checkpoints.
PVN_SPLITS = {"full": ("full", 1.0), "full_p0.5": ("full", 0.5), "weak": ("weak", None)}


# --------------------------------------------------------------------------------------------
# 1. frames (pvn's .venv)


def grab_frames(out: str, steps: int = 400) -> None:
    """Play Asterix with random actions; save the newest frame and the action of every step."""
    from pvn.envs import make_atari

    rng = np.random.default_rng(SEED)
    frames, actions, episode_start = [], [], []
    with make_atari(GAME, 1, "dopamine", seed=SEED, num_threads=1) as env:
        obs, new = env.reset(), True
        for _ in range(steps):
            a = int(rng.integers(env.num_actions))
            frames.append(obs[0, -1].copy())
            actions.append(a)
            episode_start.append(new)
            res = env.step(np.array([a]))
            # the env auto-resets on the step after an episode ends
            new = bool(res.terminated[0] or res.truncated[0])
            obs = res.obs
        num_actions = env.num_actions
    np.savez(
        out,
        frames=np.stack(frames).astype(np.uint8),
        actions=np.asarray(actions, np.int64),
        episode_start=np.asarray(episode_start, bool),
        num_actions=np.int64(num_actions),
    )
    print(f"frames: {len(frames)} of {GAME} (num_actions={num_actions}) -> {out}")


# --------------------------------------------------------------------------------------------
# helpers for the TF stages


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.get_logger().setLevel("ERROR")
    return tf


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64: ten-byte two's complement
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _unpacked_entry(key: str, kind: str, values) -> bytes:
    """A ``Features.feature`` map entry whose list is in the unpacked (non-packed) encoding."""
    if kind == "int64":  # Feature.int64_list = 3; Int64List.value = 1, varints (wire type 0)
        feature = _field(3, b"".join(_varint(1 << 3 | 0) + _varint(int(v)) for v in values))
    else:  # Feature.float_list = 2; FloatList.value = 1, fixed32 (wire type 5)
        feature = _field(2, b"".join(_varint(1 << 3 | 5) + struct.pack("<f", v) for v in values))
    return _field(1, _field(1, key.encode()) + _field(2, feature))


def _episode_plan(frames_npz):
    """The fixture's episodes: a run of consecutive frames of one game each, in file order."""
    d = np.load(frames_npz, allow_pickle=False)
    frames, actions, start = d["frames"], d["actions"], d["episode_start"]
    plan, t = [], 20  # skip the first frames after reset (all alike)
    for ckpt in sorted(EPISODES):
        for ep, n, terminal, unpacked in EPISODES[ckpt]:
            while start[t + 1 : t + n].any():  # keep each episode inside one game
                t += 1
            k = len(plan)
            rewards = np.asarray([REWARDS[(k + i) % len(REWARDS)] for i in range(n)], np.float32)
            discounts = np.ones(n, np.float32)
            if terminal:
                discounts[-1] = 0.0
            plan.append(
                dict(
                    checkpoint=ckpt,
                    episode=ep,
                    length=n,
                    terminal=terminal,
                    unpacked=unpacked,
                    frames=frames[t : t + n],
                    actions=actions[t : t + n],
                    unclipped_rewards=rewards,
                    clipped_rewards=np.clip(rewards, -1, 1).astype(np.float32),
                    discounts=discounts,
                    source_steps=[t, t + n],
                )
            )
            t += n + 37  # frames far apart: episodes do not share frames
    return plan, int(d["num_actions"])


# --------------------------------------------------------------------------------------------
# 2. raw files (TF)


def _tf_feature(tf, kind, values):
    if kind == "int64":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    if kind == "float":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def write_raw(frames_npz: str, raw_dir: Path) -> list[dict]:
    tf = _quiet_tf()
    plan, _ = _episode_plan(frames_npz)
    (raw_dir / GAME).mkdir(parents=True)
    info = []
    for ckpt in sorted(EPISODES):
        path = raw_dir / GAME / f"run_{RUN}-{ckpt:05d}-of-{SHARDS:05d}"
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for e in (p for p in plan if p["checkpoint"] == ckpt):
                pngs = [tf.io.encode_png(f[:, :, None]).numpy() for f in e["frames"]]
                assert all(p[:8] == b"\x89PNG\r\n\x1a\n" and p[24:26] == b"\x08\x00" for p in pngs)
                feats = {
                    "checkpoint_idx": ("int64", [ckpt]),
                    "episode_idx": ("int64", [e["episode"]]),
                    "episode_return": ("float", [float(e["unclipped_rewards"].sum())]),
                    "clipped_episode_return": ("float", [float(e["clipped_rewards"].sum())]),
                    "observations": ("bytes", pngs),
                    "actions": ("int64", e["actions"].tolist()),
                    "unclipped_rewards": ("float", e["unclipped_rewards"].tolist()),
                    "clipped_rewards": ("float", e["clipped_rewards"].tolist()),
                    "discounts": ("float", e["discounts"].tolist()),
                }
                all_f = {k: _tf_feature(tf, *v) for k, v in feats.items()}
                packed = tf.train.Example(features=tf.train.Features(feature=all_f))
                record = packed.SerializeToString()
                if e["unpacked"]:
                    spliced = ("actions", "unclipped_rewards")
                    rest = {k: v for k, v in all_f.items() if k not in spliced}
                    body = tf.train.Features(feature=rest).SerializeToString()
                    body += b"".join(_unpacked_entry(k, *feats[k]) for k in spliced)
                    record = _field(1, body)
                    assert record != packed.SerializeToString()
                    assert tf.train.Example.FromString(record) == packed  # same message
                writer.write(record)
                e["png_sha256"] = [hashlib.sha256(p).hexdigest() for p in pngs]
                info.append({k: v for k, v in e.items() if not isinstance(v, np.ndarray)})
        print(f"raw: {path} ({path.stat().st_size} bytes)")
    return info


# --------------------------------------------------------------------------------------------
# 3. the TFDS builder (TF; one process per version)


def build(raw_dir: str, data_dir: str, version: str) -> None:
    tf = _quiet_tf()
    import tensorflow_datasets as tfds
    from tensorflow_datasets.rl_unplugged import atari_utils
    from tensorflow_datasets.rl_unplugged.rlu_atari_checkpoints_ordered import (
        rlu_atari_checkpoints_ordered as m,
    )

    builder_cls = m.RluAtariCheckpointsOrdered
    builder_cls._INPUT_FILE_PREFIX = raw_dir  # reads <raw_dir>/Asterix/run_1-0000K-of-00002
    builder_cls._SHARDS = SHARDS
    if version == "1.0.0":
        # TFDS 4.5.2: rlu_atari_checkpoints_ordered.py VERSION/RELEASE_NOTES, and atari_utils.py
        # features_dict() and atari_example_to_rlds(), which also emitted the two clipped fields.
        def features_dict_1_0_0(self):
            return tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": tfds.features.Image(
                                shape=(84, 84, 1), dtype=np.uint8, encoding_format="png"
                            ),
                            "action": np.int64,
                            "reward": np.float32,
                            "clipped_reward": np.float32,  # [-1, 1] clipping
                            "is_terminal": np.bool_,
                            "is_first": np.bool_,
                            "is_last": np.bool_,
                            "discount": np.float32,
                        }
                    ),
                    "checkpoint_id": np.int64,
                    "episode_id": np.int64,
                    "episode_return": np.float32,
                    "clipped_episode_return": np.float32,  # sum of [-1, 1] clipped rewards
                }
            )

        def to_rlds_1_0_0(self, tf_example):
            episode = atari_utils.atari_example_to_rlds(tf_example)
            data = tf.io.parse_single_example(tf_example, atari_utils._feature_description())
            episode["clipped_episode_return"] = data["clipped_episode_return"]
            episode["steps"]["clipped_reward"] = data["clipped_rewards"]
            return episode

        builder_cls.VERSION = tfds.core.Version("1.0.0")
        builder_cls.RELEASE_NOTES = {"1.0.0": "Initial release."}
        builder_cls.get_features_dict = features_dict_1_0_0
        builder_cls.tf_example_to_step_ds = to_rlds_1_0_0
    builder = tfds.builder(f"{DATASET}/{CONFIG}", data_dir=data_dir)
    assert str(builder.version) == version, builder.version
    builder.download_and_prepare()
    if version == "1.0.0":
        from google.protobuf import json_format
        from tensorflow_datasets.core.proto import dataset_info_pb2

        path = Path(builder.data_dir) / "dataset_info.json"
        proto = json_format.Parse(path.read_text(), dataset_info_pb2.DatasetInfo())
        for split in proto.splits:
            split.ClearField("filepath_template")  # SplitInfo field 6, new in TFDS 4.6.0
        # the same writer as TFDS's DatasetInfo.write_to_directory
        path.write_text(json_format.MessageToJson(proto, sort_keys=True))
        assert "filepathTemplate" not in path.read_text()
    print(f"built {DATASET}/{CONFIG}:{version} -> {builder.data_dir}")


# --------------------------------------------------------------------------------------------
# 4. the answers (TF, a fresh process with nothing patched)


def _stub_reverb() -> None:
    """rlds imports reverb (for rlds.transformations.pattern only); batch() does not use it."""

    class _Any:
        def __getattr__(self, name):
            return _Any()

        def __call__(self, *a, **k):
            return _Any()

    stub = types.ModuleType("reverb")
    stub.__getattr__ = lambda name: _Any()
    sys.modules.setdefault("reverb", stub)


def _episode_to_transitions(episode, num_actions, stack_size=4):
    """The official PVN rule, copied verbatim (logic and names) from google-research
    ``pvn/datasets/atari.py`` ``_episode_to_transitions`` (commit 1d4d2f1aa6f2, Apache-2.0,
    Copyright 2023 The Google Research Authors); google-research's pvn is not pip-installable."""
    import rlds
    import tensorflow as tf

    def _steps_to_transition(batch):
        # Stack batched observations
        states = tf.squeeze(batch[rlds.OBSERVATION], axis=-1)
        states = tf.transpose(states, perm=[1, 2, 0])
        states = tf.cast(states, tf.uint8)
        # We must assign a shape to states or else TF gets confused
        # and we won't be able to derive the shape.
        width, height, _ = states.get_shape().as_list()
        states.set_shape([width, height, stack_size + 1])

        actions = tf.cast(batch[rlds.ACTION], tf.int32)
        terminals = tf.cast(batch[rlds.IS_TERMINAL], tf.bool)

        return {
            "observation": states[:, :, :stack_size],
            "action": tf.one_hot(actions[stack_size - 1], depth=num_actions, dtype=tf.uint8),
            "next_observation": states[:, :, 1:],
            "terminal": tf.reduce_any(terminals[stack_size : stack_size + 1], keepdims=True),
        }

    batched_steps = rlds.transformations.batch(
        episode[rlds.STEPS], size=stack_size + 1, shift=1, drop_remainder=True
    )
    return batched_steps.map(_steps_to_transition)


def _pvn_split_string(builder, split: str, proportion: float | None) -> str:
    """PVN's create_dataset: the split string it passes to tfds.split_for_jax_process."""
    if split == "full":
        splits = []
        for split_name, info in builder.info.splits.items():
            num_episodes = int(proportion * info.num_examples)
            if num_episodes == 0:
                raise ValueError(f"{proportion * 100.0}% leads to 0 episodes in {split_name}!")
            splits.append(f"{split_name}[:{num_episodes}]")
    else:  # weak
        splits = ["checkpoint_00"]
    return "+".join(splits)


def answers(frames_npz: str, raw_dir: str, data_dir: str, out: str, plan_info: str) -> None:
    tf = _quiet_tf()
    _stub_reverb()
    import rlds
    import tensorflow_datasets as tfds

    out_dir = Path(out)
    out_dir.mkdir(parents=True)
    plan, num_actions = _episode_plan(frames_npz)
    by_id = {(p["checkpoint"], p["episode"]): p for p in plan}
    versions = {
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "tensorflow_datasets": tfds.__version__,
        "rlds": getattr(rlds, "__version__", None) or _dist_version("rlds"),
        "numpy": np.__version__,
        "protobuf": _dist_version("protobuf"),
    }

    # (raw) TF's parse of every raw record, in file order, with TFDS's parse spec
    from tensorflow_datasets.rl_unplugged import atari_utils

    raw_json, raw_npz = {"files": {}}, {}
    for ckpt in sorted(EPISODES):
        name = f"run_{RUN}-{ckpt:05d}-of-{SHARDS:05d}"
        records = []
        ds = tf.data.TFRecordDataset(f"{raw_dir}/{GAME}/{name}", compression_type="GZIP")
        for k, record in enumerate(ds):
            d = tf.io.parse_single_example(record, atari_utils._feature_description())
            d = {key: v.numpy() for key, v in d.items()}
            p = by_id[(int(d["checkpoint_idx"]), int(d["episode_idx"]))]
            frames = np.stack(
                [tf.io.decode_png(x, channels=1).numpy()[:, :, 0] for x in d["observations"]]
            )
            assert np.array_equal(frames, p["frames"]) and np.array_equal(
                d["actions"], p["actions"]
            )
            prefix = f"{ckpt}.{k}"
            for key in ("actions", "unclipped_rewards", "clipped_rewards", "discounts"):
                raw_npz[f"{prefix}.{key}"] = d[key]
            raw_npz[f"{prefix}.observations"] = frames
            records.append(
                {
                    "npz_prefix": prefix,
                    "checkpoint_idx": int(d["checkpoint_idx"]),
                    "episode_idx": int(d["episode_idx"]),
                    "episode_return": float(d["episode_return"]),
                    "clipped_episode_return": float(d["clipped_episode_return"]),
                    "length": len(d["actions"]),
                    "png_sha256": [hashlib.sha256(x).hexdigest() for x in d["observations"]],
                    "unpacked_lists": ["actions", "unclipped_rewards"] if p["unpacked"] else [],
                }
            )
        raw_json["files"][f"{GAME}/{name}"] = records
    np.savez_compressed(out_dir / "raw.npz", **raw_npz)
    (out_dir / "raw.json").write_text(json.dumps(raw_json, indent=1) + "\n")

    # (i) TFDS's reading of every split of every version
    transitions_by_version = {}
    for version in VERSIONS:
        builder = tfds.builder(f"{DATASET}/{CONFIG}:{version}", data_dir=data_dir)
        meta = {"version": version, "builder_class": type(builder).__name__, "splits": {}}
        arrays = {}
        for split, info in builder.info.splits.items():
            episodes = []
            ds = builder.as_dataset(split=split)
            for pos, ep in enumerate(ds):
                steps = ep["steps"].batch(10_000).get_single_element()
                steps = {k: v.numpy() for k, v in steps.items()}
                e = {
                    "npz_prefix": f"{split}.{pos}",
                    "checkpoint_id": int(ep["checkpoint_id"]),
                    "episode_id": int(ep["episode_id"]),
                    "episode_return": float(ep["episode_return"]),
                    "length": len(steps["action"]),
                }
                if "clipped_episode_return" in ep:
                    e["clipped_episode_return"] = float(ep["clipped_episode_return"])
                episodes.append(e)
                for k, v in steps.items():
                    arrays[f"{split}.{pos}.{k}"] = v
                _check_episode(by_id[(e["checkpoint_id"], e["episode_id"])], e, steps, version)
            meta["splits"][split] = {
                "num_examples": info.num_examples,
                "shard_lengths": list(info.shard_lengths),
                "num_bytes": info.num_bytes,
                "episodes": episodes,
            }
        np.savez_compressed(out_dir / f"tfds_{version}.npz", **arrays)
        (out_dir / f"tfds_{version}.json").write_text(json.dumps(meta, indent=1) + "\n")

        # (ii) the official PVN transitions for PVN's splits
        per_split = {}
        for name, (split, proportion) in PVN_SPLITS.items():
            split_string = _pvn_split_string(builder, split, proportion)
            tfds_split = tfds.split_for_jax_process(split_string, process_index=0, process_count=1)
            ds = tfds.load(
                f"{DATASET}/{CONFIG}:{version}",
                data_dir=data_dir,
                split=tfds_split,
                read_config=tfds.ReadConfig(enable_ordering_guard=False),
                shuffle_files=False,  # PVN: True (and shuffles); here the order is the files'
            )
            rows, read = [], []
            for ep in ds:
                key = (int(ep["checkpoint_id"]), int(ep["episode_id"]))
                before = len(rows)
                for start, t in enumerate(_episode_to_transitions(ep, num_actions)):
                    rows.append((key, start, {k: v.numpy() for k, v in t.items()}))
                read.append([*key, len(rows) - before])
            per_split[name] = (split_string, str(tfds_split), rows, read)
        transitions_by_version[version] = per_split

    # the two versions give the same transitions; store them once
    a, b = (transitions_by_version[v] for v in VERSIONS)
    for name in PVN_SPLITS:
        ra, rb = a[name][2], b[name][2]
        assert a[name][3] == b[name][3], name
        assert len(ra) == len(rb) and all(
            x[:2] == y[:2] and all(np.array_equal(x[2][k], y[2][k]) for k in x[2])
            for x, y in zip(ra, rb, strict=True)
        ), name
    t_npz, t_json = {}, {"num_actions": num_actions, "splits": {}, "episodes": []}
    for name, (split_string, tfds_split, rows, read) in a.items():
        for key, start, t in rows:
            _check_transition(by_id[key], start, t)
        onehot = np.stack([t["action"] for _, _, t in rows])
        t_npz[f"{name}.observation"] = np.stack([t["observation"] for _, _, t in rows])
        t_npz[f"{name}.next_observation"] = np.stack([t["next_observation"] for _, _, t in rows])
        t_npz[f"{name}.action"] = onehot.argmax(1).astype(np.int64)
        t_npz[f"{name}.action_one_hot"] = onehot
        t_npz[f"{name}.terminal"] = np.array([bool(t["terminal"][0]) for _, _, t in rows])
        t_npz[f"{name}.checkpoint_id"] = np.array([k[0] for k, _, _ in rows], np.int64)
        t_npz[f"{name}.episode_id"] = np.array([k[1] for k, _, _ in rows], np.int64)
        t_npz[f"{name}.start"] = np.array([s for _, s, _ in rows], np.int64)
        pvn_split, proportion = PVN_SPLITS[name]
        t_json["splits"][name] = {
            "pvn_split": pvn_split,
            "data_proportion_per_checkpoint": proportion,
            "tfds_split": split_string,
            "split_for_jax_process": tfds_split,
            "num_transitions": len(rows),
            # [checkpoint_id, episode_id, transitions], in the order tfds.load gave them
            "episodes_read": read,
        }
    full = a["full"][2]
    for p in plan:
        idx = [i for i, (k, _, _) in enumerate(full) if k == (p["checkpoint"], p["episode"])]
        t_json["episodes"].append(
            {
                "checkpoint_id": p["checkpoint"],
                "episode_id": p["episode"],
                "length": p["length"],
                "terminal": p["terminal"],
                "num_transitions": len(idx),
                "rows_in_full": idx,
            }
        )
    np.savez_compressed(out_dir / "pvn_transitions.npz", **t_npz)
    (out_dir / "pvn_transitions.json").write_text(json.dumps(t_json, indent=1) + "\n")

    plan_meta = json.loads(Path(plan_info).read_text())
    meta = {
        "game": GAME,
        "run": RUN,
        "shards": SHARDS,
        "seed": SEED,
        "num_actions": num_actions,
        "frames": "make_atari('Asterix', 1, 'dopamine', seed=0), uniform random actions",
        "packages": versions,
        "pvn_python_packages": plan_meta["pvn_python_packages"],
        "raw_write_order": plan_meta["raw"],
        "version_1_0_0": "made by the TFDS 4.9.10 builder patched to TFDS 4.5.2's features "
        "(see the generator's docstring and README.md), not by TFDS 4.5.x",
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"answers -> {out_dir}")


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _check_episode(p: dict, e: dict, steps: dict, version: str) -> None:
    """TFDS's episode against what was written (the conversion of the spec, section 3.3)."""
    n = p["length"]
    assert e["length"] == n
    assert np.array_equal(steps["observation"][:, :, :, 0], p["frames"])
    assert np.array_equal(steps["action"], p["actions"])
    assert np.array_equal(steps["reward"], p["unclipped_rewards"])
    assert e["episode_return"] == np.float32(p["unclipped_rewards"].sum())
    last = np.arange(n) == n - 1
    assert np.array_equal(steps["is_first"], np.arange(n) == 0)
    assert np.array_equal(steps["is_last"], last)
    assert np.array_equal(steps["is_terminal"], last & p["terminal"])
    discount = p["discounts"]
    if p["terminal"]:
        discount = np.append(discount[1:], np.float32(0))
    assert np.array_equal(steps["discount"], discount)
    if version == "1.0.0":
        assert np.array_equal(steps["clipped_reward"], p["clipped_rewards"])
        assert e["clipped_episode_return"] == np.float32(p["clipped_rewards"].sum())
    else:
        assert "clipped_reward" not in steps and "clipped_episode_return" not in e


def _check_transition(p: dict, start: int, t: dict) -> None:
    f = p["frames"]
    assert np.array_equal(t["observation"], np.stack(f[start : start + 4], -1))
    assert np.array_equal(t["next_observation"], np.stack(f[start + 1 : start + 5], -1))
    assert int(t["action"].argmax()) == p["actions"][start + 3] and t["action"].sum() == 1
    assert bool(t["terminal"][0]) == (p["terminal"] and start + 4 == p["length"] - 1)


# --------------------------------------------------------------------------------------------
# driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-only", metavar="NPZ", help="step 1 only (run with pvn's .venv)")
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "rlu"))
    ap.add_argument("--pvn-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--stage", choices=["raw", "build", "answers"], help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.frames_only:
        return grab_frames(args.frames_only)
    if args.stage == "raw":
        info = write_raw(args.args[0], Path(args.args[1]))
        Path(args.args[2]).write_text(json.dumps(info))
        return None
    if args.stage == "build":
        return build(*args.args)
    if args.stage == "answers":
        return answers(*args.args)

    tmp = Path(tempfile.mkdtemp(prefix="rlu_fixture_"))
    out = Path(args.out)
    me = [sys.executable, str(Path(__file__).resolve())]

    def run(*cmd):
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    frames = str(tmp / "frames.npz")
    run(args.pvn_python, str(Path(__file__).resolve()), "--frames-only", frames)
    pvn_versions = subprocess.run(
        [
            args.pvn_python,
            "-c",
            "import envpool, numpy; print(envpool.__version__, numpy.__version__)",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    raw, info = tmp / "raw", tmp / "raw_info.json"
    run(*me, "--stage", "raw", "--args", frames, str(raw), str(info))
    for version in VERSIONS:  # one process each: the 1.0.0 build patches the builder class
        run(*me, "--stage", "build", "--args", str(raw), str(tmp / f"tfds_{version}"), version)
    tfds_dir = tmp / "tfds"
    for version in VERSIONS:
        src = tmp / f"tfds_{version}" / DATASET / CONFIG / version
        shutil.copytree(src, tfds_dir / DATASET / CONFIG / version)
    shutil.copytree(tmp / "tfds_1.1.0" / DATASET / ".config", tfds_dir / DATASET / ".config")
    plan = {
        "pvn_python_packages": {"envpool": pvn_versions[0], "numpy": pvn_versions[1]},
        "raw": [
            {k: e[k] for k in ("checkpoint", "episode", "length", "terminal", "unpacked")}
            | {"source_steps": e["source_steps"]}
            for e in json.loads(info.read_text())
        ],
    }
    (tmp / "plan.json").write_text(json.dumps(plan))
    answers_tmp = tmp / "answers"
    run(
        *me,
        "--stage",
        "answers",
        "--args",
        frames,
        str(raw),
        str(tfds_dir),
        str(answers_tmp),
        str(tmp / "plan.json"),
    )
    for name in ("raw", "tfds", "answers"):
        shutil.rmtree(out / name, ignore_errors=True)
    shutil.copytree(raw, out / "raw")
    shutil.copytree(tfds_dir, out / "tfds")
    shutil.copytree(answers_tmp, out / "answers")
    if not args.keep_tmp:
        shutil.rmtree(tmp)
    print(f"fixture -> {out}")
    return None


if __name__ == "__main__":
    main()
