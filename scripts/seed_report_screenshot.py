"""Render the seed pair as an HTML report and screenshot it into docs/seed-report.png.

    .venv/bin/python scripts/seed_report_screenshot.py [--checkers structure,fluency] [--html FILE]

Runs every checker that is available here (the report lists the others as skipped), with The
Hill's article as the reference of the ABC copy, and needs Chromium (``/usr/bin/chromium`` or
``MTQA_CHROMIUM``) and Playwright.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from mtqa.config import CHECKERS, Settings
from mtqa.pipeline import Checker
from mtqa.render.html import render_html
from mtqa.types import Document

ROOT = Path(__file__).resolve().parent.parent
ABC = ROOT / "seeds" / "000_df5d74dac48ad764.txt"
HILL = ROOT / "seeds" / "002_98c53f21e16ae677.txt"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkers", default=",".join(CHECKERS))
    parser.add_argument("--html", type=Path, default=ROOT / "out" / "seed-report.html")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "seed-report.png")
    parser.add_argument("--height", type=int, default=1300)
    args = parser.parse_args()
    settings = Settings(checkers=tuple(args.checkers.split(",")))
    doc = Document(ABC.stem, ABC.read_text(encoding="utf-8"),
                   ref=(HILL.read_text(encoding="utf-8"),))
    with Checker(settings) as checker:
        report = checker.check_many([doc])
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(render_html(report), encoding="utf-8")
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("MTQA_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": args.height})
        page.goto(args.html.resolve().as_uri())
        # show one tooltip: hover the first major span
        major = page.locator("mark.sev-major[data-span]").first
        if major.count():
            major.scroll_into_view_if_needed()
            page.evaluate("window.scrollTo(0, 0)")
            major.hover()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.png), full_page=False)
        browser.close()
    d = report.documents[0]
    print(f"{args.png}: score {d.score:.1f}, {len(d.spans)} spans, "
          f"skipped {[s.checker for s in d.skipped]}")


if __name__ == "__main__":
    main()
