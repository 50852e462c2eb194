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
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 autocast on CPU (half the encoder time, same Dice in "
                   "benchmarks/bench_engine.py), fp32 on GPUs; or force fp32 / bf16")


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
    seg.add_argument("image", help="3D volume SimpleITK reads (NRRD, NIfTI, MHA)")
    seg.add_argument("--prompts", required=True, help="PROMPTS.json or a Slicer markups file (.mrk.json)")
    seg.add_argument("-o", "--output", required=True, help="output labelmap (.nii.gz, .nrrd, .mha) or .seg.nrrd")
    seg.add_argument("--propagate", choices=("none", "both", "forward", "backward"), default=None,
                     help="override the prompts file's propagate value")
    seg.add_argument("--axis", choices=("I", "J", "K"), default=None,
                     help="slice normal for markups prompts (default K); PROMPTS.json carries its own")
    seg.add_argument("--window", default=None, metavar="WIDTH,LEVEL|PRESET",
                     help="intensity window, e.g. 400,40 or ct-lung (default: automatic)")
    seg.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(seg)

    models = sub.add_parser("models", help="list models and their weights; download or verify one",
                            description="List the models with the state of their weights (present, verified, size), "
                            "or download / verify one.")
    models.add_argument("--download", metavar="NAME", help="download (if needed) and verify the weights of NAME")
    models.add_argument("--verify", metavar="NAME", help="re-hash the weights of NAME against the registry")

    ev = sub.add_parser("evaluate", help="simulate prompts from a reference label and measure accuracy",
                        description="Simulate prompts from a reference label, segment, and report Dice, normalised "
                        "surface Dice (1 and 2 mm), HD95 and seconds per case.")
    ev.add_argument("image", nargs="?", help="3D volume (or use --cases)")
    ev.add_argument("label", nargs="?", help="reference labelmap on the image grid")
    ev.add_argument("--label", dest="label_values", default="1", help="label value(s), comma separated (default 1)")
    ev.add_argument("--protocol", default="one-box", help="box-per-slice, one-box or clicks-N (e.g. clicks-3)")
    ev.add_argument("--axis", choices=("I", "J", "K"), default="K", help="slice normal (default K)")
    ev.add_argument("--cases", default=None, help="CSV with columns case,image,label[,label_values,axis]")
    ev.add_argument("--jitter", type=float, default=0.0, help="box jitter, fraction of box size (default 0)")
    ev.add_argument("--seed", type=int, default=0, help="random seed for jitter")
    ev.add_argument("--window", default=None, metavar="WIDTH,LEVEL|PRESET", help="intensity window (default automatic)")
    ev.add_argument("-o", "--output", required=True,
                    help="output folder: report.json, report.md, prediction.nii.gz, overlay.png "
                    "(with --cases: <case>/prediction.nii.gz and <case>/overlay.png)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    """'WIDTH,LEVEL' or a preset name -> Window; None -> None (automatic)."""
    from .windowing import CT_PRESETS, Window, auto_window

    if text is None:
        return None
    if text in CT_PRESETS:
        return auto_window(array, preset=text)
    try:
        width, level = (float(v) for v in text.split(","))
        return Window.from_width_level(width, level)
    except ValueError:
        raise CliError(f"--window must be WIDTH,LEVEL (e.g. 400,40) or one of {', '.join(CT_PRESETS)}") from None


class ProgressBar:
    """A one-line terminal progress bar on stderr (silent when disabled or not a terminal and quiet)."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.label, self.enabled = label, enabled
        self.start = time.monotonic()
        self._last = -1.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total)
        elapsed = now - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                         f"{elapsed:5.1f}s eta {eta:5.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def load_model_for(args):
    """Load the model chosen on the command line, with precision applied."""
    import torch

    from .models import load_model

    model = load_model(args.model, device=args.device, weights=args.weights)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if model.device.type == "cpu" else "fp32"
    if precision == "bf16":
        model.autocast_dtype = torch.bfloat16
    return model


def cmd_segment(args) -> int:
    from .io import read_volume, write_labelmap
    from .request import read_prompts_json
    from .session import SegmentationSession

    volume = read_volume(args.image)
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
    model = load_model_for(args)
    session = SegmentationSession(model, volume, window=window)
    bar = ProgressBar(f"segment ({args.model})", enabled=not args.no_progress)
    start = time.monotonic()
    mask = session.segment(request, progress=bar)
    out = write_labelmap(mask, volume, args.output)
    other_axes = tuple(a for a in range(3) if a != {"K": 0, "J": 1, "I": 2}[request.axis])
    n_slices = int(mask.any(axis=other_axes).sum())
    print(f"wrote {out} ({int(mask.sum())} voxels on {n_slices} slices along {request.axis}) in "
          f"{time.monotonic() - start:.1f} s")
    return 0


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
        bar = ProgressBar(f"download {spec.name}")
        path = ensure_weights(spec, progress=lambda done, total: bar(done, total or max(done, 1)))
        print(f"{spec.name}: verified at {path}")
        return 0
    print(f"{'model':24} {'family':11} {'weights':10} {'size':>9}  license      description")
    for spec in MODELS.values():
        state = weights_state(spec)
        status = "verified" if state.verified else ("present" if state.present else "missing")
        size = spec.size_bytes or 0
        print(f"{spec.name:24} {spec.family:11} {status:10} {size / 1e6:7.0f}MB  {spec.license:12} {spec.description}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import main_evaluate

    return main_evaluate(args)


def cmd_demo(args) -> int:
    from .demo import main_demo

    return main_demo(args)


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
                "web": cmd_web}
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
    from .models import MissingPackageError
    from .models.registry import UnknownModelError
    from .prompts import PromptError
    from .volume import VolumeError

    return isinstance(exc, (CliError, PromptError, VolumeError, UnknownModelError, MissingPackageError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
