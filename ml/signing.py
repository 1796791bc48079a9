"""Signed pickles: nothing read back from the data directory is unpickled unless this platform wrote it.

Unpickling runs code named by the file, so a pickle planted in the data directory (a stream checkpoint that
the scoring service reloads, say) would run as the service. Every pickle the platform writes is therefore
signed: ``sign(payload)`` prefixes ``MAGIC`` and an HMAC-SHA256 tag of the payload; ``verify(data)`` checks
the tag (constant time) before anything is unpickled and raises ``SignatureError`` otherwise. ``loads``
verifies, then unpickles through an allow-list of classes (defence in depth: with a leaked key a pickle
still cannot name ``os.system``).

The key is ``FRAUD_SIGNING_KEY`` (at least 32 characters) or, when that is unset, the file
``<data_dir>/secrets/signing.key``, generated on first use (mode 0600, created atomically: two processes
starting together agree on one key). A key file that others can read or write, or that another user owns,
is refused: whoever can replace the key can sign a pickle. Processes that share checkpoints (stream worker,
scoring service, Dagster) must share the data directory or the variable.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
import secrets
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

ENV_KEY = "FRAUD_SIGNING_KEY"
MAGIC = b"FRAUD-SIGNED-PICKLE/1\n"
TAG_LEN = hashlib.sha256().digest_size
HEADER_LEN = len(MAGIC) + TAG_LEN
MIN_KEY_LEN = 32

# What a platform pickle may name (checkpoints: River models and detectors, the stream state): classes of
# these modules (and their submodules), and the few numpy/copyreg functions that rebuild arrays and objects.
ALLOWED_MODULES = ("river", "ml.online.river_model", "ml.events", "ml.online.checkpoint",
                   "ml.online.store", "ml.online.history_buffer", "ml.features", "collections",
                   "datetime", "random", "functools", "_collections", "_functools", "_random", "_datetime")
REFUSED_MODULES = ("river.datasets", "river.stream", "river.api")  # readers of files and URLs
ALLOWED_GLOBALS = frozenset({
    ("copyreg", "_reconstructor"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})
# builtins: data types only (no eval, exec, getattr, __import__, open...).
SAFE_BUILTINS = frozenset({"object", "dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str",
                           "int", "float", "complex", "bool", "range", "slice", "type"})


class SignatureError(ValueError):
    """A file is not signed, or not with this platform's key: it is not unpickled."""


class SigningKeyError(RuntimeError):
    """No usable signing key (too short, or a key file with unsafe ownership or permissions)."""


def key_path(data_dir: Path | None = None) -> Path:
    if data_dir is None:
        from ml.settings import get_settings

        data_dir = get_settings().data_dir
    return Path(data_dir) / "secrets" / "signing.key"


def load_key(data_dir: Path | None = None) -> bytes:
    """The signing key: ``FRAUD_SIGNING_KEY``, else the data directory's key file (created on first use)."""
    from ml.settings import get_settings

    secret = get_settings().signing_key
    if secret is not None:
        key = secret.get_secret_value().encode()
        if len(key) < MIN_KEY_LEN:
            raise SigningKeyError(f"{ENV_KEY} must be at least {MIN_KEY_LEN} characters")
        return key
    path = key_path(data_dir)
    try:
        return _read_key(path)
    except FileNotFoundError:
        _create_key(path)
        return _read_key(path)


def _create_key(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing.key.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(32).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive (as O_EXCL): of two processes racing, the first wins
            log.info("generated a signing key at %s", path)
        except FileExistsError:
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"signing key {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SigningKeyError(f"signing key {path} is accessible to other users "
                                  f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it")
        if hasattr(os, "geteuid") and st.st_uid not in (os.geteuid(), 0):
            raise SigningKeyError(f"signing key {path} is owned by uid {st.st_uid}, not by this user")
        with os.fdopen(os.dup(fd), "rb") as f:
            key = f.read().strip()
    finally:
        os.close(fd)
    if len(key) < MIN_KEY_LEN:
        raise SigningKeyError(f"signing key {path} is shorter than {MIN_KEY_LEN} characters")
    return key


def _tag(key: bytes, payload: bytes | memoryview, purpose: str) -> bytes:
    # The purpose is signed too: a file signed for one use is refused for another.
    mac = hmac.new(key, MAGIC + purpose.encode() + b"\n", hashlib.sha256)
    mac.update(payload)
    return mac.digest()


def header(payload: bytes | memoryview, key: bytes | None = None, purpose: str = "") -> bytes:
    """What ``sign`` puts before the payload (write both, without concatenating large payloads)."""
    return MAGIC + _tag(key if key is not None else load_key(), payload, purpose)


def sign(payload: bytes, key: bytes | None = None, purpose: str = "") -> bytes:
    return header(payload, key, purpose) + payload


def is_signed(data: bytes | memoryview) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def verify(data: bytes | memoryview, key: bytes | None = None, purpose: str = "",
           source: str = "data") -> memoryview:
    """The payload of signed ``data`` (a view, not a copy); ``SignatureError`` if it is not signed by ``key``.

    ``source`` names the data in the error (a path; never its content)."""
    view = memoryview(data)
    if not is_signed(view):
        raise SignatureError(f"{source}: not signed (written by an older version, or not by this platform)")
    if len(view) < HEADER_LEN:
        raise SignatureError(f"{source}: truncated signature")
    payload = view[HEADER_LEN:]
    expected = _tag(key if key is not None else load_key(), payload, purpose)
    if not hmac.compare_digest(expected, bytes(view[len(MAGIC):HEADER_LEN])):
        raise SignatureError(f"{source}: signature does not match (modified, or signed with another key)")
    return payload


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _allowed_module(module: str) -> bool:
    return _within(module, ALLOWED_MODULES) and not _within(module, REFUSED_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only classes of the allowed modules, safe builtins and ``ALLOWED_GLOBALS``."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - whatever the module holds
        if module == "builtins":
            if name in SAFE_BUILTINS:
                return super().find_class(module, name)
        elif (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        elif _allowed_module(module):
            obj = super().find_class(module, name)
            # A class, and defined there: a dotted name could otherwise reach os.system through an import.
            if isinstance(obj, type) and _allowed_module(getattr(obj, "__module__", "") or ""):
                return obj
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a platform pickle")


def unpickle(payload: bytes | memoryview) -> object:
    """Unpickle already verified bytes through the allow-list."""
    return RestrictedUnpickler(io.BytesIO(payload)).load()


def unpickler(data: bytes, key: bytes | None = None, purpose: str = "", source: str = "data"
              ) -> RestrictedUnpickler:
    """Verify signed ``data``, then an allow-list unpickler on its payload: ``load()`` it once, or until
    ``EOFError`` for a stream of pickles."""
    verify(data, key, purpose, source)
    buf = io.BytesIO(data)  # shares the bytes object (no copy of a large file)
    buf.seek(HEADER_LEN)
    return RestrictedUnpickler(buf)


def loads(data: bytes, key: bytes | None = None, purpose: str = "", source: str = "data") -> object:
    """Verify, then unpickle through the allow-list."""
    return unpickler(data, key, purpose, source).load()


def dumps(obj: object, key: bytes | None = None, purpose: str = "") -> bytes:
    return sign(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), key, purpose)
