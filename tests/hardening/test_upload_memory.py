"""Issue 16, item 2: memory under many large junk uploads, on a real service.

The probe sent 100 anonymous ``/identify`` requests of 3 x 16 MiB of junk at once: the server went from
502 MiB to a 3.7 GB peak and stayed at 1.6 GB. Now junk is refused from its first bytes, uploads in the
application at once are bounded in number and bytes, and large buffers go back to the system when freed.
(The full-size measurement is ``bench/upload_memory.py``; see docs/benchmarks.md.)
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.hardening.support import LiveService, proc_status
from tests.helpers import write_tiny_model

MIB = 1024 * 1024
PARALLEL = 24
BOUNDARY = "junkjunkjunkboundary"


def _junk_body(parts: int = 3, size: int = 16 * MIB) -> bytes:
    rnd = os.urandom(size)
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"j.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return b"".join(head + rnd + b"\r\n" for _ in range(parts)) + f"--{BOUNDARY}--\r\n".encode()


def test_parallel_large_junk_uploads_stay_within_a_memory_bound(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "models", "tiny", "1")
    service = LiveService(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path / "models",
                          env={"POLLINID_RATE_LIMIT_ENABLED": "false"})
    body = _junk_body()
    with service:
        time.sleep(1)
        rest = service.memory()["VmRSS"]
        codes: Counter[str] = Counter()
        retry_after: list[str | None] = []
        barrier = threading.Barrier(PARALLEL)
        lock = threading.Lock()

        def one() -> None:
            barrier.wait()
            try:
                r = httpx.post(f"{service.url}/api/v1/identify", content=body, timeout=180,
                               headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                code = str(r.status_code)
                assert r.headers["content-type"].startswith("application/json")
                if r.status_code == 503:
                    retry_after.append(r.headers.get("retry-after"))
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            with lock:
                codes[code] += 1

        threads = [threading.Thread(target=one) for _ in range(PARALLEL)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        time.sleep(3)
        after = proc_status(service.pid)
        peak_growth_mib = (after["VmHWM"] - rest) / 1024
        after_growth_mib = (after["VmRSS"] - rest) / 1024
        print(f"rest {rest / 1024:.0f} MiB, peak +{peak_growth_mib:.0f} MiB, after +{after_growth_mib:.0f} MiB, "
              f"answers {dict(codes)}")
        assert set(codes) <= {"415", "503"}, codes
        assert codes["415"] >= 1
        assert all(v is not None and v.isdigit() for v in retry_after), retry_after
        # 24 x 48 MiB arrived; at most the upload budget (256 MiB by default) may be held at once.
        assert peak_growth_mib < 450, f"peak grew by {peak_growth_mib:.0f} MiB"
        assert after_growth_mib < 150, f"RSS stayed {after_growth_mib:.0f} MiB above its resting size"
        assert httpx.get(f"{service.url}/api/v1/health", timeout=10).status_code == 200
