"""The status page: one self-contained HTML document, ``status.html`` beside this module
(inline CSS and JS, no CDN: it works offline).

The server embeds the first ``/status.json`` in the page; a small script
renders it and polls ``status.json`` (relative to the page, so the app can
be mounted under any prefix) every ``refresh`` seconds. Everything from the
pools is put in the DOM as text (``textContent``), never as markup, and the
embedded JSON has ``<``, ``>`` and ``&`` escaped, so a stack or an SQL
statement cannot inject HTML.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from typing import Any

#: served with the page: scripts and styles only from the page itself, data only from its origin
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def embed_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no HTML comment openers)."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_page(status: dict[str, Any], *, title: str = "smartpool") -> bytes:
    """The page, with ``status`` (a ``/status.json`` body) as its first data."""
    values = {"TITLE": html.escape(title), "DATA": embed_json(status)}
    return _SLOT.sub(lambda m: values[m.group(1)], _TEMPLATE).encode("utf-8")  # one pass: no re-expansion


_SLOT = re.compile(r"__(TITLE|DATA)__")
_TEMPLATE = resources.files(__package__).joinpath("status.html").read_text(encoding="utf-8")
