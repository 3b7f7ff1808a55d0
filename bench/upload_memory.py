"""Memory under a flood of large junk uploads (issue 16, item 2): peak and after-load RSS of the service.

Starts ``pollinid serve`` (one process, the models it would serve by default, a fresh data folder, rate
limits off so that every request reaches the upload path), samples its resident memory every 50 ms, and
sends anonymous ``POST /api/v1/identify`` requests of 3 x 16 MiB of junk (random bytes, not a photo):

* ``wrk`` (a C load generator; ``apt-get install wrk``) with ``bench/upload_junk.lua``: ``--connections``
  connections for ``--seconds`` (sustained load);
* then exactly ``--parallel`` requests at once from Python threads (the probe's shape), unless
  ``--no-burst``.

It prints the RSS before, the peak (``VmHWM`` and the sampled maximum), the RSS ``--settle`` seconds after
each phase, and wrk's own output (with the answers by status from the Lua script). Target: peak under
1 GB, back to near the baseline after.

    python bench/upload_memory.py --connections 100 --seconds 30 --parallel 100
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hardening.support import free_port, proc_status  # noqa: E402

MIB = 1024 * 1024
LUA = ROOT / "bench" / "upload_junk.lua"


class Sampler(threading.Thread):
    """Resident memory of ``pid`` every ``interval`` seconds; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_kib = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.max_kib = max(self.max_kib, proc_status(self.pid)["VmRSS"])
            time.sleep(self.interval)


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def junk_body(boundary: str, parts: int, size: int) -> bytes:
    rnd = os.urandom(size)
    chunks = []
    for i in range(parts):
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"j{i}.jpg\"\r\n"
                      "Content-Type: image/jpeg\r\n\r\n".encode() + rnd + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def burst(url: str, n: int, parts: int, size: int) -> Counter[str]:
    """``n`` requests at once (threads released together), each ``parts`` x ``size`` bytes of junk."""
    boundary = "junkjunkjunkboundary"
    body = junk_body(boundary, parts, size)
    codes: Counter[str] = Counter()
    barrier = threading.Barrier(n)
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            r = httpx.post(f"{url}/api/v1/identify", content=body, timeout=300,
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            code = str(r.status_code)
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        with lock:
            codes[code] += 1

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100, help="wrk connections (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--seconds", type=int, default=30, help="wrk duration (default 30)")
    parser.add_argument("--parallel", type=int, default=100, help="requests of the one-shot burst (default 100)")
    parser.add_argument("--no-burst", action="store_true", help="skip the one-shot burst")
    parser.add_argument("--no-wrk", action="store_true", help="skip wrk")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait before the after-RSS")
    parser.add_argument("--parts", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra argument for pollinid serve (repeat), e.g. --serve-arg=--max-concurrent-uploads=8")
    parser.add_argument("--service-env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: the bundled one)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pollinid-upload-memory-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLLINID_DATA_DIR": str(work / "data"),
           "POLLINID_RATE_LIMIT_ENABLED": "false", "POLLINID_LOG_LEVEL": "WARNING"}
    env.pop("POLLINID_DATABASE_URL", None)
    if args.models is not None:
        env["POLLINID_MODELS_DIR"] = str(args.models)
    for item in args.service_env:
        name, _, value = item.partition("=")
        env[name] = value
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *args.serve_arg]
    log = (work / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                print((work / "serve.log").read_text()[-3000:])
                return 1
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            print("service not ready")
            return 1
        ready = httpx.get(f"{url}/api/v1/ready", timeout=5).json()
        time.sleep(2)
        base = proc_status(proc.pid)["VmRSS"]
        print(f"service: {' '.join(cmd[1:])}  (model {ready.get('model')})")
        print(f"load: {args.parts} x {args.part_mib} MiB of random bytes per anonymous POST /api/v1/identify")
        print(f"RSS at rest: {mib(base)}")
        sampler = Sampler(proc.pid)
        sampler.start()
        if not args.no_wrk:
            wrk = shutil.which("wrk")
            if wrk is None:
                print("wrk not found (apt-get install wrk): skipping the wrk phase")
            else:
                wrk_cmd = [wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.seconds}s",
                           "--timeout", "120s", "-s", str(LUA), f"{url}/api/v1/identify"]
                wrk_env = {**os.environ, "JUNK_PARTS": str(args.parts), "JUNK_PART_MIB": str(args.part_mib)}
                print(f"$ JUNK_PARTS={args.parts} JUNK_PART_MIB={args.part_mib} {' '.join(wrk_cmd)}")
                out = subprocess.run(wrk_cmd, env=wrk_env, capture_output=True, text=True, check=False)
                print(out.stdout.rstrip())
                if out.stderr.strip():
                    print(out.stderr.rstrip())
                peak_wrk = sampler.max_kib
                time.sleep(args.settle)
                print(f"wrk phase: peak RSS {mib(peak_wrk)} (sampled), RSS {args.settle:g} s after: "
                      f"{mib(proc_status(proc.pid)['VmRSS'])}")
        if not args.no_burst:
            t0 = time.monotonic()
            codes = burst(url, args.parallel, args.parts, args.part_mib * MIB)
            wall = time.monotonic() - t0
            peak_burst = sampler.max_kib
            time.sleep(args.settle)
            print(f"burst: {args.parallel} requests at once in {wall:.1f} s, answers {dict(sorted(codes.items()))}; "
                  f"peak RSS so far {mib(peak_burst)}, RSS {args.settle:g} s after: "
                  f"{mib(proc_status(proc.pid)['VmRSS'])}")
        sampler.stop_event.set()
        status = proc_status(proc.pid)
        print(f"summary: rest {mib(base)}, peak {mib(max(sampler.max_kib, status['VmHWM']))} (VmHWM "
              f"{mib(status['VmHWM'])}), end {mib(status['VmRSS'])}")
        r = httpx.get(f"{url}/api/v1/health", timeout=10)
        print(f"service still healthy: {r.status_code == 200}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
