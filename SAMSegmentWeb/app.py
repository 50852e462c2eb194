"""One browser session: trame-slicer's segmentation app plus the Segment Anything panel, served by trame.

Run by the launcher (launcher.py) as its own process, one per browser tab:
``python -m SAMSegmentWeb.app --port P [--host 127.0.0.1] [--model NAME] [--device auto] [VOLUME ...]``.

The model never runs in this process, let alone on trame's event loop: SegmentAnythingController speaks to an engine
process (``--engine URL``: the one the launcher shares between all sessions, token in SAMSEGMENT_TOKEN; without it,
an engine child of this session's own), and a periodic task on the loop (``POLL_S``) moves its sockets along,
collects its events and pushes the panel's state. Models are provisioned on the server (``samsegment models
--download NAME``); the panel only offers models that are ready, and nothing here installs packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from .effect import DIRECTIONS, WRITE_MODES, EffectSettings, SegmentAnythingTool

log = logging.getLogger(__name__)

POLL_S = 0.04  # engine events -> panel, at most this late
TOOL_ID = "SegmentAnythingPanel"
READY_LINE = "SAMSEGMENT_SESSION_READY"
DIRECTION_TITLES = {"both": "Both directions", "forward": "Increasing slice index",
                    "backward": "Decreasing slice index"}
WRITE_MODE_TITLES = {"replace": "Replace the slice", "add": "Add to the segment"}
KEYS_HELP = ("Click: include · Shift+click: exclude · drag: box · Enter: apply · p: propagate · "
             "Backspace/x: remove last prompt · Delete: clear slice")


def ready_models() -> list[dict]:
    """Models whose packages and weights are on this server, as select items (others listed as disabled)."""
    from SAMSegmentEffectLib.controller import model_status, models

    items = []
    for name in models():
        status = model_status(name)
        ready = status.state == "ready"
        items.append({"title": name if ready else f"{name} (not provisioned)", "value": name, "props": {
            "disabled": not ready}})
    return items


class SessionApp:
    """The trame server of one session and what it shows."""

    def __init__(self, server=None, settings: EffectSettings | None = None, test_hooks: bool = False,
                 layout: str | None = None, volume_rendering: bool = False, engine_url: str | None = None) -> None:
        from trame.app import get_server

        from . import adapter

        self.server = server or get_server(client_type="vue3")
        self.state = self.server.state
        self.settings = settings or EffectSettings()
        self.test_hooks = bool(test_hooks)
        self.volume_rendering = bool(volume_rendering)
        self._dirty = True
        self._poll_task = None
        controller = _controller(engine_url)
        self.parts = adapter.SegmentationAppParts(
            self.server, lambda host: SegmentAnythingTool(host, controller=controller, settings=self.settings,
                                                          on_change=self._mark_dirty))
        self.tool = self.parts.tool
        self.host = self.parts.host
        self._init_state()
        self._build_ui()
        self.parts.on_volume_loaded(self._on_volume_loaded)
        self.parts.on_segmentation_changed(self._mark_dirty)
        self.parts.on_effect_changed(self._on_effect_changed)
        self.state.change(self.parts.active_tool_state_name())(self._on_active_tool)
        self.server.controller.on_server_ready.add(self._start_polling)
        if layout:
            self.parts.set_layout(layout)

    # ------------------------------------------------------------------------------------------- state

    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "SAMSegment"
        s.sam_models = ready_models()
        s.sam_model = self.settings.model
        s.sam_device = self.settings.device
        s.sam_write_mode = self.settings.write_mode
        s.sam_refine = self.settings.refine
        s.sam_direction = self.settings.direction
        s.sam_whole_range = self.settings.whole_range
        s.sam_range_from = self.settings.range_from
        s.sam_range_to = self.settings.range_to
        s.sam_segments = []
        s.sam_segment_id = ""
        s.sam_can_undo = False
        s.sam_can_redo = False
        s.sam_status = asdict(self.tool.status)
        s.sam_stats = {}
        for name in ("sam_model", "sam_device", "sam_write_mode", "sam_refine", "sam_direction", "sam_whole_range",
                     "sam_range_from", "sam_range_to"):
            s.change(name)(self._on_setting)
        s.change("sam_segment_id")(self._on_segment_selected)

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _on_setting(self, **_):
        s = self.state

        def as_int(value, default):
            try:
                return int(value)
            except (TypeError, ValueError):
                return default

        self.tool.settings_changed(
            model=s.sam_model, device=s.sam_device,
            write_mode=s.sam_write_mode if s.sam_write_mode in WRITE_MODES else "replace",
            refine=bool(s.sam_refine),
            direction=s.sam_direction if s.sam_direction in DIRECTIONS else "both",
            whole_range=bool(s.sam_whole_range),
            range_from=as_int(s.sam_range_from, 0), range_to=as_int(s.sam_range_to, 9999))

    def _on_segment_selected(self, sam_segment_id, **_):
        if sam_segment_id and sam_segment_id != self.host.segment_id():
            self.host.select_segment(sam_segment_id)

    def push_state(self) -> None:
        """The panel's state from the tool and the segment editor (on the event loop)."""
        s = self.state
        with s:
            s.sam_status = asdict(self.tool.status)
            s.sam_segments = self.host.segments()
            s.sam_segment_id = self.host.segment_id()
            s.sam_can_undo, s.sam_can_redo = self.host.can_undo()
            if self.test_hooks:
                stats = self.tool.stats()
                stats["views"] = self.parts.view_facts()
                s.sam_stats = stats

    # ------------------------------------------------------------------------------------------- events

    def _start_polling(self, **_):
        from trame_server.utils.asynchronous import create_task

        self._poll_task = create_task(self._poll_loop())

    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_push = 0.0
        while True:
            await asyncio.sleep(POLL_S)
            try:
                self.parts.fit_resized_views()
                self.tool.poll()
                # test hooks: views move and resize without telling the panel; refresh their facts twice a second
                if self._dirty or (self.test_hooks and loop.time() - last_push > 0.5):
                    self._dirty = False
                    last_push = loop.time()
                    self.push_state()
            except Exception:  # keep polling: one bad event must not freeze the panel
                log.exception("Segment Anything: poll failed")

    def _on_volume_loaded(self, volume_node=None, *_):
        self.parts.set_volume_rendering(volume_node, self.volume_rendering)
        self.tool.volume_changed()
        self.parts.show_tool(TOOL_ID)
        self._activate()
        self._mark_dirty()

    def _on_active_tool(self, **_):
        if self.parts.active_tool() == TOOL_ID:
            self._activate()
        else:
            self.parts.deactivate_effect()
        self._mark_dirty()

    def _activate(self) -> None:
        if self.parts.active_tool() == TOOL_ID and not self.parts.effect_is_active():
            self.parts.activate_effect()

    def _on_effect_changed(self, sam_active: bool) -> None:
        self._mark_dirty()

    # buttons
    def on_apply(self):
        self.tool.apply()

    def on_propagate(self):
        self.tool.propagate()

    def on_cancel(self):
        self.tool.cancel()

    def on_clear(self):
        self.tool.clear_all()

    def on_add_segment(self):
        self.host.add_segment()
        self._mark_dirty()

    def on_undo(self):
        self.host.undo()
        self._mark_dirty()

    def on_redo(self):
        self.host.redo()
        self._mark_dirty()

    # ------------------------------------------------------------------------------------------- UI

    def _build_ui(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        ui = self.parts.ui
        ui.layout.title.set_text("SAMSegment")
        with ui.layout.toolbar:
            self.parts.tool_button("Segment Anything", "mdi-creation", TOOL_ID)
        with ui.layout.drawer, html.Div(v_if=(self.parts.tool_visible_expression(TOOL_ID),), classes="pa-2",
                                        id="sam-panel"):
            v3.VCardTitle("Segment Anything", classes="px-1")
            with html.Div(classes="d-flex align-center"):
                v3.VSelect(label="Segment", v_model=("sam_segment_id",), items=("sam_segments",), density="compact",
                           hide_details=True, id="sam-segment")
                v3.VBtn(icon="mdi-plus", variant="tonal", size="small", classes="ml-2", click=self.on_add_segment,
                        id="sam-add-segment")
            with html.Div(classes="d-flex mt-2"):
                v3.VSelect(label="Model", v_model=("sam_model",), items=("sam_models",), density="compact",
                           hide_details=True, classes="mr-2", id="sam-model")
                v3.VSelect(label="Device", v_model=("sam_device",), items=(["auto", "cpu", "cuda", "mps"],),
                           density="compact", hide_details=True, style="max-width: 110px;")
            v3.VSelect(label="Write", v_model=("sam_write_mode",), density="compact", hide_details=True,
                       classes="mt-2", items=([{"title": WRITE_MODE_TITLES[m], "value": m} for m in WRITE_MODES],))
            v3.VCheckbox(label="Refine existing segment", v_model=("sam_refine",), density="compact",
                         hide_details=True)
            v3.VSelect(label="Propagate", v_model=("sam_direction",), density="compact", hide_details=True,
                       classes="mt-2", items=([{"title": DIRECTION_TITLES[d], "value": d} for d in DIRECTIONS],))
            with html.Div(classes="d-flex align-center"):
                v3.VCheckbox(label="all", v_model=("sam_whole_range",), density="compact",
                             hide_details=True, id="sam-whole-range", style="flex: 0 0 auto;")
                v3.VTextField(label="from", v_model=("sam_range_from",), type="number", density="compact",
                              hide_details=True, disabled=("sam_whole_range",), classes="mx-1", id="sam-range-from")
                v3.VTextField(label="to", v_model=("sam_range_to",), type="number", density="compact",
                              hide_details=True, disabled=("sam_whole_range",), id="sam-range-to")
            with html.Div(classes="d-flex flex-wrap mt-2", style="gap: 4px;"):
                v3.VBtn("Apply (Enter)", click=self.on_apply, disabled=("!sam_status.can_apply",), size="small",
                        color="primary", id="sam-apply")
                v3.VBtn("Propagate (p)", click=self.on_propagate, disabled=("sam_status.propagating",),
                        size="small", id="sam-propagate")
                v3.VBtn("Cancel", click=self.on_cancel, disabled=("!sam_status.propagating",), size="small",
                        id="sam-cancel")
                v3.VBtn("Clear all", click=self.on_clear, size="small", id="sam-clear")
                v3.VBtn(icon="mdi-undo", click=self.on_undo, disabled=("!sam_can_undo",), size="small",
                        variant="text", id="sam-undo")
                v3.VBtn(icon="mdi-redo", click=self.on_redo, disabled=("!sam_can_redo",), size="small",
                        variant="text", id="sam-redo")
            v3.VProgressLinear(v_if=("sam_status.propagating",), id="sam-progress", classes="mt-2", height=6,
                               model_value=("sam_status.progress_total ? 100 * sam_status.progress_done / "
                                            "sam_status.progress_total : 0",),
                               indeterminate=("!sam_status.progress_total",))
            html.Div("{{ sam_status.propagating && sam_status.progress_total ? "
                     "sam_status.progress_done + ' / ' + sam_status.progress_total + ' slices' : '' }}",
                     classes="text-caption", id="sam-progress-text")
            html.Div("{{ sam_status.message }}", id="sam-status", classes="text-body-2 mt-2",
                     style=("sam_status.error ? 'color: #ff6e5a' : ''",))
            html.Div(KEYS_HELP, classes="text-caption text-medium-emphasis mt-2")
            self.parts.edit_area_ui()
        ui.layout.flush_content()  # the layout was built by trame-slicer: send what was added since

    # ------------------------------------------------------------------------------------------- run

    def load(self, paths: list[str]) -> None:
        paths = [str(Path(p).expanduser()) for p in paths]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"volume file not found: {missing[0]}")
        if paths:
            self.parts.load_volume_files(paths)

    def shutdown(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        self.tool.shutdown()


def _controller(engine_url: str | None):
    """The session's engine driver: the shared engine at ``engine_url`` (token in SAMSEGMENT_TOKEN, volumes through
    SAMSEGMENT_ENGINE_SHARED_DIR when set), else an engine child process of this session's own."""
    from SAMSegmentEffectLib.controller import SegmentAnythingController

    if not engine_url:
        return SegmentAnythingController()
    from SAMSegmentLib.engine.client import RemoteEngine

    token = os.environ.get("SAMSEGMENT_TOKEN") or None
    shared = os.environ.get("SAMSEGMENT_ENGINE_SHARED_DIR") or None
    return SegmentAnythingController(engine=lambda: RemoteEngine(engine_url, token=token, shared_dir=shared))


def _exit_when_stdin_closes() -> None:
    """The launcher keeps our stdin open; when it goes away (even killed), this session ends."""

    def watch():
        with contextlib.suppress(OSError):
            while os.read(0, 4096):  # the raw descriptor: a buffered reader's lock would block interpreter exit
                pass
        os._exit(0)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m SAMSegmentWeb.app", description="One SAMSegment web session.")
    p.add_argument("volumes", nargs="*", help="volume files to open (NRRD, NIfTI, MHA, ...)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="the engine server to use (token in SAMSEGMENT_TOKEN); default: an engine process of its own")
    p.add_argument("--layout", default=None, help="initial view layout, e.g. 'Axial Only' or 'Axial Primary'")
    p.add_argument("--volume-rendering", action="store_true",
                   help="show volumes rendered in the 3D view (slow on servers without a GPU)")
    p.add_argument("--timeout", type=int, default=30, help="seconds without a browser before the session ends")
    p.add_argument("--test-hooks", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("SAMSegmentWeb", "SAMSegmentLib", "SAMSegmentEffectLib"):
        logging.getLogger(name).setLevel(logging.DEBUG if os.environ.get("SAMSEGMENT_WEB_DEBUG") else logging.INFO)
    if args.watch_stdin:
        _exit_when_stdin_closes()
    sys.argv = sys.argv[:1]  # trame parses sys.argv for its own options: ours are already parsed
    app = SessionApp(settings=EffectSettings(model=args.model, device=args.device), test_hooks=args.test_hooks,
                     layout=args.layout, volume_rendering=args.volume_rendering, engine_url=args.engine)
    try:
        app.load(args.volumes)
    except (FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def announce(**_):
        port = app.server.port
        print(f"{READY_LINE} {port}", flush=True)

    app.server.controller.on_server_ready.add(announce)
    try:
        app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False,
                         timeout=args.timeout, disable_logging=True)
    finally:
        app.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
