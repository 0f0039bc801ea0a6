"""RL Unplugged's Atari episodes, read as TensorFlow Datasets and the official PVN code read them.

The DQN Replay Dataset's runs are published as TensorFlow Datasets'
``rlu_atari_checkpoints_ordered`` (46 games x 5 runs x 50 checkpoints of ~1M steps; 49 for
Carnival, Gravitar and StarGunner), the data the official PVN code trains on (google-research
``pvn/datasets/atari.py``). Two layouts:

* **prepared** (what ``tfds.builder(...).download_and_prepare()`` leaves):
  ``DATA_DIR/rlu_atari_checkpoints_ordered/<Game>_run_<r>/<version>/`` with ``dataset_info.json``
  and, per split ``checkpoint_XX``, uncompressed TFRecord shards of RLDS episodes (flattened
  ``steps/...`` keys, booleans as int64 0/1, one PNG per step);
* **raw** (``gs://rl_unplugged/atari_episodes_ordered/<Game>/run_<r>-XXXXX-of-000NN``, file ``i``
  = checkpoint ``i``): GZIP TFRecords with DeepMind's field names, which TFDS converts with
  ``atari_utils.atari_example_to_rlds``; :func:`raw_to_rlds` is that rule.

:func:`episodes` yields RLDS episodes from either, in TFDS's order (each checkpoint's episodes by
ascending ``episode_id``); :func:`official_transitions` is the official rule that turns an episode
into PVN's transitions (``_episode_to_transitions``: windows of 5 steps, no padding). Nothing here
imports TensorFlow; ``docs/rl_unplugged.md`` says how the parts were chosen and tested.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvn.replay.errors import ReplayError
from pvn.replay.store import RLU_ENTRY_VERSION, is_store, read_store, store_checkpoints
from pvn.replay.tfrecord import parse_example, records

DATASET = "rlu_atari_checkpoints_ordered"
VERSIONS = ("1.0.0", "1.1.0")
#: TFDS ``rl_unplugged/atari_utils.py`` ``_GAMES``: the 46 games of the release
GAMES = (
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "Atlantis",
    "BankHeist",
    "BattleZone",
    "BeamRider",
    "Boxing",
    "Breakout",
    "Carnival",
    "Centipede",
    "ChopperCommand",
    "CrazyClimber",
    "DemonAttack",
    "DoubleDunk",
    "Enduro",
    "FishingDerby",
    "Freeway",
    "Frostbite",
    "Gopher",
    "Gravitar",
    "Hero",
    "IceHockey",
    "Jamesbond",
    "Kangaroo",
    "Krull",
    "KungFuMaster",
    "MsPacman",
    "NameThisGame",
    "Phoenix",
    "Pong",
    "Pooyan",
    "Qbert",
    "Riverraid",
    "RoadRunner",
    "Robotank",
    "Seaquest",
    "SpaceInvaders",
    "StarGunner",
    "TimePilot",
    "UpNDown",
    "VideoPinball",
    "WizardOfWor",
    "YarsRevenge",
    "Zaxxon",
)
#: games with 49 checkpoints (``_SHORT_GAMES``)
SHORT_GAMES = frozenset({"Carnival", "Gravitar", "StarGunner"})
RUNS = (1, 2, 3, 4, 5)
#: the official splits other than ``full`` (``pvn/datasets/atari.py``); ``weak`` reads
#: checkpoint 0 of every run, whatever ``run`` is asked for
FIXED_SPLITS = {"mixed_small": (0, 24, 49), "mixed": (0, 9, 19, 29, 39, 49), "weak": (0,)}
STACK = 4  # frames per state; an official transition is a window of STACK + 1 steps
FRAME = (84, 84)
_SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default


def num_checkpoints(game: str) -> int:
    """Checkpoints of ``game``'s runs: 50, or 49 for the three short games."""
    return 49 if game in SHORT_GAMES else 50


@dataclass(frozen=True)
class Source:
    """One game-run's files.

    Attributes:
        kind: ``prepared`` (a TFDS directory), ``raw`` (DeepMind's GZIP files) or ``store``
            (decoded checkpoints written by ``pvn data convert``, :mod:`replay.store`).
        root: the version directory (prepared), the game's directory (raw), the store.
        game: the game.
        run: the run (1-5).
        shards: per checkpoint id, its files; for prepared data also the episode count.
    """

    kind: str
    root: Path
    game: str
    run: int
    shards: dict[int, tuple[list[Path], int | None]]

    @property
    def checkpoints(self) -> list[int]:
        return sorted(self.shards)


def locate(data_dir: str | Path, game: str, run: int, version: str = "1.0.0") -> Source:
    """The files of ``game``'s run ``run`` under ``data_dir``: the prepared TFDS directory of
    ``version`` if there is one, else the raw files (``DATA_DIR/<Game>/run_<r>-*``)."""
    if game not in GAMES:
        raise ReplayError(f"game={game!r}: not an RL Unplugged Atari game; choose one of {GAMES}")
    if run not in RUNS:
        raise ReplayError(f"run={run!r}: RL Unplugged has runs 1-5")
    if version not in VERSIONS:
        raise ReplayError(f"version={version!r}: choose one of {', '.join(VERSIONS)}")
    data_dir = Path(data_dir)
    if is_store(data_dir):
        return _store_source(data_dir, game, run)
    prepared = data_dir / DATASET / f"{game}_run_{run}" / version
    if (prepared / "dataset_info.json").is_file():
        return Source("prepared", prepared, game, run, _prepared_shards(prepared))
    for raw in (data_dir / game, data_dir / "atari_episodes_ordered" / game):
        if any(raw.glob(f"run_{run}-*-of-*")):
            return Source("raw", raw, game, run, _raw_shards(raw, game, run))
    raise ReplayError(
        f"{data_dir}: no RL Unplugged data for {game} run {run}: expected {prepared}/"
        f"dataset_info.json (TFDS) or {data_dir / game}/run_{run}-XXXXX-of-000NN (raw files)"
    )


def _prepared_shards(root: Path) -> dict[int, tuple[list[Path], int | None]]:
    info_path = root / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text())
        splits = info["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReplayError(f"{info_path}: not a TFDS dataset_info.json ({e})") from None
    out = {}
    for split in splits:
        name = str(split.get("name", ""))
        m = re.fullmatch(r"checkpoint_(\d+)", name)
        if m is None:
            raise ReplayError(f"{info_path}: unexpected split {name!r}")
        # int64 fields are JSON strings in TFDS's files (proto JSON); older writers used numbers
        lengths = [int(n) for n in split.get("shardLengths", [])]
        if not lengths:
            raise ReplayError(f"{info_path}: split {name} lists no shardLengths")
        template = split.get("filepathTemplate") or _SHARD_TEMPLATE
        files = []
        for i in range(len(lengths)):
            fname = (
                template.replace("{DATASET}", DATASET)
                .replace("{SPLIT}", name)
                .replace("{FILEFORMAT}", info.get("fileFormat", "tfrecord"))
                .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(lengths):05d}")
            )
            path = root / fname
            if not path.is_file():
                raise ReplayError(f"{path}: missing shard {i} of split {name} ({info_path})")
            files.append(path)
        out[int(m.group(1))] = (files, sum(lengths))
    return out


def _raw_shards(root: Path, game: str, run: int) -> dict[int, tuple[list[Path], int | None]]:
    found = {}
    for path in root.glob(f"run_{run}-*-of-*"):
        m = re.fullmatch(rf"run_{run}-(\d{{5}})-of-(\d{{5}})", path.name)
        if m:
            found[int(m.group(1))] = (path, int(m.group(2)))
    totals = {n for _, n in found.values()}
    if len(totals) != 1:
        raise ReplayError(f"{root}: run_{run} files name different totals {sorted(totals)}")
    (total,) = totals
    missing = sorted(set(range(total)) - set(found))
    if missing:
        raise ReplayError(f"{root / f'run_{run}-{missing[0]:05d}-of-{total:05d}'}: missing")
    return {c: ([path], None) for c, (path, _) in found.items()}


def _store_source(root: Path, game: str, run: int) -> Source:
    info = read_store(root)
    held = (info.get("source_format"), info.get("game"), info.get("run"))
    if held != ("rlu", game, run):
        raise ReplayError(f"{root}: a store of {held[0]} data (game {held[1]}, run {held[2]}), "
                          f"not RL Unplugged {game} run {run}")  # fmt: skip
    complete, incomplete = store_checkpoints(root, RLU_ENTRY_VERSION)
    if incomplete:
        c, why = next(iter(incomplete.items()))
        raise ReplayError(f"checkpoint {c} of the store is not usable: {why[0]}")
    return Source("store", root, game, run, {c: ([root / f"ckpt.{c}"], None) for c in complete})


def select(source: Source, split: str, proportion: float = 1.0) -> list[int]:
    """The checkpoints of an official split: ``full`` (every checkpoint), ``mixed_small``,
    ``mixed``, ``weak``, or one ``checkpoint_XX`` (:func:`episode_limit` says how many of each
    checkpoint's episodes)."""
    if split == "full":
        if not 0 < proportion <= 1:
            raise ReplayError(f"proportion={proportion}: must be in (0, 1]")
        return source.checkpoints
    if m := re.fullmatch(r"checkpoint_(\d+)", split):
        chosen: Sequence[int] = (int(m.group(1)),)
    elif split in FIXED_SPLITS:
        chosen = FIXED_SPLITS[split]
    else:
        raise ReplayError(f"split={split!r}: choose full, {', '.join(FIXED_SPLITS)} or "
                          "checkpoint_XX")  # fmt: skip
    absent = [c for c in chosen if c not in source.shards]
    if absent:
        raise ReplayError(f"split={split!r}: {source.root} has no checkpoint {absent[0]} "
                          f"({source.game} has {num_checkpoints(source.game)})")  # fmt: skip
    return list(chosen)


def selection(data_dir: str | Path, game: str, run: int, version: str, split: str,
              proportion: float) -> Iterator[tuple[int, Source, int]]:  # fmt: skip
    """``(run, source, checkpoint)`` of every checkpoint a split reads, in order (``weak``:
    checkpoint 0 of runs 1-5, whatever ``run`` is)."""
    for r in RUNS if split == "weak" else (run,):
        source = locate(data_dir, game, r, version)
        for checkpoint in select(source, split, proportion):
            yield r, source, checkpoint


def episode_limit(source: Source, checkpoint: int, split: str, proportion: float) -> int | None:
    """How many of the checkpoint's first episodes the split reads (``None``: all): with
    ``full``, ``floor(proportion * episodes)`` (``data_proportion_per_checkpoint``), never 0."""
    if split != "full" or proportion == 1:
        return None
    limit = int(proportion * episode_count(source, checkpoint))
    if limit == 0:
        raise ReplayError(f"proportion={proportion}: no episode of checkpoint {checkpoint} of "
                          f"{source.root}")  # fmt: skip
    return limit


def raw_to_rlds(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """TFDS's conversion of a raw record (``atari_utils.atari_example_to_rlds``): the episode is
    terminal when its last discount is 0, and then the last step is terminal and the discounts
    move one step earlier (padded with 0); actions and rewards are not moved. ``reward`` is the
    raw ``unclipped_rewards`` (TFDS: "actually also clipped")."""
    for key in ("checkpoint_idx", "episode_idx", "episode_return", "observations", "actions",
                "unclipped_rewards", "discounts"):  # fmt: skip
        if key not in raw:
            raise ReplayError(f"{where}: raw RL Unplugged record without '{key}'")
    n = len(raw["actions"])
    discount = np.asarray(raw["discounts"], np.float32)
    terminal = np.zeros(n, bool)
    if n and discount[-1] == 0.0:
        terminal[-1] = True
        discount = np.append(discount[1:], np.float32(0))
    return {
        "checkpoint_id": raw["checkpoint_idx"],
        "episode_id": raw["episode_idx"],
        "episode_return": raw["episode_return"],
        "steps/observation": raw["observations"],
        "steps/action": raw["actions"],
        "steps/reward": raw["unclipped_rewards"],
        "steps/discount": discount,
        "steps/is_first": np.arange(n) == 0,
        "steps/is_last": np.arange(n) == n - 1,
        "steps/is_terminal": terminal,
    }


def _scalar(example: dict[str, Any], key: str, where: str) -> Any:
    value = example.get(key)
    if value is None or len(value) != 1:
        raise ReplayError(f"{where}: '{key}' must hold one value")
    return value[0]


STEP_KEYS = ("action", "reward", "discount", "is_first", "is_last", "is_terminal")
_DTYPES = {"action": np.int64, "reward": np.float32, "discount": np.float32}


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: how every frame's PNG starts: the signature and the IHDR chunk's length, type, width 84,
#: height 84, bit depth 8 and colour type 0 (grey)
_GREY_84 = _PNG_SIGNATURE + struct.pack(">I4sIIBB", 13, b"IHDR", *FRAME, 8, 0)


def _png_kind(png: bytes) -> str:
    """What a frame's bytes are, from the PNG header: size, bit depth and colour type."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR" or len(png) < 26:
        return "not a PNG"
    w, h, depth, colour = struct.unpack(">IIBB", png[16:26])
    kind = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}.get(colour, "?")
    return f"a PNG, {w}x{h} {depth}-bit {kind}"


def decode_episode(example: dict[str, Any], where: str) -> dict[str, Any]:
    """An RLDS episode (prepared keys) as numpy: ``observation`` (L, 84, 84) uint8 decoded
    from its PNGs, the step fields (L,), and ``checkpoint_id``, ``episode_id``,
    ``episode_return``."""
    from pyspng._pyspng_c import SPNG_FMT_G8, spng_decode_image_bytes  # libspng's decoder

    pngs = example.get("steps/observation")
    if pngs is None:
        raise ReplayError(f"{where}: no 'steps/observation'")
    n = len(pngs)
    episode: dict[str, Any] = {
        "checkpoint_id": int(_scalar(example, "checkpoint_id", where)),
        "episode_id": int(_scalar(example, "episode_id", where)),
        "episode_return": np.float32(_scalar(example, "episode_return", where)),
    }
    # libspng itself, without pyspng.load's wrapper (its format table and HWC slicing are ~6%
    # of a frame's decode, docs/rl_unplugged.md), once the header says an 84x84 8-bit grey PNG
    frames = np.empty((n, *FRAME, 1), np.uint8)
    for t, png in enumerate(pngs):
        if png[:26] != _GREY_84:
            raise ReplayError(f"{where}: step {t}: {_png_kind(png)}, not an 84x84 grey frame")
        try:
            frames[t] = spng_decode_image_bytes(png, SPNG_FMT_G8)
        except Exception as e:  # libspng's own error: not a readable PNG
            raise ReplayError(f"{where}: step {t}: not a readable PNG ({e})") from None
    episode["observation"] = frames[..., 0]
    for key in STEP_KEYS:
        value = example.get(f"steps/{key}")
        if value is None or len(value) != n:
            got = "none" if value is None else len(value)
            raise ReplayError(f"{where}: 'steps/{key}' has {got} values for {n} steps")
        episode[key] = np.asarray(value, _DTYPES.get(key, bool))
    return episode


def _examples(source: Source, checkpoint: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, example)`` of each episode of one checkpoint in TFDS's order (ascending
    ``episode_id``), with the prepared keys, not decoded."""
    files, _ = source.shards[checkpoint]
    if source.kind == "store":
        raise ReplayError(f"{source.root}: a store holds decoded checkpoints; read it with "
                          "RLUDataset (pvn pretrain data.path=STORE)")  # fmt: skip
    if source.kind == "prepared":  # already in order (TFDS writes ordered splits sorted)
        yield from (
            (f"{path}: record {i} (byte {off})", parse_example(data, f"{path}: record {i}"))
            for path in files
            for i, (off, data) in enumerate(records(path))
        )
        return
    # TFDS sorts each raw file's episodes by id; so do we (one checkpoint in memory)
    raw = [
        (f"{path}: record {i} (byte {off})", parse_example(data, f"{path}: record {i}"))
        for path in files
        for i, (off, data) in enumerate(records(path, compressed=True))
    ]
    rlds = [(w, raw_to_rlds(ex, w)) for w, ex in raw]
    yield from sorted(rlds, key=lambda item: int(_scalar(item[1], "episode_id", item[0])))


def read_checkpoint(source: Source, checkpoint: int, limit: int | None = None) -> Iterator[dict]:
    """The episodes of one checkpoint in TFDS's order (ascending ``episode_id``), decoded; only
    the first ``limit`` when given."""
    for k, (where, example) in enumerate(_examples(source, checkpoint)):
        if limit is not None and k >= limit:
            return
        yield decode_episode(example, where)


def checkpoint_summary(source: Source, checkpoint: int) -> dict[str, Any]:
    """Episodes, steps, terminal episodes and episode returns of one checkpoint, from the
    records without decoding a frame (``pvn data info``)."""
    lengths, returns, terminal = [], [], 0
    for where, example in _examples(source, checkpoint):
        actions, ends = example.get("steps/action"), example.get("steps/is_terminal")
        lengths.append(0 if actions is None else len(actions))
        returns.append(float(_scalar(example, "episode_return", where)))
        terminal += ends is not None and len(ends) > 0 and bool(ends[-1])
    r = np.asarray(returns, np.float64)
    stats = {"mean": float(r.mean()), "min": float(r.min()), "max": float(r.max())} if len(r) else {
        "mean": None, "min": None, "max": None}  # fmt: skip
    return {"checkpoint": checkpoint, "episodes": len(lengths), "steps": int(sum(lengths)),
            "terminal_episodes": terminal, "return": stats}  # fmt: skip


def episodes(
    data_dir: str | Path,
    game: str,
    run: int,
    version: str = "1.0.0",
    split: str = "full",
    proportion: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """RLDS episodes of an RL Unplugged Atari run, prepared or raw, as numpy arrays.

    Args:
        data_dir: the TFDS data directory (holding ``rlu_atari_checkpoints_ordered/``), or the
            directory of the raw files (holding ``<Game>/run_<r>-XXXXX-of-000NN``).
        game: the game (CamelCase, e.g. ``Pong``).
        run: the run, 1-5 (``weak`` reads all five).
        version: the TFDS version of prepared data (``1.0.0``, the official code's; ``1.1.0``).
        split: ``full``, ``mixed_small``, ``mixed``, ``weak`` (the official code's) or
            ``checkpoint_XX``.
        proportion: with ``full``, the first ``floor(proportion * episodes)`` of each
            checkpoint (``data_proportion_per_checkpoint``).

    Yields:
        Dicts with ``checkpoint_id``, ``episode_id``, ``episode_return`` and per step
        ``observation`` (L, 84, 84) uint8, ``action``, ``reward``, ``discount``, ``is_first``,
        ``is_last``, ``is_terminal``; checkpoint by checkpoint, each in ascending episode id.
    """
    for _, source, checkpoint in selection(data_dir, game, run, version, split, proportion):
        limit = episode_limit(source, checkpoint, split, proportion)
        yield from read_checkpoint(source, checkpoint, limit)


def episode_count(source: Source, checkpoint: int) -> int:
    """Episodes of one checkpoint (from ``dataset_info.json``, or by reading the raw file)."""
    files, count = source.shards[checkpoint]
    if source.kind == "store":
        return len(np.load(files[0] / "episode_start.npy", mmap_mode="r", allow_pickle=False))
    if count is None:
        count = sum(1 for path in files for _ in records(path, compressed=True))
    return count


def official_transitions(episode: dict[str, Any]) -> dict[str, np.ndarray]:
    """The official PVN transitions of one episode (google-research ``pvn/datasets/atari.py``
    ``_episode_to_transitions``): every window of 5 consecutive steps ``i..i+4`` gives
    observation = frames ``i..i+3``, next observation = frames ``i+1..i+4``, action =
    ``action[i+3]`` and terminal = ``is_terminal[i+4]``; an episode of L steps gives
    ``max(0, L - 4)``, none across episodes, no padding. Frames channels-first (B, 4, 84, 84)."""
    frames = episode["observation"]
    starts = np.arange(max(0, len(frames) - STACK))
    window = starts[:, None] + np.arange(STACK)
    return {
        "observation": frames[window],
        "next_observation": frames[window + 1],
        "action": episode["action"][starts + STACK - 1],
        "terminal": episode["is_terminal"][starts + STACK],
    }
