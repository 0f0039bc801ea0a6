"""The documentation cannot drift from the code: the configuration reference is regenerated
from ``configs/`` and must equal the committed page; README links point at files that exist,
in the repository and on the site (whose home page is the README)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link
    assert len(text.splitlines()) <= 250


def test_site_home_is_the_readme_with_links_into_docs():
    """The site's home page is the README (one text); its links resolve from inside ``docs/``."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from docs_home import home_markdown

    home = home_markdown((ROOT / "README.md").read_text())
    links = [x for x in re.findall(r"\]\(([^)#]+)\)", home) if "://" not in x]
    assert links and not any(x.startswith("docs/") for x in links)
    for link in links:
        assert (ROOT / "docs" / link).exists(), link
    assert home_markdown("[a](docs/) [b](docs/x.md#y)") == "[a](index.md) [b](x.md#y)"
