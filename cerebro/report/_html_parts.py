"""Small pieces of the report page's HTML that its sections share."""

from __future__ import annotations

import html
import json
from typing import Any

from cerebro.report._summary import fmt_value

__all__ = ["cell", "esc"]


def esc(x: Any) -> str:
    """``x`` as text safe inside an element or a quoted attribute."""
    return html.escape(str(x), quote=True)


def cell(v: Any) -> str:
    """One table cell: numbers right-aligned and sortable by value, ``None`` empty."""
    if v is None or v == "":
        return '<td data-v=""></td>'
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f'<td class="num" data-v="{esc(repr(float(v)))}">{esc(fmt_value(v))}</td>'
    text = v if isinstance(v, str) else json.dumps(v)
    return f"<td>{esc(text)}</td>"
