"""A folder cache for exported model graphs: built once, atomically, verified by a manifest on every load.

An entry is a folder ``<root>/<label>-<key hash>/`` holding the exported files and ``manifest.json``. The key is
a dict (weights SHA-256, library versions, graph version, input shapes ...); its canonical JSON's SHA-256 names the
folder and is repeated in the manifest. The manifest lists every file with its size, SHA-256 and modification time.

- Building writes into a fresh temporary folder next to the entry, runs the caller's check on it, writes the
  manifest last, and renames the folder into place (``os.rename``, atomic on one file system). A failed, cancelled
  or killed build leaves only a ``.tmp-*`` folder, which no load trusts and the next build sweeps away.
- Loading trusts an entry only when its manifest parses, names the same key, and every file has its recorded size
  and (unless its modification time is unchanged since the build) its recorded SHA-256. Anything else is moved
  aside, deleted and rebuilt.

Pure Python (hashlib, json, os); no torch or openvino here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_STALE_TMP_S = 3600.0  # temporary build folders older than this are left-overs of dead builds


class ExportError(RuntimeError):
    """An export could not be built or checked; the message says what to do."""


def key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the key's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _describe(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            st = path.stat()
            files[path.relative_to(folder).as_posix()] = {
                "size": st.st_size,
                "sha256": _sha256(path),
                "mtime_ns": st.st_mtime_ns,
            }
    return files


def check_entry(folder: Path, key: Mapping[str, Any]) -> str | None:
    """Why the entry at ``folder`` cannot be trusted for ``key`` (None when it can)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("version") != MANIFEST_VERSION or manifest.get("key_sha256") != key_digest(key):
            return "manifest for another key"
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable manifest"
    if not files:
        return "manifest lists no files"
    for name, info in files.items():
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != info.get("size"):
            return f"{name} has {st.st_size} bytes, the manifest says {info.get('size')}"
        if st.st_mtime_ns != info.get("mtime_ns") and _sha256(path) != info.get("sha256"):
            return f"{name} fails its SHA-256"
    return None


def _remove_tree(folder: Path) -> None:
    """Delete ``folder``: first renamed aside (atomic), so a half-deleted entry is never seen under its name."""
    if not folder.exists():
        return
    aside = folder.with_name(f".tmp-stale-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, aside)
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


def _sweep_stale(root: Path) -> None:
    now = time.time()
    for path in root.glob(".tmp-*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_S or path.name.startswith(".tmp-stale-"):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def cached_export(
    root: Path,
    label: str,
    key: Mapping[str, Any],
    build: Callable[[Path], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """The folder of a verified export for ``key`` under ``root``, building it first when needed.

    ``build(folder)`` writes the export's files into an empty temporary folder; ``check(folder)`` (optional) raises
    when what was written does not work (e.g. loads it and compares its outputs with the source model). Both run
    only when no trusted entry exists. Raises :class:`ExportError` when the folder cannot be written.
    """
    digest = key_digest(key)
    final = root / f"{label}-{digest[:16]}"
    if final.exists():
        reason = check_entry(final, key)
        if reason is None:
            log.debug("using the cached export %s", final)
            return final
        log.warning("the cached export %s cannot be trusted (%s); rebuilding it", final, reason)
        _remove_tree(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _sweep_stale(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{label}-", dir=root))
    except OSError as exc:
        raise ExportError(
            f"cannot write the model export cache in {root}: {exc.strerror or exc}; set SAMSEGMENT_WEIGHTS_DIR to "
            f"a writable folder"
        ) from exc
    try:
        start = time.perf_counter()
        build(tmp)
        if check is not None:
            check(tmp)
        manifest = {"version": MANIFEST_VERSION, "key_sha256": digest, "key": dict(key), "files": _describe(tmp)}
        if not manifest["files"]:
            raise ExportError(f"the export of {label} wrote no files")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        try:
            os.rename(tmp, final)
        except OSError:
            # another process finished the same export first: use its entry if it can be trusted
            if final.exists() and check_entry(final, key) is None:
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
        log.info("exported %s in %.1f s to %s", label, time.perf_counter() - start, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
