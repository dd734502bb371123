"""Sphinx configuration of the mdgm_ros documentation.

Layout: flat. This file sits next to the pages (docs/*.rst) and the generator extension (docs/_ext/);
there is no docs/source/ folder. Build with `make docs`, which runs
``sphinx-build -W --keep-going -n -b html docs docs/_build/html``: warnings are errors and, with
nitpicky mode, so is every internal reference (:doc:, :ref:) that does not resolve.

The node parameters, the messages, the launch arguments and the families table are generated from the
package at build time (docs/_ext/mdgm_reference.py), so the package must import: build with the
project's venv (`make install`).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))                        # the package from this source tree

project = "mdgm_ros"
author = "mdgm_ros developers"
copyright = "mdgm_ros developers, Apache-2.0"
release = re.search(r"<version>([^<]+)</version>", (ROOT / "package.xml").read_text(encoding="utf-8")).group(1)
version = release

extensions = ["mdgm_reference"]
root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext"]
nitpicky = True
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"mdgm_ros {release}"
html_theme_options = {"page_width": "1200px", "sidebar_width": "240px", "show_relbars": True}
html_static_path: list[str] = []
html_show_sourcelink = False
