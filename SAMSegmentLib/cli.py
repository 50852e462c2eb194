"""The ``samsegment`` command line: segment, models, evaluate, demo, web.

Exit codes: 0 success, 2 bad input (one-line reason on stderr, never a traceback), 1 other failures,
130 cancelled with Ctrl+C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("samsegment")

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """A user-facing problem; printed as one line and exit code 2."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="litemedsam", help="model name (see 'samsegment models'); default litemedsam")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (cuda, then mps, then cpu)")
    p.add_argument("--weights", default=None, help="use this weights file instead of the cache")
    p.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                   help="auto (default): OpenVINO on the CPU when the openvino package is installed (exported once "
                   "into the weights cache), torch on CUDA / MPS; or force torch / openvino")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): the fastest with the Dice of fp32 (within 0.005 on every case of "
                   "benchmarks/bench_engine.py --dice): for litemedsam bf16 with OpenVINO on CPUs with native bf16 "
                   "(AMX or AVX512_BF16; about 2.4x faster per slice), fp32 otherwise; fp32 or bf16 to choose")


def _add_progress_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                       help="show a progress bar even when stderr is not a terminal (default: only on a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")


def _add_series_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", default=None, metavar="UID",
                   help="SeriesInstanceUID of the series to read when the IMAGE folder holds several DICOM series")


def parse_color(text: str | None) -> tuple[float, float, float] | None:
    """'R,G,B' with values 0-255 -> RGB in [0, 1]; None -> None (the default colour)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise CliError(f"--segment-color must be three numbers from 0 to 255, e.g. 255,128,0, not {text!r}")
    r, g, b = (v / 255.0 for v in values)
    return r, g, b


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samsegment",
        description="Segment Anything models (LiteMedSAM, SAM, MedSAM, SAM 2.1, MedSAM2) on 3D medical volumes.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment",
        help="segment a volume from prompts",
        description="Segment IMAGE from prompts in PROMPTS (a PROMPTS.json, or a Slicer markups .mrk.json) and write a "
        "labelmap (value 1 inside) on the image grid: .nii.gz, .nrrd, or a Slicer segmentation .seg.nrrd.",
    )
    seg.add_argument("image", help="3D volume SimpleITK reads (NRRD, NIfTI, MHA) or a DICOM series folder")
    seg.add_argument("--prompts", required=True, help="PROMPTS.json or a Slicer markups file (.mrk.json)")
    seg.add_argument("-o", "--output", required=True,
                     help="output labelmap (.nii.gz, .nrrd, .mha), .seg.nrrd, or .dcm (a DICOM SEG referencing the "
                     "DICOM series IMAGE; needs highdicom)")
    _add_series_arg(seg)
    seg.add_argument("--segment-name", default="Segment_1", metavar="NAME",
                     help="segment label in .seg.nrrd and .dcm outputs (default Segment_1)")
    seg.add_argument("--segment-color", default=None, metavar="R,G,B",
                     help="segment colour in .seg.nrrd and .dcm outputs, 0-255 each (default 242,89,51)")
    seg.add_argument("--propagate", choices=("none", "both", "forward", "backward"), default=None,
                     help="override the prompts file's propagate value")
    seg.add_argument("--axis", choices=("I", "J", "K"), default=None,
                     help="slice normal for markups prompts (default K); PROMPTS.json carries its own")
    seg.add_argument("--window", default="fit", metavar="fit|volume|WIDTH,LEVEL|PRESET",
                     help="intensity window: fit (default: fitted to the object from its first box), volume "
                     "(one automatic window for the volume), WIDTH,LEVEL (e.g. 400,40) or a preset (e.g. ct-lung)")
    _add_progress_args(seg)
    seg.add_argument("--engine", default=None, metavar="URL",
                     help="run on the engine server at URL (started with 'samsegment serve') instead of in this "
                     "process; the token comes from SAMSEGMENT_TOKEN or --token-file")
    seg.add_argument("--token-file", default=None, help="file holding the engine server's access token")
    _add_model_args(seg)

    serve = sub.add_parser(
        "serve", help="run the engine as a server (for Slicer, or a shared GPU machine)",
        description="Run the SAMSegment engine as an HTTP server: it holds the models, sessions and embedding "
        "caches, and runs previews, prefetch and propagation for its clients (the Slicer extension, "
        "'samsegment segment --engine URL'). It listens on 127.0.0.1 unless told otherwise; any other address "
        "needs an access token.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine "
                       "only; 0.0.0.0 for every interface, which needs a token)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default 0: pick a free one and print it)")
    serve.add_argument("--token-file", default=None,
                       help="file of access tokens, one per line (each user or workstation its own); clients send "
                       "one of them (or set SAMSEGMENT_TOKEN for a single token)")
    serve.add_argument("--device", default="auto", help="cuda, mps, cpu or auto for sessions that ask for 'auto'")
    serve.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                       help="auto, torch or openvino for sessions that ask for 'auto'")
    serve.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto, fp32 or bf16 for sessions that ask for 'auto'")
    serve.add_argument("--preload", action="append", default=[], metavar="MODEL",
                       help="load this model at start (repeatable) so the first session opens at once")
    serve.add_argument("--weights-dir", default=None, help="weights cache folder (default: SAMSEGMENT_WEIGHTS_DIR "
                       "or ~/.cache/samsegment/weights)")
    serve.add_argument("--max-upload-mb", type=int, default=4096, help="largest volume accepted, MB (default 4096)")
    serve.add_argument("--memory-mb", type=int, default=None,
                       help="budget for all volumes and embedding caches together, MB; idle sessions are evicted "
                       "(least recently used first) to stay under it (default: no budget)")
    serve.add_argument("--session-cache-mb", type=int, default=2048,
                       help="largest embedding cache one session may use, MB (default 2048)")
    serve.add_argument("--idle-timeout", type=float, default=3600.0,
                       help="seconds after which an idle session is released (default 3600)")
    serve.add_argument("--tls-cert", default=None, help="TLS certificate (PEM) to serve https")
    serve.add_argument("--tls-key", default=None, help="TLS private key (PEM) for --tls-cert")
    serve.add_argument("--shared-dir", default=None, help=argparse.SUPPRESS)  # local child: volume files from here
    serve.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)  # local child: readiness for the parent
    serve.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)

    models = sub.add_parser("models", help="list models and their weights; download or verify one",
                            description="List the models with the state of their weights (present, verified, size), "
                            "or download / verify one.")
    models.add_argument("--download", metavar="NAME", help="download (if needed) and verify the weights of NAME")
    models.add_argument("--verify", metavar="NAME", help="re-hash the weights of NAME against the registry")
    _add_progress_args(models)
    models.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)  # Slicer reads download progress

    ev = sub.add_parser("evaluate", help="simulate prompts from a reference label and measure accuracy",
                        description="Simulate prompts from a reference label, segment, and report Dice, normalised "
                        "surface Dice (1 and 2 mm), HD95 and seconds per case.")
    ev.add_argument("image", nargs="?", help="3D volume or DICOM series folder (or use --cases)")
    ev.add_argument("label", nargs="?", help="reference labelmap on the image grid")
    _add_series_arg(ev)
    ev.add_argument("--label", dest="label_values", default="1", help="label value(s), comma separated (default 1)")
    ev.add_argument("--protocol", default="one-box",
                    help="box-per-slice, one-box, box3d, clicks-N (one box, then N clicks) or box3d-clicks-N (the "
                    "CVPR 2025 interactive challenge's protocol: box3d-clicks-5)")
    ev.add_argument("--axis", choices=("I", "J", "K"), default="K", help="slice normal (default K)")
    ev.add_argument("--cases", default=None, help="CSV with columns case,image,label[,label_values,axis]")
    ev.add_argument("--jitter", type=float, default=0.0, help="box jitter, fraction of box size (default 0)")
    ev.add_argument("--seed", type=int, default=0, help="random seed for jitter")
    ev.add_argument("--window", default="fit", metavar="fit|volume|WIDTH,LEVEL|PRESET",
                    help="intensity window: fit (default, fitted to each object), volume, WIDTH,LEVEL or a preset")
    ev.add_argument("-o", "--output", required=True,
                    help="output folder: report.json, report.md, prediction.nii.gz, overlay.png "
                    "(with --cases: <case>/prediction.nii.gz and <case>/overlay.png)")
    _add_progress_args(ev)
    _add_model_args(ev)

    demo = sub.add_parser("demo", help="one-command demo on shipped data with the offline default model",
                          description="Segment a chest CT that ships with a dependency from one box, propagate, "
                          "and write a .seg.nrrd plus an overlay PNG; prints Dice and time.")
    demo.add_argument("-o", "--output", default="demo-output", help="output folder (default ./demo-output)")
    demo.add_argument("--segment", default="right lung",
                      help="shipped segment to reproduce: 'right lung' (default), 'left lung', 'ribs', 'tissue', "
                      "'cervical vertebral column', 'thoracic vertebral column', 'lumbar vertebral column'")
    demo.add_argument("--window", default=None, metavar="WIDTH,LEVEL|PRESET",
                      help="intensity window (default ct-lung)")
    _add_progress_args(demo)
    _add_model_args(demo)

    web = sub.add_parser("web", help="the Segment Anything effect in a web browser (trame-slicer)",
                         description="Serve the Segment Anything effect in a web page: Slicer's views and segment "
                         "editor (trame-slicer) with click / box prompts, preview, apply with undo and propagation. "
                         "Each browser tab gets its own session; models run on this server.")
    web.add_argument("volumes", nargs="*", metavar="VOLUME", help="volume files to open in each session")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    web.add_argument("--model", default="litemedsam", help="initial model (default litemedsam); only models "
                     "provisioned on this server are offered (see 'samsegment models')")
    web.add_argument("--device", default="auto", help="cuda, mps, cpu or auto")
    web.add_argument("--demo", action="store_true", help="also open the demo chest CT that ships with slicerio")
    web.add_argument("--max-sessions", type=int, default=4, help="browser sessions at once (default 4)")
    web.add_argument("--spare", type=int, default=1, help="sessions started ahead of time (default 1)")
    web.add_argument("--layout", default=None, help="initial view layout, e.g. 'Axial Only' (default: Axial Primary)")
    web.add_argument("--volume-rendering", action="store_true",
                     help="volume rendering in the 3D view (off by default: slow without a GPU)")
    web.add_argument("--log-dir", default=None, help="folder for the session logs (default: a temporary folder)")
    web.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_window(text: str | None, array=None):
    """:func:`windowing.parse_window`, with its ValueError as a CliError (exit code 2 and the message)."""
    from .windowing import parse_window as parse

    try:
        return parse(text, array)
    except ValueError as exc:
        raise CliError(str(exc)) from None


class ProgressBar:
    """A ``(done, total)`` progress callback drawing a tqdm bar on stderr.

    ``enabled`` None (the default) draws only when stderr is a terminal, True always, False never (see
    :func:`progress_enabled`); ``unit="B"`` shows bytes (KiB, MiB) and a rate. A new ``total`` starts a new bar.
    """

    def __init__(self, label: str, enabled: bool | None = None, unit: str = "it") -> None:
        self.label, self.enabled, self.unit = label, enabled, unit
        self._bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.enabled is False or total <= 0:
            return
        if self._bar is None or self._bar.total != total:
            from tqdm import tqdm

            self.close()
            as_bytes = self.unit == "B"
            self._bar = tqdm(total=total, desc=self.label, unit=self.unit, unit_scale=as_bytes,
                             unit_divisor=1024 if as_bytes else 1000, file=sys.stderr, dynamic_ncols=True,
                             disable=None if self.enabled is None else False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def progress_enabled(args) -> bool | None:
    """``--progress`` True, ``--no-progress`` False, neither None (a bar only when stderr is a terminal)."""
    return getattr(args, "progress", None)


def load_model_for(args):
    """Load the model chosen on the command line (backend and precision are decided by ``load_model``)."""
    from .models import load_model

    return load_model(args.model, device=args.device, weights=args.weights,
                      backend=getattr(args, "backend", "auto"), precision=getattr(args, "precision", "auto"))


def cmd_segment(args) -> int:
    from .engine.api import SessionSpec
    from .io import read_image, write_labelmap
    from .propagation.plan import PropagationResult
    from .request import read_prompts_json

    color = parse_color(args.segment_color)
    volume, series = read_image(args.image, args.series)
    if Path(args.output).name.lower().endswith(".dcm"):  # checked before any model work
        if series is None:
            raise CliError(f"-o {Path(args.output).name}: a DICOM SEG references its source slices, so IMAGE must "
                           f"be a DICOM series folder; write .nii.gz, .nrrd or .seg.nrrd for {Path(args.image).name}")
        from .dicomseg import require_highdicom

        require_highdicom()
    prompts_path = Path(args.prompts)
    if prompts_path.name.lower().endswith(".mrk.json"):
        from .markups import read_markups_request

        request = read_markups_request(prompts_path, volume, axis=args.axis or "K")
    else:
        request = read_prompts_json(prompts_path)
    if args.propagate is not None:
        request.propagate = args.propagate
    request.validate(volume)
    window = parse_window(args.window, volume.array)
    spec = SessionSpec(model=args.model, device=args.device, backend=getattr(args, "backend", "auto"),
                       precision=args.precision, window=None if window is None else (window.low, window.high))
    engine = _engine_for(args)
    bar = ProgressBar(f"segment ({args.model})", enabled=progress_enabled(args))
    start = time.monotonic()
    try:
        session = engine.open_session(volume.array, volume.ijk_to_ras, spec)
        result = PropagationResult(request.axis)

        def on_event(event) -> None:
            if event.kind == "progress":
                bar(*event.value)
            elif event.kind == "result":
                result.outcomes[event.value.index] = event.value

        session.propagate(request.axis, request.prompts, request.propagate, request.range).wait(on_event=on_event)
    finally:
        engine.close()
        bar.close()
    mask = result.to_volume(volume.array.shape)
    out = write_labelmap(mask, volume, args.output, segment_name=args.segment_name, color=color,
                         dicom_source=series, model_name=args.model)
    other_axes = tuple(a for a in range(3) if a != {"K": 0, "J": 1, "I": 2}[request.axis])
    n_slices = int(mask.any(axis=other_axes).sum())
    print(f"wrote {out} ({int(mask.sum())} voxels on {n_slices} slices along {request.axis}) in "
          f"{time.monotonic() - start:.1f} s")
    return 0


def _engine_for(args):
    """The engine the segment command runs on: the server at --engine, else this process."""
    if args.engine:
        from .engine.client import RemoteEngine
        from .engine.server import read_token

        if args.weights:
            raise CliError("--weights applies to this process only; the engine server loads its own weights")
        return RemoteEngine(args.engine, token=read_token(args.token_file))
    from .engine.api import SessionSpec
    from .engine.local import InProcessEngine

    def loader(spec: SessionSpec):
        return load_model_for(args)

    return InProcessEngine(model_loader=loader)


def cmd_serve(args) -> int:
    from .engine.api import SessionSpec
    from .engine.core import EngineCore
    from .engine.server import read_tokens, serve

    if args.weights_dir:
        os.environ["SAMSEGMENT_WEIGHTS_DIR"] = args.weights_dir
    logging.getLogger("SAMSegmentLib").setLevel(logging.INFO)
    tokens = read_tokens(args.token_file)
    core = EngineCore(defaults=SessionSpec(device=args.device, backend=args.backend, precision=args.precision),
                      memory_mb=args.memory_mb, session_cache_mb=args.session_cache_mb, idle_timeout_s=args.idle_timeout)
    for name in args.preload:
        core.model(SessionSpec(model=name))
    return serve(host=args.host, port=args.port, tokens=tokens, core=core, shared_dir=args.shared_dir,
                 ready_file=args.ready_file, exit_with_parent=args.exit_with_parent, tls_cert=args.tls_cert,
                 tls_key=args.tls_key, max_upload_mb=args.max_upload_mb)


def cmd_models(args) -> int:
    from .models.checkpoints import ensure_weights, weights_state
    from .models.registry import MODELS, get_spec

    if args.download or args.verify:
        spec = get_spec(args.download or args.verify)
        if args.verify:
            state = weights_state(spec, verify=True)
            if not state.present:
                raise CliError(f"{spec.name}: no weights at {state.path}; run 'samsegment models --download {spec.name}'")
            print(f"{spec.name}: {'verified' if state.verified else 'CHECKSUM MISMATCH'} ({state.path})")
            return 0 if state.verified else 1
        bar = ProgressBar(f"download {spec.name}", enabled=progress_enabled(args), unit="B")
        report = _ProgressFile(args.progress_file) if args.progress_file else None

        def progress(done: int, total: int | None) -> None:
            bar(done, total or max(done, 1))
            if report is not None:
                report.write(done=done, total=total or spec.size_bytes or 0)

        try:
            path = ensure_weights(spec, progress=progress)
        except Exception as exc:
            if report is not None:
                report.write(error=str(exc), force=True)
            raise
        finally:
            bar.close()
        if report is not None:
            report.write(path=str(path), force=True)
        print(f"{spec.name}: verified at {path}")
        return 0
    print(f"{'model':24} {'family':11} {'weights':10} {'size':>9}  license      description")
    for spec in MODELS.values():
        state = weights_state(spec)
        status = "verified" if state.verified else ("present" if state.present else "missing")
        size = spec.size_bytes or 0
        print(f"{spec.name:24} {spec.family:11} {status:10} {size / 1e6:7.0f}MB  {spec.license:12} {spec.description}")
    return 0


class _ProgressFile:
    """A JSON file a parent process polls (the Slicer module's download dialog), replaced atomically, at most
    five times a second unless forced."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._last = 0.0

    def write(self, force: bool = False, **values) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        import json

        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(self.path)


def cmd_evaluate(args) -> int:
    from .evaluation import main_evaluate

    return main_evaluate(args)


def cmd_demo(args) -> int:
    from .demo import main_demo

    return main_demo(args)


def _check_port_free(host: str, port: int) -> None:
    """CliError when ``host:port`` cannot be listened on now (another program holds it); port 0 always works."""
    import socket

    if port == 0:
        return
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port") from None


def cmd_web(args) -> int:
    """``samsegment web``: the trame-slicer front end in SAMSegmentWeb/ (a source checkout; the 'web' extra)."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    if not (root / "SAMSegmentWeb" / "launcher.py").is_file():
        raise CliError("the web front end runs from a source checkout of SAMSegment (SAMSegmentWeb/ next to "
                       "SAMSegmentLib/): clone the repository and run ./dev web")
    missing = [m for m in ("trame_slicer", "slicer", "aiohttp") if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(f"the web front end needs {', '.join(missing)}: pip install -e '.[web]' in the checkout")
    volumes = [str(Path(v).expanduser().resolve()) for v in args.volumes]
    for volume in volumes:
        if not Path(volume).is_file():
            raise CliError(f"volume file not found: {volume}")
    from .models.registry import get_spec

    get_spec(args.model)  # an unknown model: exit 2 before the engine starts
    _check_port_free(args.host, args.port)  # before minutes of engine start, not after
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("samsegment web has no access control: anyone who reaches %s:%d can use the sessions (and the "
                    "files they open); prefer 127.0.0.1 behind an SSH tunnel or an authenticating proxy",
                    args.host, args.port)
    if args.demo:
        from .demo import demo_data_paths

        volumes.append(str(demo_data_paths()[0]))
    session_args = ["--model", args.model, "--device", args.device, *volumes]
    if args.layout:
        session_args += ["--layout", args.layout]
    if args.volume_rendering:
        session_args.append("--volume-rendering")
    if args.test_hooks:
        session_args.append("--test-hooks")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from SAMSegmentWeb.launcher import run

    return run(session_args, host=args.host, port=args.port, max_sessions=args.max_sessions, spare=args.spare,
               model=args.model, device=args.device,
               log_dir=args.log_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    handlers = {"segment": cmd_segment, "models": cmd_models, "evaluate": cmd_evaluate, "demo": cmd_demo,
                "serve": cmd_serve, "web": cmd_web}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("samsegment: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # user-facing: one line, no traceback
        if args.verbose:
            log.exception("failed")
        code = EXIT_BAD_INPUT if _is_input_error(exc) else 1
        print(f"samsegment: error: {exc}", file=sys.stderr)
        return code


def _is_input_error(exc: BaseException) -> bool:
    from .backends import BackendUnavailableError
    from .engine.client import BadRequest
    from .models import MissingPackageError
    from .models.registry import UnknownModelError
    from .prompts import PromptError
    from .volume import VolumeError

    return isinstance(exc, (CliError, PromptError, VolumeError, UnknownModelError, MissingPackageError,
                            BackendUnavailableError, FileNotFoundError, BadRequest))


if __name__ == "__main__":
    sys.exit(main())
