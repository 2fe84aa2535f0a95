"""MkDocs build hooks (``hooks:`` in mkdocs.yml).

* docs/cli.md: the marker ``<!-- cli-reference -->`` is replaced by the reference that
  ``docs/gen_cli.py`` renders from the argparse parser, so the page follows the code.
* Pages written to be read on GitHub link to ``../README.md``, outside the site: those
  links are pointed at the matching site pages.
* mkdocstrings renders reStructuredText roles of the docstrings (``:func:`name```) as
  text; the role prefix is dropped so only the code name remains.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

CLI_MARKER = "<!-- cli-reference -->"
README_LINKS = {
    "../README.md#curvature-engine": "api/curvature.md",
    "../README.md": "index.md",
}
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc):(?=<code>)")


def _gen_cli():
    path = Path(__file__).with_name("gen_cli.py")
    spec = importlib.util.spec_from_file_location("tacitbayes_docs_gen_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _gen_cli().render())
    for old, new in README_LINKS.items():
        markdown = markdown.replace(f"]({old})", f"]({new})")
    return markdown


def on_page_content(html, page, config, files):
    return _ROLE.sub("", html)
