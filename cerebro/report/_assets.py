"""The report page's HTML skeleton, CSS and table-sorting JavaScript, all inline (offline)."""

from __future__ import annotations

__all__ = ["CSS", "JS", "TEMPLATE"]

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><h1>{title}</h1>
<div class="meta"><span class="st st-{status}">{status}</span> <code>{run_dir}</code> &middot;
snapshot {when}</div></header>
<main>
{body}
</main>
<script>{js}</script>
</body></html>
"""

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
margin:0;background:#f5f6f8;color:#1d2125;font-size:14px}
header{background:#1f2d3d;color:#fff;padding:18px 32px}
header h1{margin:0 0 6px;font-size:22px;font-weight:600}
header code{color:#cfe3ff}.meta{font-size:13px;opacity:.9}
main{padding:8px 32px 40px;max-width:1500px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);
margin:18px 0;padding:16px 20px}
h2{font-size:17px;margin:0 0 8px}.hint{color:#5c6670;margin:0 0 10px;font-size:13px}
img{max-width:100%;display:block;margin:8px 0 14px}
.summary{display:flex;gap:20px;flex-wrap:wrap;align-items:flex-start}
.bestcard{flex:0 0 300px;border-left:4px solid #2b8a3e;padding-left:14px}
.bestcard .v{font-size:22px;font-weight:600;margin:4px 0}
.bestcard .obj{font-size:14px;color:#2b8a3e}
.cards{display:flex;gap:12px;flex-wrap:wrap;flex:1}
.card{background:#f5f6f8;border-radius:6px;padding:10px 14px;min-width:130px}
.k{font-size:12px;color:#5c6670;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:20px;font-weight:600;margin-top:2px}.sub{font-size:12px;color:#5c6670}
table.hp{border-collapse:collapse;font-size:13px}
table.hp th{text-align:left;padding:1px 12px 1px 0;color:#5c6670;font-weight:500}
.scroll{overflow-x:auto}
table.sortable{border-collapse:collapse;width:100%;font-size:13px}
table.sortable.compact{width:auto}
table.sortable th{background:#eef1f4;cursor:pointer;user-select:none;text-align:left;
padding:6px 10px;white-space:nowrap;position:sticky;top:0}
table.sortable th:hover{background:#dde3ea}
table.sortable th.obj{background:#dbeedd}
table.sortable th[data-dir=asc]::after{content:" \\25B2"}
table.sortable th[data-dir=desc]::after{content:" \\25BC"}
table.sortable td{padding:5px 10px;border-top:1px solid #e6e9ed;white-space:nowrap}
table.sortable td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable tr.best td{background:#eaf6ec}
td.err{color:#a61e1e;max-width:420px;overflow:hidden;text-overflow:ellipsis}
.st{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;
background:#e6e9ed;color:#1d2125}
.st-done{background:#d3f0d8;color:#1b5e20}.st-running{background:#d6e8fb;color:#0b4f8a}
.st-failed{background:#fbd9d9;color:#9b1c1c}.st-diverged{background:#fde7c8;color:#8a4b00}
.st-stopped,.st-interrupted{background:#fde7c8;color:#8a4b00}
.fail{margin:8px 0;padding:8px 10px;background:#fff7f7;border-left:3px solid #c44e52}
.fail summary{cursor:pointer;color:#9b1c1c;margin-top:4px}
.fail pre{white-space:pre-wrap;font-size:12px;background:#f5f6f8;padding:8px;
max-height:320px;overflow:auto}
.live{background:#fff8e1;border-left:4px solid #f0ad00;padding:10px 14px}
"""

# Click a header to sort by it (again to reverse); numbers as numbers, empty cells last.
JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
    var asc = th.dataset.dir !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? "asc" : "desc";
    function key(r) {
      var c = r.cells[i], v = c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim();
      var n = Number(v);
      return v === "" ? null : (isNaN(n) ? v.toLowerCase() : n);
    }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null || y === null) { return (x === null) - (y === null); }
      if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (r) { body.appendChild(r); });
  });
});
"""
