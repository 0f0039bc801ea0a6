"""MkDocs hook: the site's home page is ``README.md``, so the two are one text, not two copies.

``docs/index.md`` is a placeholder; when the site is built (``make docs``), this hook gives the
home page the README's Markdown with its ``docs/`` links made relative to the site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def home_markdown(readme: str) -> str:
    """The README with links into ``docs/`` rewritten for a page that lives in ``docs/``."""
    return readme.replace("](docs/)", "](index.md)").replace("](docs/", "](")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    return home_markdown(README.read_text())
