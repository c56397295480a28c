"""Render a run's report.html in headless Chromium to a PNG, to look at the page as a user would.

Usage::

    python bench/report_screenshot.py RUN_DIR [--out shot.png] [--size 1400,3000] [--no-write]

Writes the report first (``cerebro.report.write_report``) unless ``--no-write``. Needs a
Chromium binary (Debian: ``apt-get install -y chromium``); the test suite does not.
"""

from __future__ import annotations

import argparse
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


def screenshot(html: Path, png: Path, size: str = "1400,3000", timeout: float = 120.0) -> Path:
    """Render ``html`` (a local file) to ``png`` with a fresh, offline-minded Chromium profile."""
    with tempfile.TemporaryDirectory(prefix="cerebro-chromium-") as profile:
        cmd = [
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
    args = p.parse_args(argv)
    html = args.run_dir / "report.html"
    if not args.no_write:
        from cerebro.report import write_report

        html = write_report(args.run_dir, objective=args.objective, mode=args.mode)
    if not html.is_file():
        raise SystemExit(f"no {html}; run `cerebro report {args.run_dir}` first")
    png = screenshot(html, args.out or args.run_dir / "report.png", args.size)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
