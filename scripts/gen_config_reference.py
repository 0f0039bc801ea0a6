"""Write ``docs/config_reference.md``: every command's keys and every group option, with their
defaults and meanings, straight from their one home: each command's schema (``pvn/schema.py``,
whose field comments are the documentation) and the group option files (``configs/``).

    python scripts/gen_config_reference.py          # (re)write the page
    python scripts/gen_config_reference.py --check  # exit 1 if the page is out of date

``tests/test_docs.py`` runs the check, so the reference can never drift from the configs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pvn.schema import describe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAGE = ROOT / "docs" / "config_reference.md"
COMMANDS = ("collect", "pretrain", "evaluate", "quickstart")


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `pvn/schema.py` and `configs/` by `scripts/gen_config_reference.py`;",
        "every key with its default and meaning. Set a key with `key=value`, choose a group",
        "option with `group=option` (`pvn COMMAND --help` prints the same; `--cfg job` the",
        "resolved config).",
        "",
    ]
    for cmd in COMMANDS:  # the schema's keys, then the YAML file's group choices
        out += [f"## `pvn {cmd}`", "", "```yaml", describe(cmd), "```", ""]
        out += [f"Group options and presets (`configs/{cmd}.yaml`):", "", "```yaml"]
        out += [(CONFIGS / f"{cmd}.yaml").read_text().rstrip(), "```", ""]
    groups = sorted(p for p in CONFIGS.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for group in groups:
        if group.name == "experiment":
            continue
        out += [f"## Group `{group.name}=`", ""]
        for option in sorted(group.glob("*.yaml")):
            out += [f"### `{group.name}={option.stem}`", "", "```yaml"]
            out += [option.read_text().rstrip(), "```", ""]
    out += ["## Experiments (`pvn experiment`)", ""]
    out += [
        "An experiment's `launcher:` section (local, SLURM or submitit's local executor, and",
        "each stage kind's resources) is described in [the cluster page](cluster.md).",
        "",
    ]
    for exp in sorted((CONFIGS / "experiment").glob("*.yaml")):
        out += [f"### `configs/experiment/{exp.name}`", "", "```yaml", exp.read_text().rstrip()]
        out += ["```", ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE}: out of date; run python scripts/gen_config_reference.py")
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
