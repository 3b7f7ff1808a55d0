"""Benchmark: how fast the volunteer page loads in Chromium, from a real service on loopback.

Starts ``uvicorn service.api.asgi:app`` in a subprocess on the embedded defaults (a fresh data folder and SQLite
file, the bundled model), then opens the volunteer page ``--rounds`` times in Debian's Chromium, each time in a
fresh browser context (an empty cache, as a volunteer's first visit). Each round also opens a baseline in the
same way: ``/static/app.css`` alone, one request with no scripts, which measures what the browser and the server
cost before the page's own work. It reports the navigation's ``loadEventEnd`` (median, p95, max) for both, their
ratio, the page's own JavaScript and CSS in bytes, and whether the median stays under the target (1 s).

    python bench/page_load.py --rounds 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.observations import free_port, percentile  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TARGET_MS = 1000.0
NAVIGATION = "performance.getEntriesByType('navigation')[0].toJSON()"
OWN_CODE_BYTES = ("performance.getEntriesByType('resource')"
                  ".filter((e) => /\\.(js|css)$/.test(new URL(e.name).pathname))"
                  ".reduce((sum, e) => sum + e.decodedBodySize, 0)")


def start_service(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "POLLINID_DATA_DIR": str(workdir / "data"), "POLLINID_LOG_LEVEL": "WARNING"}
    env.pop("POLLINID_DATABASE_URL", None)  # the embedded default: SQLite in the data folder
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.api.asgi:app", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if time.time() > deadline or server.poll() is not None:
            server.kill()
            tail = server.stderr.read().decode()[-2000:] if server.stderr else ""
            raise SystemExit(f"the service did not start: {tail}")
        time.sleep(0.2)


def load_once(browser: Any, url: str) -> tuple[float, int]:
    """One cold load of ``url``: loadEventEnd in ms, and the decoded bytes of the .js/.css the page fetched."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    page.wait_for_load_state("load")
    timing = page.evaluate(NAVIGATION)
    weight = page.evaluate(OWN_CODE_BYTES)
    context.close()
    return float(timing["loadEventEnd"] - timing["startTime"]), int(weight)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="pollinid-bench-page-") as tmp:
        server, base = start_service(Path(tmp))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM)
                load_once(browser, base + "/")  # warm the server (first request, imports)
                page_ms, base_ms, weight = [], [], 0
                for _ in range(args.rounds):
                    ms, weight = load_once(browser, base + "/")
                    page_ms.append(ms)
                    base_ms.append(load_once(browser, base + "/static/app.css")[0])
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    def line(name: str, values: list[float]) -> str:
        return (f"  {name:<28} median {statistics.median(values):7.1f} ms  p95 {percentile(values, 95):7.1f} ms  "
                f"max {max(values):7.1f} ms")

    median = statistics.median(page_ms)
    print(f"volunteer page, {args.rounds} cold loads (fresh browser context each) on loopback, Chromium headless")
    print(line("volunteer page /", page_ms))
    print(line("baseline /static/app.css", base_ms))
    print(f"  ratio page / baseline (medians): {median / statistics.median(base_ms):.2f}")
    print(f"  the page's own JavaScript and CSS: {weight} bytes ({weight / 1024:.1f} KiB)")
    met = median < TARGET_MS
    print(f"  target: median load under {TARGET_MS:.0f} ms: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
