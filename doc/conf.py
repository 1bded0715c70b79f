"""Sphinx configuration for the glance-tx documentation."""

from __future__ import annotations

import re
from pathlib import Path

_init = Path(__file__).resolve().parent.parent / "glance_tx" / "__init__.py"
_match = re.search(r'^__version__ = "([^"]+)"', _init.read_text(), re.MULTILINE)

project = "glance-tx"
author = "the glance-tx authors"
copyright = "the glance-tx authors"
release = _match.group(1) if _match else "unknown"
version = release

extensions: list[str] = []
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"glance-tx {release}"
html_static_path: list[str] = []
