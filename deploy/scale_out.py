"""Two ``samsegment serve`` processes behind nginx (or HAProxy) on loopback, and the load test through it.

    .venv/bin/python deploy/scale_out.py [--balancer nginx|haproxy] [--seconds 60] [--clients 8]

Uses the configuration files beside this script unchanged (ports 8770 for the balancer, 8771 and 8772 for the
servers). Everything listens on 127.0.0.1 and stops when the load test ends.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORTS = (8771, 8772)


def start_server(port: int, tokens: Path, folder: Path) -> subprocess.Popen:
    ready = folder / f"ready-{port}.json"
    proc = subprocess.Popen([sys.executable, "-m", "SAMSegmentLib.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--token-file", str(tokens), "--ready-file", str(ready), "--device", "cpu",
                             "--preload", "litemedsam"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=open(folder / f"serve-{port}.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server on {port} did not start: " + (folder / f"serve-{port}.log").read_text()[-1500:])
        time.sleep(0.2)
    print(f"server on 127.0.0.1:{port}: {json.loads(ready.read_text())['url']}")
    return proc


def start_balancer(kind: str, folder: Path) -> subprocess.Popen:
    if kind == "nginx":
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        for sub in ("client_body", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
            (folder / sub).mkdir(exist_ok=True)
        command = [exe, "-p", str(folder), "-c", str(HERE / "nginx-samsegment.conf")]
    else:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        command = [exe, "-f", str(HERE / "haproxy-samsegment.cfg"), "-db"]
    if not Path(exe).exists():
        raise SystemExit(f"{kind} is not installed (apt-get install {kind})")
    proc = subprocess.Popen(command, cwd=folder, stdin=subprocess.DEVNULL,
                            stdout=open(folder / f"{kind}.log", "wb"), stderr=subprocess.STDOUT)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit(f"{kind} did not start: " + (folder / f"{kind}.log").read_text()[-1500:])
    return proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--balancer", choices=("nginx", "haproxy"), default="nginx")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="samsegment-scaleout-"))
    tokens = folder / "tokens"
    tokens.write_text(secrets.token_urlsafe(24) + "\n")
    procs = []
    try:
        servers = [start_server(port, tokens, folder) for port in PORTS]
        procs += servers
        procs.append(start_balancer(args.balancer, folder))
        command = [sys.executable, str(ROOT / "benchmarks" / "load_server.py"), "--url", "http://127.0.0.1:8770",
                   "--token-file", str(tokens), "--clients", str(args.clients), "--seconds", str(args.seconds),
                   "--label", f"2 servers behind {args.balancer}"]
        for proc in servers:
            command += ["--server-pid", str(proc.pid)]
        return subprocess.run(command, cwd=ROOT).returncode
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
