"""Render a run's report.html in headless Chromium to a PNG, to look at the page as a user would.

Usage::

    python bench/report_screenshot.py RUN_DIR [--out shot.png] [--size 1400,3000] [--no-write]

Writes the report first (``cerebro.report.write_report``) unless ``--no-write``, then checks
in the same browser that clicking a header of the models table sorts it (numbers as numbers,
both directions, empty cells last). Needs a Chromium binary (Debian:
``apt-get install -y chromium``); the test suite does not.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit(
        "no Chromium found (tried " + ", ".join(CANDIDATES) + "); on Debian: "
        "apt-get update && apt-get install -y chromium"
    )


def _flags(profile: str) -> list[str]:
    return [
        find_chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


def _floats(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def _data_v(attrs: str) -> str:
    m = re.search(r'data-v="([^"]*)"', attrs)
    return m.group(1) if m else ""


def check_sorting(html: Path, timeout: float = 120.0) -> list[str]:
    """Click each numeric column header of ``#models`` once and twice; return what is wrong."""
    page = html.read_text(encoding="utf-8")
    table = page.split("id=models", 1)[1]
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", table.split("</thead>", 1)[0])
    problems = []
    probe = html.with_name(f".sortcheck-{html.name}")
    try:
        for col, name in enumerate(heads):
            for clicks in (1, 2):
                script = (
                    f"<script>var th = document.querySelectorAll('#models th')[{col}];"
                    + "th.click();" * clicks
                    + "</script></body>"
                )
                probe.write_text(page.replace("</body>", script), encoding="utf-8")
                with tempfile.TemporaryDirectory(prefix="cerebro-chromium-") as profile:
                    dom = subprocess.run(
                        [*_flags(profile), "--dump-dom", probe.resolve().as_uri()],
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                    ).stdout
                table_dom = dom.split('id="models"', 1)[1]
                body = table_dom.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
                rows = re.findall(r"<tr.*?</tr>", body, flags=re.S)
                cells = [re.findall(r"<td([^>]*)>", r) for r in rows]
                values = [_data_v(c[col]) if col < len(c) else "" for c in cells]
                filled = [v for v in values if v]
                nums = _floats(filled)
                if nums is None or not nums:
                    continue  # a text column: only numeric order is checked
                want = sorted(nums, reverse=clicks == 2)
                if nums != want or values[: len(filled)] != filled:
                    problems.append(f"column {name!r}, {clicks} click(s): {values}")
    finally:
        probe.unlink(missing_ok=True)
    return problems


def screenshot(html: Path, png: Path, size: str = "1400,3000", timeout: float = 120.0) -> Path:
    """Render ``html`` (a local file) to ``png`` with a fresh, offline-minded Chromium profile."""
    with tempfile.TemporaryDirectory(prefix="cerebro-chromium-") as profile:
        cmd = [
            *_flags(profile),
            f"--screenshot={png.resolve()}",
            f"--window-size={size}",
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="PNG to write (default: RUN_DIR/report.png)")
    p.add_argument("--size", default="1400,3000", help="window WIDTH,HEIGHT in pixels")
    p.add_argument("--objective", help="metric that ranks models (default: val_loss)")
    p.add_argument("--mode", default="min", choices=("min", "max"))
    p.add_argument("--no-write", action="store_true", help="use the existing report.html")
    p.add_argument("--no-sort-check", action="store_true", help="skip the table-sorting check")
    args = p.parse_args(argv)
    html = args.run_dir / "report.html"
    if not args.no_write:
        from cerebro.report import write_report

        html = write_report(args.run_dir, objective=args.objective, mode=args.mode)
    if not html.is_file():
        raise SystemExit(f"no {html}; run `cerebro report {args.run_dir}` first")
    png = screenshot(html, args.out or args.run_dir / "report.png", args.size)
    print(png)
    if not args.no_sort_check:
        problems = check_sorting(html)
        for problem in problems:
            print(f"table sorting is wrong: {problem}", file=sys.stderr)
        if problems:
            return 1
        print("table sorting: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
