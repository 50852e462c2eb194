"""Load test of ``samsegment serve``: concurrent clients on loopback, each with its own volume, mixing clicks with a
propagation, for a bounded time; then every mask they received is checked against the same request run in this
process.

Prints previews per second, preview p50/p95 under load beside the idle p50/p95, propagation slices per second, the
server's peak resident memory, and the check: lost (a request that got no answer or an error) and cross-wired (an
answer that differs from the in-process answer to that client's own request). Loopback only; stops by itself.

    .venv/bin/python benchmarks/load_server.py                       # starts its own server (LiteMedSAM, CPU)
    .venv/bin/python benchmarks/load_server.py --url http://127.0.0.1:8080 --token-file T --server-pid P [...]

All clients run in this one thread (the client is non-blocking), like eight Slicer main threads would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import select
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SAMSegmentLib.engine.api import SessionSpec  # noqa: E402
from SAMSegmentLib.engine.client import RemoteEngine  # noqa: E402
from SAMSegmentLib.engine.local import InProcessEngine  # noqa: E402
from SAMSegmentLib.io import read_volume  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask  # noqa: E402
from SAMSegmentLib.slices import extract_slice  # noqa: E402
from SAMSegmentLib.volume import Volume  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CASES = [  # folder, image, label, value, axis
    ("ct_lung_tumor_pyradiomics", "lung2_crop_ct.nrrd", "lung2_crop_label.nrrd", 1, "K"),
    ("mr_spinal_cord_sct", "t2.nii.gz", "t2_seg-manual.nii.gz", 1, "J"),
    ("mr_brain_tumor_tcga_pyradiomics", "brain1_t1post_image.nrrd", "brain1_label.nrrd", 1, "K"),
    ("ct_mr_totalseg_example_pseudolabels", "example_ct_sm.nii.gz", "example_ct_sm_totalseg_pred.nii.gz", 5, "K"),
]
SPEC = SessionSpec(model="litemedsam", device="cpu")


def digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(np.asarray(mask, bool)).tobytes() + str(mask.shape).encode()).hexdigest()


@dataclass
class Workload:
    """One client's volume and the prompts it draws from: labelled slices with their reference boxes."""

    name: str
    volume: Volume
    axis: str
    boxes: dict[int, np.ndarray]


def workloads(count: int) -> list[Workload]:
    out = []
    for n in range(count):
        folder, image, label, value, axis = CASES[n % len(CASES)]
        vol = read_volume(DATA / folder / image)
        ref = np.rint(read_volume(DATA / folder / label).array) == value
        array, ref_array = vol.array, ref
        if n >= len(CASES):  # a mirrored copy: another volume, so that a cross-wired answer cannot match
            array, ref_array = np.ascontiguousarray(array[:, :, ::-1]), np.ascontiguousarray(ref[:, :, ::-1])
        boxes = {}
        length = array.shape[{"K": 0, "J": 1, "I": 2}[axis]]
        for index in range(length):
            box = box_from_mask(extract_slice(ref_array, axis, index))
            if box is not None:
                boxes[index] = box
        out.append(Workload(f"{folder.split('_')[1]}{'-mirrored' if n >= len(CASES) else ''}",
                            Volume(array, vol.ijk_to_ras), axis, boxes))
    return out


@dataclass
class Client:
    """A simulated user: one preview in flight at a time, now and then a propagation."""

    work: Workload
    engine: RemoteEngine
    rng: random.Random
    session: object = None
    preview: object = None
    preview_request: tuple | None = None
    preview_started: float = 0.0
    propagation: object = None
    propagation_request: tuple | None = None
    next_propagation: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: list[tuple[tuple, str]] = field(default_factory=list)  # (request, mask digest)
    propagated_slices: int = 0
    lost: list[str] = field(default_factory=list)

    def step(self, now: float, stop_at: float) -> None:
        if self.preview is not None and self.preview.done:
            if self.preview.state == "done":
                self.latencies.append(now - self.preview_started)
                self.answers.append((self.preview_request, digest(self.preview.result.mask)))
            else:
                self.lost.append(f"preview: {self.preview.error}")
            self.preview = None
        if self.propagation is not None:
            for event in self.propagation.drain():
                if event.kind == "result":
                    self.propagated_slices += 1
                    self.answers.append((self.propagation_request + (int(event.value.index),),
                                         digest(event.value.mask)))
                elif event.kind == "error":
                    self.lost.append(f"propagation: {event.value}")
            if self.propagation.done:
                self.propagation = None
        if now >= stop_at:
            return
        if self.preview is None:
            index = self.rng.choice(sorted(self.work.boxes))
            box = self.work.boxes[index] + np.array([-1, -1, 1, 1]) * self.rng.randint(0, 3)
            self.preview_request = ("preview", self.work.axis, index, tuple(float(v) for v in box))
            self.preview_started = now
            self.preview = self.session.preview(self.work.axis, index, SlicePrompt(box=box))
        if self.propagation is None and now >= self.next_propagation:
            seed = self.rng.choice(sorted(self.work.boxes))
            n = self.work.volume.axis_length(self.work.axis)
            frange = (max(0, seed - 4), min(n - 1, seed + 4))
            box = tuple(float(v) for v in self.work.boxes[seed])
            self.propagation_request = ("propagate", self.work.axis, seed, box, frange)
            self.propagation = self.session.propagate(self.work.axis, {seed: SlicePrompt(box=np.array(box))},
                                                      "both", frange)
            self.next_propagation = now + self.rng.uniform(15, 25)


def wait_for_sockets(engines: list[RemoteEngine], timeout: float) -> None:
    sockets = [c for e in engines for c in e._connections if not c.closed and c.exchange is not None]
    if sockets:
        select.select(sockets, [], [], timeout)
    else:
        time.sleep(timeout)


def rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.Error:
            pass
    return total / 2**20


def start_server(folder: Path) -> tuple[subprocess.Popen, str, str]:
    token = secrets.token_urlsafe(24)
    (folder / "tokens").write_text(token + "\n")
    ready = folder / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "SAMSegmentLib.cli", "serve", "--port", "0", "--token-file",
                             str(folder / "tokens"), "--ready-file", str(ready), "--device", "cpu", "--preload",
                             "litemedsam"], cwd=ROOT, stdout=open(folder / "serve.log", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start: " + (folder / "serve.log").read_text()[-1500:])
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())["url"], token


def idle_latencies(url: str, token: str, work: Workload, count: int = 20) -> list[float]:
    engine = RemoteEngine(url, token=token)
    session = engine.open_session(work.volume.array, work.volume.ijk_to_ras, SPEC)
    index = sorted(work.boxes)[len(work.boxes) // 2]
    session.preview(work.axis, index, SlicePrompt(box=work.boxes[index])).wait(300)  # embedding cached
    out = []
    for n in range(count):
        box = work.boxes[index] + np.array([-1, -1, 1, 1]) * (n % 3)
        start = time.perf_counter()
        session.preview(work.axis, index, SlicePrompt(box=box)).wait(60)
        out.append(time.perf_counter() - start)
    engine.close()
    return out


def verify(clients: list[Client]) -> tuple[int, int]:
    """Recompute every answered request in this process; (checked, cross-wired)."""
    engine = InProcessEngine()
    checked = wrong = 0
    try:
        for client in clients:
            session = engine.open_session(client.work.volume.array, client.work.volume.ijk_to_ras, SPEC)
            previews = {}
            propagations = {}
            for request, answer in client.answers:
                if request[0] == "preview":
                    if request not in previews:
                        _, axis, index, box = request
                        previews[request] = digest(session.preview(axis, index, SlicePrompt(box=np.array(box)))
                                                   .wait(600).mask)
                    expected = previews[request]
                else:
                    key = request[:5]
                    if key not in propagations:
                        _, axis, seed, box, frange = key
                        outcomes = {}

                        def keep(event, outcomes=outcomes):
                            if event.kind == "result":
                                outcomes[event.value.index] = digest(event.value.mask)

                        session.propagate(axis, {seed: SlicePrompt(box=np.array(box))}, "both", frange).wait(
                            600, on_event=keep)
                        propagations[key] = outcomes
                    expected = propagations[key].get(request[5])
                checked += 1
                wrong += expected != answer
            session.close()
    finally:
        engine.close()
    return checked, wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="server or balancer to load (default: start a server)")
    parser.add_argument("--token-file", default=None, help="token for --url")
    parser.add_argument("--server-pid", type=int, action="append", default=[], help="server process(es) to watch")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--label", default=None, help="name of this configuration in the table")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"needs the shared data ({DATA})")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="samsegment-load-"))
    proc = None
    if args.url is None:
        proc, url, token = start_server(folder)
        pids = [proc.pid]
        label = args.label or "one server"
    else:
        url = args.url
        token = Path(args.token_file).read_text().split()[0] if args.token_file else os.environ.get("SAMSEGMENT_TOKEN")
        pids = args.server_pid
        label = args.label or url
    try:
        works = workloads(args.clients)
        idle = idle_latencies(url, token, works[0])
        clients = []
        for n, work in enumerate(works):
            engine = RemoteEngine(url, token=token)
            client = Client(work, engine, random.Random(n), next_propagation=time.monotonic() + 5 + 2 * n)
            client.session = engine.open_session(work.volume.array, work.volume.ijk_to_ras, SPEC)
            clients.append(client)
        for client in clients:
            client.session.opening.wait(600)
        peak = rss_mb(pids)
        start = time.monotonic()
        stop_at = start + args.seconds
        hard_stop = stop_at + 300  # in-flight requests may finish; then give up
        last_rss = 0.0
        while True:
            now = time.monotonic()
            for client in clients:
                client.engine.poll(0.002)
                client.step(now, stop_at)
            if now - last_rss > 0.5:
                peak, last_rss = max(peak, rss_mb(pids)), now
            busy = any(c.preview is not None or c.propagation is not None for c in clients)
            if (now >= stop_at and not busy) or now >= hard_stop:
                break
            wait_for_sockets([c.engine for c in clients], 0.005)
        elapsed = time.monotonic() - start
        for client in clients:
            if client.preview is not None:
                client.lost.append("preview unanswered at the end")
            if client.propagation is not None:
                client.lost.append("propagation unfinished at the end")
            client.engine.close()
        latencies = [x for c in clients for x in c.latencies]
        slices = sum(c.propagated_slices for c in clients)
        lost = [x for c in clients for x in c.lost]
        checked, wrong = verify(clients)
        print(f"\n{label}: {args.clients} clients for {args.seconds:.0f} s (ran {elapsed:.0f} s), LiteMedSAM on CPU, "
              f"server {url}")
        print("| configuration | previews/s | preview p50 ms (idle) | preview p95 ms (idle) | propagation slices/s "
              "| server peak RSS MB | answers checked | lost | cross-wired |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {label} | {len(latencies) / elapsed:.2f} | {1000 * statistics.median(latencies):.0f} "
              f"({1000 * statistics.median(idle):.0f}) | {1000 * float(np.percentile(latencies, 95)):.0f} "
              f"({1000 * float(np.percentile(idle, 95)):.0f}) | {slices / elapsed:.2f} | {peak:.0f} | {checked} | "
              f"{len(lost)} | {wrong} |")
        for item in lost[:5]:
            print("lost:", item)
        return 0 if not lost and not wrong else 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
