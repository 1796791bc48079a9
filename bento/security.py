"""The scoring service's trust boundary: who may call what, and what a request may be, before BentoML
parses it.

``Guard`` is a plain ASGI middleware in front of every route:

- Authentication: ``Authorization: Bearer <token>``. ``FRAUD_API_TOKEN`` may call the scoring routes,
  ``FRAUD_ADMIN_TOKEN`` the admin routes (``/reload``) and the scoring routes. A missing or wrong token gets
  401 with ``WWW-Authenticate: Bearer``; the scoring token on an admin route gets 403. Tokens are compared in
  constant time (``hmac.compare_digest``). Health, readiness, metrics and the OpenAPI UI/document stay open.
- Without ``FRAUD_API_TOKEN`` the scoring routes answer loopback clients only (403 otherwise), and without
  ``FRAUD_ADMIN_TOKEN`` the admin routes are disabled (403 with the reason). ``check_bind`` refuses to start
  on a non-loopback address without ``FRAUD_API_TOKEN``.
- Requests with a body must be ``application/json`` (415 otherwise, multipart included) and at most
  ``FRAUD_MAX_BODY_BYTES`` (default 4 MiB, 413 beyond: a 10,000-transaction request is 0.8-2.5 MB as columns
  and 1.5-3.3 MB as rows, depending on id and time lengths).
- Every request gets an id (the client's ``X-Request-ID`` if it is a short token, else a new one), returned
  in ``X-Request-ID``; ``RejectionLogFilter`` turns BentoML's traceback for a rejected request (which
  repeats the rejected values) into one line with that id, the path and the rejected fields' names.

``openapi_truth`` completes BentoML's generated OpenAPI document: the security scheme, the error answers
(400/401/403/413/415/503) with their body schema, and nullable fields as OpenAPI 3.0 spells them.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import itertools
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bentoml.exceptions import BentoMLConfigException
from pydantic import SecretStr

from ml.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = Settings.model_fields["max_body_bytes"].default
MIN_TOKEN_LEN = 16
OPEN_PATHS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
ADMIN_PATHS = frozenset({"/reload"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class UnsafeConfiguration(BentoMLConfigException, RuntimeError):
    """A setting the service refuses to start with; `bentoml serve` prints it as one line, no traceback."""


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("fraud_request_id", default="-")


def _token(name: str, secret: SecretStr | None) -> bytes | None:
    value = secret.get_secret_value().strip() if secret is not None else ""
    if not value:
        return None
    if len(value) < MIN_TOKEN_LEN:
        raise UnsafeConfiguration(
            f"{name} must be at least {MIN_TOKEN_LEN} characters (`openssl rand -hex 32`)")
    return value.encode()


@dataclass(frozen=True)
class AccessPolicy:
    api_token: bytes | None
    admin_token: bytes | None
    max_body: int = DEFAULT_MAX_BODY

    @classmethod
    def from_env(cls) -> AccessPolicy:
        s = get_settings()
        if s.max_body_bytes <= 0:
            raise UnsafeConfiguration("FRAUD_MAX_BODY_BYTES must be positive")
        return cls(_token("FRAUD_API_TOKEN", s.api_token), _token("FRAUD_ADMIN_TOKEN", s.admin_token),
                   s.max_body_bytes)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def serve_host() -> str:
    """The address ``bentoml serve`` binds by default (``FRAUD_SERVE_HOST``, default loopback only)."""
    return get_settings().serve_host


def check_bind(policy: AccessPolicy, hosts: list[str]) -> None:
    """Refuse to serve on a network address without a scoring token (loopback-only serving needs none)."""
    exposed = [h for h in hosts if h and not is_loopback(h)]
    if exposed and policy.api_token is None:
        raise UnsafeConfiguration(
            f"refusing to serve on {exposed[0]} (not a loopback address) without FRAUD_API_TOKEN: set "
            "FRAUD_API_TOKEN (and FRAUD_ADMIN_TOKEN for /reload), or serve on 127.0.0.1")


def requested_hosts(argv: list[str] | None = None) -> list[str]:
    """Every address this process was asked to bind: FRAUD_SERVE_HOST, BENTOML_HOST, ``--host`` on the
    command line, and the address of a listening socket handed over as ``--fd`` (a BentoML worker)."""
    argv = sys.argv if argv is None else argv
    hosts = [serve_host(), os.environ.get("BENTOML_HOST", "")]
    for i, arg in enumerate(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--host="):
            hosts.append(arg.split("=", 1)[1])
        elif arg == "--host":
            hosts.append(value)
        elif arg == "--fd" and value.isdigit():
            hosts.append(_socket_host(int(value)))
    return hosts


def _socket_host(fd: int) -> str:
    import socket

    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            name = s.getsockname()
    except OSError:
        return ""
    return name[0] if isinstance(name, tuple) else ""


class _State:
    """What the middleware enforces, set when the service instance starts (tests start several)."""

    def __init__(self) -> None:
        self.policy = AccessPolicy(None, None)
        self.spec: Callable[[], dict] | None = None
        self.models: Callable[[], dict] | None = None
        self.spec_cache: bytes | None = None


STATE = _State()


def configure(policy: AccessPolicy, spec: Callable[[], dict] | None = None,
              models: Callable[[], dict] | None = None) -> None:
    """Set what ``Guard`` enforces; ``spec`` and ``models`` give BentoML's OpenAPI document and each
    route's input and output models (``openapi_truth``)."""
    STATE.policy, STATE.spec, STATE.models, STATE.spec_cache = policy, spec, models, None


def _json(status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, list, bytes]:
    data = json.dumps(body).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                    *headers], data


_UNAUTHORIZED = _json(401, {"error": "missing or invalid bearer token"},
                      [(b"www-authenticate", b'Bearer realm="fraud-scorer"')])
_BAD_TOKEN = _json(401, {"error": "missing or invalid bearer token"},
                   [(b"www-authenticate", b'Bearer realm="fraud-scorer", error="invalid_token"')])
_NOT_ADMIN = _json(403, {"error": "this route needs the admin token (FRAUD_ADMIN_TOKEN)"})
_ADMIN_OFF = _json(403, {"error": "admin routes are disabled: FRAUD_ADMIN_TOKEN is not set"})
_LOOPBACK_ONLY = _json(403, {"error": "no FRAUD_API_TOKEN is set: only loopback clients may score"})
_NOT_JSON = _json(415, {"error": "Content-Type must be application/json"})
_BAD_LENGTH = _json(400, {"error": "invalid Content-Length"})


class Guard:
    """The ASGI middleware (module docstring). Per request: one pass over the headers, a set lookup for the
    route and one or two ``compare_digest``."""

    _ids = itertools.count(1)
    _prefix = secrets.token_hex(4)

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        auth = ctype = length = rid = None
        chunked = False
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-type":
                ctype = v
            elif k == b"content-length":
                length = v
            elif k == b"x-request-id":
                rid = v
            elif k == b"transfer-encoding":
                chunked = True
        rid_s = rid.decode() if rid is not None and _REQUEST_ID.fullmatch(rid) else \
            f"{self._prefix}-{next(self._ids):x}"
        token = request_id.set(rid_s)
        rid_header = (b"x-request-id", rid_s.encode())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            path = scope["path"]
            if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
                if path == "/docs.json" and STATE.spec is not None:
                    await _respond(send_with_id, (200, [(b"content-type", b"application/json")], _spec()))
                    return
                await self.app(scope, receive, send_with_id)
                return
            refusal = self._refusal(path, auth, scope.get("client"))
            if refusal is None and scope["method"] in _BODY_METHODS:
                refusal = self._body_refusal(ctype, length, chunked)
                if refusal is None and length is None and chunked:
                    body = await _read_capped(receive, STATE.policy.max_body)
                    if body is None:
                        refusal = _too_large(STATE.policy.max_body)
                    else:
                        receive = _replay(body)
            if refusal is not None:
                await _respond(send_with_id, refusal)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)

    @staticmethod
    def _refusal(path: str, auth: bytes | None, client: tuple | None) -> tuple | None:
        policy = STATE.policy
        admin_route = path in ADMIN_PATHS
        presented = auth[7:].strip() if auth is not None and auth[:7].lower() == b"bearer " else None
        if admin_route:
            if policy.admin_token is None:
                return _ADMIN_OFF
            if presented is not None and hmac.compare_digest(presented, policy.admin_token):
                return None
            if presented is not None and policy.api_token is not None and hmac.compare_digest(
                    presented, policy.api_token):
                return _NOT_ADMIN
            return _UNAUTHORIZED if auth is None else _BAD_TOKEN
        if presented is not None:
            if policy.api_token is not None and hmac.compare_digest(presented, policy.api_token):
                return None
            if policy.admin_token is not None and hmac.compare_digest(presented, policy.admin_token):
                return None
        if policy.api_token is None:  # no scoring token: loopback clients only
            if is_loopback(client[0] if client else None):
                return None
            return _LOOPBACK_ONLY if auth is None else _BAD_TOKEN
        return _UNAUTHORIZED if auth is None else _BAD_TOKEN

    @staticmethod
    def _body_refusal(ctype: bytes | None, length: bytes | None, chunked: bool) -> tuple | None:
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return _BAD_LENGTH
            if n < 0:
                return _BAD_LENGTH
        else:
            n = 0
        if ctype is None:
            return _NOT_JSON if n > 0 or chunked else None  # no body, no type: a bare POST (/reload)
        if ctype.split(b";", 1)[0].strip().lower() != b"application/json":
            return _NOT_JSON
        if n > STATE.policy.max_body:
            return _too_large(STATE.policy.max_body)
        return None


def _too_large(limit: int) -> tuple:
    return _json(413, {"error": f"request body larger than {limit} bytes (FRAUD_MAX_BODY_BYTES)"})


async def _read_capped(receive: Callable, limit: int) -> bytes | None:
    """A body sent without Content-Length, read up to ``limit`` bytes (None beyond)."""
    parts, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        more = message.get("more_body", False)
    return b"".join(parts)


def _replay(body: bytes) -> Callable:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _respond(send: Callable, response: tuple) -> None:
    status, headers, body = response
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


def _spec() -> bytes:
    if STATE.spec_cache is None:
        models = STATE.models() if STATE.models is not None else None
        STATE.spec_cache = json.dumps(openapi_truth(STATE.spec(), models)).encode()
    return STATE.spec_cache


# -- logs of rejected requests -----------------------------------------------------------------------------
class RejectionLogFilter(logging.Filter):
    """BentoML logs every rejected request with ``logger.error(..., exc_info=True)``: a traceback whose
    exception text repeats the rejected values (a card-like id, an amount). A client error becomes one
    warning line with the request id, the path and the fields' names; a server error keeps its traceback,
    with the request id."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        rid = request_id.get()
        path = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        fields = _rejected_fields(exc)
        if fields is None:
            record.msg = f"request {rid}: {record.msg}"
            return True
        record.msg, record.args = "rejected request %s on %s: %s", (rid, path, fields)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _rejected_fields(exc: BaseException) -> str | None:
    """The names of the fields a client error rejected (None: not a client error)."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        locs = sorted({".".join(str(p) for p in e["loc"] if not isinstance(p, int)) or "body"
                       for e in exc.errors(include_input=False, include_url=False)})
        return f"invalid fields {', '.join(locs)} ({exc.error_count()} errors)"
    if isinstance(exc, BentoMLException) and int(exc.error_code) < 500:
        return f"{type(exc).__name__} ({int(exc.error_code)})"
    return None


def install_log_filter() -> None:
    for name in ("bentoml._internal.server.http_app", "bentoml.serve", "_bentoml_impl.server.app"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RejectionLogFilter) for f in logger.filters):
            logger.addFilter(RejectionLogFilter())


# -- the OpenAPI document ----------------------------------------------------------------------------------
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {
        "error": {"type": "string", "example": "1 validation error for Input"},
        "detail": {"nullable": True, "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "object", "required": ["loc", "msg"], "properties": {
                "type": {"type": "string"}, "loc": {"type": "array", "items": {
                    "oneOf": [{"type": "string"}, {"type": "integer"}]}},
                "msg": {"type": "string"}, "url": {"type": "string"}}}},
        ]},
        "request_id": {"type": "string", "nullable": True},
    },
}
_ERRORS = {
    "400": "Invalid input: `detail` lists each rejected field (`loc`) and the reason (`msg`).",
    "401": "Missing or invalid bearer token (`WWW-Authenticate: Bearer`).",
    "403": "Not allowed: the scoring token on an admin route, admin routes disabled (no FRAUD_ADMIN_TOKEN), "
           "or a non-loopback client while no FRAUD_API_TOKEN is set.",
    "413": "Request body larger than FRAUD_MAX_BODY_BYTES (default 4 MiB).",
    "415": "Content-Type is not application/json.",
    "503": "No champion model loaded, or the online store is unreachable under the fail-closed policy.",
}


def openapi_truth(spec: dict, models: dict[str, tuple[Any, Any]] | None = None) -> dict:
    """BentoML's OpenAPI document, completed: bearer security on the guarded operations, the error answers
    they give, and each operation's request and response bodies as Pydantic describes them (``models``:
    route -> input and output model), in OpenAPI 3.0's form. BentoML's inline copies drop the second
    option of an ``anyOf`` (an integer id) and every ``null`` (a nullable field)."""
    spec = json.loads(json.dumps(spec))
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for route, (in_model, out_model) in (models or {}).items():
        op = spec.get("paths", {}).get(route, {}).get("post")
        if op is None:
            continue
        body_schema = _model_schema(in_model, schemas)
        op["requestBody"] = {"required": bool(body_schema.get("required")),
                             "content": {"application/json": {"schema": body_schema}}}
        out_schema = _model_schema(out_model, schemas)
        op["responses"]["200"]["content"] = {"application/json": {"schema": out_schema}}
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "FRAUD_API_TOKEN for the scoring routes, FRAUD_ADMIN_TOKEN for /reload (and scoring)."}
    components.setdefault("schemas", {})["ErrorResponse"] = _ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in spec.get("paths", {}).items():
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            continue
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            op["security"] = [{"bearerAuth": []}]
            responses = op["responses"]
            for code, text in _ERRORS.items():
                responses[code] = {"description": text, "content": {"application/json": {"schema": ref}}}
            responses.pop("500", None)
            responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                                                "description": "Bearer"}}
    return _nullable(spec)


def _model_schema(model: Any, schemas: dict) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    return schema


def _nullable(node: Any) -> Any:
    """``anyOf: [X, {type: null}]`` (Pydantic's JSON Schema) as OpenAPI 3.0's ``X + nullable: true``, and
    ``examples: [x]`` as ``example: x``."""
    if isinstance(node, list):
        return [_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            node.pop(key)
            if len(rest) == 1 and "$ref" not in rest[0]:
                node = {**rest[0], **node}
            else:
                node[key] = rest
            node["nullable"] = True
    node = {k: _nullable(v) for k, v in node.items()}
    examples = node.get("examples")
    if isinstance(examples, list) and examples and "example" not in node:  # OpenAPI 3.0: one example
        node["example"] = node.pop("examples")[0]
    return node
