"""RL Unplugged reading speed, side by side in one run (prints JSON).

Writes a prepared ``rlu_atari_checkpoints_ordered`` directory (2 checkpoint splits of episodes
of real frames of random play, one PNG per step as TFDS stores them, TFRecord framing with
CRCs) with pvn's own pieces, then measures in interleaved rounds (``_bench.compare``):

  * pvn: :func:`replay.rlu.episodes`, shard to decoded frames (CRC checks, protobuf parse,
    PNG decode, field checks): frames per second on one core;
  * bare_png: ``pyspng.load`` of the same PNGs and nothing else (goal: pvn >= 0.7x of it);
  * bare_libspng: libspng's decode as pvn calls it (``pyspng._pyspng_c``, without
    ``pyspng.load``'s wrapper), and nothing else: the floor pvn sits on;
  * pillow_png: Pillow's decode of the same PNGs (the alternative decoder);
  * parse_only: framing, CRCs and protobuf parse, no PNG decode.

Then the conversion into :class:`replay.RLUDataset`'s cache with 1 worker and with 2 (one
process per checkpoint), and the goal of 25k frames per second per core (a 1M-step checkpoint
in 40 s).

    python scripts/bench_rlu.py [--game Asterix] [--frames 4000] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import compare, emit, real_frames

from pvn.replay.rlu import DATASET, episodes
from pvn.replay.tfrecord import _example_class, masked_crc32c, parse_example, records


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


def _record(data: bytes) -> bytes:
    head = struct.pack("<Q", len(data))
    return (head + struct.pack("<I", masked_crc32c(head)) + data
            + struct.pack("<I", masked_crc32c(data)))  # fmt: skip


def write_prepared(root: Path, pngs: list[bytes], checkpoints: int = 2, length: int = 500) -> Path:
    """A prepared TFDS directory of ``checkpoints`` splits, episodes of ``length`` steps."""
    version = root / DATASET / "Pong_run_1" / "1.1.0"
    version.mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = []
    for c in range(checkpoints):
        name, n_eps = f"checkpoint_{c:02d}", len(pngs) // length
        with open(version / f"{DATASET}-{name}.tfrecord-00000-of-00001", "wb") as f:
            for e in range(n_eps):
                ex = _example_class()()
                feat = ex.features.feature
                feat["steps/observation"].bytes_list.value.extend(
                    pngs[e * length : (e + 1) * length]
                )
                feat["steps/action"].int64_list.value.extend(rng.integers(0, 6, length).tolist())
                for key in ("steps/reward", "steps/discount"):
                    feat[key].float_list.value.extend([0.0] * length)
                for key in ("steps/is_first", "steps/is_last", "steps/is_terminal"):
                    feat[key].int64_list.value.extend([0] * length)
                feat["checkpoint_id"].int64_list.value.append(c)
                feat["episode_id"].int64_list.value.append(e)
                feat["episode_return"].float_list.value.append(0.0)
                f.write(_record(ex.SerializeToString()))
        splits.append({"name": name, "shardLengths": [str(n_eps)]})
    (version / "dataset_info.json").write_text(json.dumps({"splits": splits}))
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=4000, help="real frames per checkpoint")
    ap.add_argument("--game", default="Asterix", help="the game whose random play is encoded")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of each timed run")
    args = ap.parse_args()
    import pyspng
    from PIL import Image

    frames = real_frames(args.game, args.frames)[: args.frames]
    pngs = [_png(f) for f in frames]
    tmp = Path(tempfile.mkdtemp())
    data = write_prepared(tmp / "data", pngs)
    shard = next((data / DATASET / "Pong_run_1" / "1.1.0").glob("*checkpoint_00*"))
    n = len(pngs) // 500 * 500

    def pvn() -> int:
        return sum(len(ep["action"]) for ep in episodes(data, "Pong", 1, "1.1.0", "checkpoint_00"))

    def bare_png() -> int:
        for p in pngs[:n]:
            pyspng.load(p)
        return n

    from pyspng._pyspng_c import SPNG_FMT_G8, spng_decode_image_bytes

    def bare_libspng() -> int:
        for p in pngs[:n]:
            spng_decode_image_bytes(p, SPNG_FMT_G8)
        return n

    def pillow_png() -> int:
        for p in pngs[:n]:
            np.asarray(Image.open(io.BytesIO(p)))
        return n

    def parse_only() -> int:
        return sum(len(parse_example(d, "x")["steps/action"]) for _, d in records(shard))

    png_bytes = int(np.mean([len(p) for p in pngs]))
    result = {"game": args.game, "frames_per_checkpoint": n, "png_bytes_mean": png_bytes}
    result.update(compare({"pvn": pvn, "bare_png": bare_png, "bare_libspng": bare_libspng,
                           "pillow_png": pillow_png, "parse_only": parse_only},
                          seconds=args.seconds))  # fmt: skip
    result["goal_pvn_vs_bare_png"] = 0.7
    result["goal_frames_per_s_per_core"] = 25_000
    from pvn.replay import RLUDataset

    for workers in (1, 2):
        t = time.perf_counter()
        RLUDataset(data, "Pong", 1, "1.1.0", cache_dir=tmp / f"cache{workers}", workers=workers)
        dt = time.perf_counter() - t
        result[f"convert_frames_per_s_workers{workers}"] = round(2 * n / dt)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
