"""The wheel installs one import name, ``pvn``: nothing that could overwrite another
distribution's top-level package (PyPI has ``agents``, ``replay``, ``envs``, ``auxiliary``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pvn").rglob("__init__.py")
    }
    assert found | {"pvn.configs"} == listed


@pytest.mark.slow
def test_the_wheel_holds_nothing_but_pvn(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("pvn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"pvn"}
    for expected in ("pvn/replay/dataset.py", "pvn/envs/atari.py", "pvn/agents/dqn.py",
                     "pvn/auxiliary/__init__.py", "pvn/configs/evaluate.yaml",
                     "pvn/configs/experiment/evidence_1m.yaml"):  # fmt: skip
        assert expected in names
