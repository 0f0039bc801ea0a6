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


def test_every_function_in_the_api_page_says_its_args_and_returns():
    """docs/api.md is the public surface: each function there documents its arguments and what
    it returns (Google style, as mkdocstrings renders them); each class its arguments."""
    import importlib
    import inspect
    import re

    names = re.findall(r"^::: ([\w.]+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert len(names) > 15
    missing = []
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        doc = inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            init = inspect.signature(obj).parameters
            wanted = ["Args:"] if [p for p in init if p not in ("self", "args", "kwargs")] else []
        else:  # a function returning None has nothing to say under Returns
            returns = inspect.signature(obj).return_annotation not in (None, "None")
            wanted = ["Args:", "Returns:"] if returns else ["Args:"]
        missing += [f"{name}: {w}" for w in wanted if w not in doc]
    assert not missing, missing
