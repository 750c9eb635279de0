"""Who is calling, and what they may do: named tokens and certificate identities with roles.

One file (``--token-file``) for both services, reloaded on SIGHUP::

    tokens:
      - name: alice          # Job.submitted_by and the audit log's "who"
        role: operator       # reader | operator | admin
        projects: [ml]       # operator only; omitted = every project
        sha256: <64 hex>     # SHA-256 of the bearer token, never the token
      - name: ci
        role: reader
        subject: CN=ci,O=example   # a client certificate's subject (mutual TLS) ...
      - name: batch
        role: operator
        san: batch.example.org     # ... or one of its subject alternative names

A file holding one bare line (the format before roles) is one admin token,
read with a warning. The interceptor here answers UNAUTHENTICATED to a call
with no credentials or credentials nobody was given, PERMISSION_DENIED to a
known caller whose role is too low; project limits are checked where the
project is known (``check_project``, called by the conductor's servicer).
Health and reflection stay open, for load balancers and tooling.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import hashlib
import hmac
import inspect
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
import yaml

from baton.common.errors import BatonError, PermissionDenied, Unauthenticated, grpc_status

log = structlog.get_logger(__name__)
audit_log = structlog.get_logger("baton.audit")


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""

    READER = 1
    OPERATOR = 2
    ADMIN = 3


_C = "/baton.v1.Conductor/"
_V = "/baton.v1.Viewer/"
# The least role each RPC needs. Every RPC of both services has a line here
# (tests/test_roles.py checks it against the services' descriptors); one
# without is refused to everybody.
RULES: dict[str, Role] = {
    _C + "GetJob": Role.READER,
    _C + "ListJobs": Role.READER,
    _C + "StreamLogs": Role.READER,
    _C + "WatchJobs": Role.READER,
    _C + "GetConductorInfo": Role.READER,
    _C + "GetJobHealth": Role.READER,
    _C + "GetJobStep": Role.READER,
    _C + "SubmitJob": Role.OPERATOR,
    _C + "PauseJob": Role.OPERATOR,
    _C + "ResumeJob": Role.OPERATOR,
    _C + "CancelJob": Role.OPERATOR,
    _C + "DeleteJob": Role.ADMIN,
    _C + "DeleteCheckpoints": Role.ADMIN,
    _C + "ClearJobs": Role.ADMIN,
    **{
        _V + name: Role.READER
        for name in (
            "ListJobs", "GetJob", "ListJobRuns", "ListProjects", "ListRunningJobs", "ListRecentJobs",
            "GetDashboardStats", "ListCheckpoints", "GetCheckpoint", "GetLatestCheckpoint",
            "GetCheckpointConfig", "GetCheckpointJobSpec", "GetCheckpointStats", "ReadLog", "TailLog",
            "StreamLogs", "StreamLog",
        )
    },
}  # fmt: skip
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# ErrorInfo reasons of refused calls.
CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
CREDENTIALS_UNKNOWN = "CREDENTIALS_UNKNOWN"
ROLE_TOO_LOW = "ROLE_TOO_LOW"
PROJECT_NOT_ALLOWED = "PROJECT_NOT_ALLOWED"
NO_RULE = "NO_RULE"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:=,+ -]{0,127}")


class CredentialsError(ValueError):
    """The token file cannot be used (the service refuses to start, or keeps the old one on reload)."""


@dataclass(frozen=True)
class Identity:
    """A known caller: a token's or a certificate's entry in the token file."""

    name: str
    role: Role
    # The projects an operator may act on; None for every project.
    projects: frozenset[str] | None = None

    def may_act_on(self, project: str) -> bool:
        return self.role >= Role.ADMIN or self.projects is None or project in self.projects


@dataclass(frozen=True)
class Credentials:
    """A parsed token file: token hashes and certificate identities, each to an Identity."""

    tokens: tuple[tuple[bytes, Identity], ...] = ()
    subjects: dict[str, Identity] = field(default_factory=dict)
    sans: dict[str, Identity] = field(default_factory=dict)
    legacy: bool = False

    def by_token(self, token: str) -> Identity | None:
        """The identity whose hash matches ``token``: every entry compared, each in constant time."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, identity in self.tokens:
            if hmac.compare_digest(digest, known) and found is None:
                found = identity
        return found

    def by_certificate(self, subject: str, sans: list[str]) -> Identity | None:
        """The identity a verified client certificate maps to (its subject first, then its SANs)."""
        if subject and subject in self.subjects:
            return self.subjects[subject]
        for san in sans:
            if san in self.sans:
                return self.sans[san]
        return None


def hash_token(token: str) -> str:
    """The ``sha256:`` value of a token file entry for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_credentials(path: Path) -> Credentials:
    """Parse a token file (blocking: call it off the event loop). Raises CredentialsError."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(
            f"cannot read the token file {path}: {getattr(exc, 'strerror', exc)}"
        ) from None
    return parse_credentials(text, str(path))


def parse_credentials(text: str, where: str) -> Credentials:
    """A token file's text as Credentials; messages never quote a token or a hash."""
    stripped = text.strip()
    if not stripped:
        raise CredentialsError(f"{where} is empty")
    if "\n" not in stripped and not stripped.startswith("tokens:"):
        # The one-line file from before roles: its token is the only one, with every right.
        digest = hashlib.sha256(stripped.encode()).digest()
        return Credentials(tokens=((digest, Identity("token", Role.ADMIN)),), legacy=True)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise CredentialsError(f"{where}: not valid YAML (see the README for the token file)") from None
    if not isinstance(data, dict) or set(data) != {"tokens"} or not isinstance(data["tokens"], list):
        raise CredentialsError(f"{where}: must be a mapping with one key, 'tokens', holding a list")
    tokens: list[tuple[bytes, Identity]] = []
    subjects: dict[str, Identity] = {}
    sans: dict[str, Identity] = {}
    names: set[str] = set()
    for i, entry in enumerate(data["tokens"]):
        at = f"{where}: tokens[{i}]"
        identity, kind, value = _entry(entry, at)
        if identity.name in names:
            raise CredentialsError(f"{at}: the name {identity.name!r} is used twice")
        names.add(identity.name)
        if kind == "sha256":
            tokens.append((bytes.fromhex(value), identity))
        else:
            table = subjects if kind == "subject" else sans
            if value in table:
                raise CredentialsError(f"{at}: that {kind} is given twice")
            table[value] = identity
    return Credentials(tuple(tokens), subjects, sans)


def _entry(entry: Any, at: str) -> tuple[Identity, str, str]:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{at}: must be a mapping with name, role and one of sha256, subject, san")
    unknown = set(entry) - {"name", "role", "projects", "sha256", "subject", "san"}
    if unknown:
        raise CredentialsError(f"{at}: unknown keys {sorted(map(str, unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CredentialsError(f"{at}: 'name' must be a short name (letters, digits, . _ - @)")
    role_text = entry.get("role")
    try:
        role = Role[str(role_text).upper()]
    except KeyError:
        raise CredentialsError(f"{at}: 'role' must be reader, operator or admin") from None
    projects = entry.get("projects")
    if projects is not None:
        if role is not Role.OPERATOR:
            raise CredentialsError(f"{at}: 'projects' limits an operator only")
        if not isinstance(projects, list) or not all(isinstance(p, str) and p for p in projects):
            raise CredentialsError(f"{at}: 'projects' must be a list of project names")
    keys = [k for k in ("sha256", "subject", "san") if k in entry]
    if len(keys) != 1:
        raise CredentialsError(f"{at}: give exactly one of sha256, subject and san")
    value = entry[keys[0]]
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"{at}: {keys[0]!r} must be a string")
    if keys[0] == "sha256":
        value = value.lower()
        if not _HEX64.fullmatch(value):
            # A bare token pasted here would otherwise be a credential that never matches.
            raise CredentialsError(f"{at}: 'sha256' must be 64 hex digits (`baton token hash`)")
    return Identity(name, role, frozenset(projects) if projects is not None else None), keys[0], value


# The caller of the RPC being served (None when the service has no token file).
CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("baton_caller", default=None)


def caller_name() -> str:
    """The name of the current RPC's caller, "" when the service authenticates nobody."""
    caller = CALLER.get()
    return caller.name if caller is not None else ""


def check_project(project: str) -> None:
    """PermissionDenied unless the current caller may act on jobs of ``project``."""
    caller = CALLER.get()
    if caller is not None and not caller.may_act_on(project):
        raise PermissionDenied(
            f"{caller.name} may not act on jobs of project {project!r}", reason=PROJECT_NOT_ALLOWED
        )


def limited_to_projects() -> bool:
    """True when the current caller's rights depend on a job's project."""
    caller = CALLER.get()
    return caller is not None and caller.role < Role.ADMIN and caller.projects is not None


def _peer_certificate(context: grpc.aio.ServicerContext) -> tuple[str, list[str]]:
    """The subject and SANs of the caller's verified certificate (empty without one)."""
    props = context.auth_context()
    subject = b"".join(props.get("x509_subject", [])).decode(errors="replace")
    sans = [v.decode(errors="replace") for v in props.get("x509_subject_alternative_name", [])]
    return subject, sans


class Authenticator(grpc.aio.ServerInterceptor):
    """Names the caller of every call, checks the method's rule, and writes the audit log.

    The token file is read at start and again on ``reload`` (SIGHUP); a call
    keeps the identity it started with, so a reload drops no stream.
    """

    def __init__(self, path: Path, credentials: Credentials) -> None:
        self.path = path
        self._credentials = credentials

    @classmethod
    def from_file(cls, path: Path) -> Authenticator:
        credentials = load_credentials(path)
        if credentials.legacy:
            log.warning(
                "token_file_legacy",
                path=str(path),
                detail="one bare token: read as one admin token; give named tokens with roles (README)",
            )
        return cls(path, credentials)

    def reload(self) -> bool:
        """Read the token file again (blocking); a bad file keeps the previous one."""
        try:
            credentials = load_credentials(self.path)
        except CredentialsError as exc:
            log.error("token_file_reload_failed", error=str(exc))
            return False
        self._credentials = credentials
        log.info(
            "token_file_reloaded",
            tokens=len(credentials.tokens),
            certificates=len(credentials.subjects) + len(credentials.sans),
        )
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        method = details.method
        sent = dict(details.invocation_metadata or ()).get("authorization")
        credentials = self._credentials  # the table this call is judged by, whatever reloads follow

        def judge(context: grpc.aio.ServicerContext) -> tuple[Identity | None, BatonError | None]:
            return _judge(method, sent, credentials, context)

        return _wrap(handler, method, judge)


def _judge(
    method: str, sent: str | bytes | None, credentials: Credentials, context: grpc.aio.ServicerContext
) -> tuple[Identity | None, BatonError | None]:
    if isinstance(sent, bytes):
        sent = sent.decode(errors="replace")
    identity = None
    if sent is not None:
        # A token sent decides, even over a certificate: the caller chose it.
        scheme, _, token = sent.partition(" ")
        if scheme != "Bearer" or not token:
            return None, Unauthenticated(
                "the authorization metadata must be 'Bearer <token>'", reason=CREDENTIALS_UNKNOWN
            )
        identity = credentials.by_token(token)
        if identity is None:
            return None, Unauthenticated("the bearer token is not known", reason=CREDENTIALS_UNKNOWN)
    else:
        subject, sans = _peer_certificate(context)
        if subject or sans:
            identity = credentials.by_certificate(subject, sans)
            if identity is None:
                return None, Unauthenticated(
                    "the client certificate is not mapped to a role in the token file",
                    reason=CREDENTIALS_UNKNOWN,
                )
        else:
            return None, Unauthenticated(
                "send 'authorization: Bearer <token>' (or a client certificate)", reason=CREDENTIALS_MISSING
            )
    needed = RULES.get(method)
    if needed is None:
        return identity, PermissionDenied(f"{method} has no access rule", reason=NO_RULE)
    if identity.role < needed:
        return identity, PermissionDenied(
            f"{identity.name} ({identity.role.name.lower()}) may not call {method.rsplit('/', 1)[-1]}: "
            f"it needs the {needed.name.lower()} role",
            reason=ROLE_TOO_LOW,
        )
    return identity, None


def _wrap(
    handler: grpc.RpcMethodHandler,
    method: str,
    judge: Callable[[grpc.aio.ServicerContext], tuple[Identity | None, BatonError | None]],
) -> grpc.RpcMethodHandler:
    """``handler`` with the check first, the caller bound, and mutating calls audited."""
    mutating = RULES.get(method, Role.ADMIN) >= Role.OPERATOR
    what = method.rsplit("/", 1)[-1]

    async def refuse(
        context: grpc.aio.ServicerContext, identity: Identity | None, err: BatonError, request: Any
    ) -> None:
        if mutating:
            _audit(identity.name if identity else "anonymous", what, request, None, err)
        status = grpc_status(err)
        await context.abort(status.code, status.details, status.trailing_metadata)

    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            identity, refusal = judge(context)
            if refusal is not None or identity is None:
                assert refusal is not None
                return await refuse(context, identity, refusal, request)
            CALLER.set(identity)
            structlog.contextvars.bind_contextvars(caller=identity.name)
            if not mutating:
                return await behavior(request, context)
            reply = None
            try:
                reply = await behavior(request, context)
                return reply
            finally:
                _audit(identity.name, what, request, reply, context)

        return handler._replace(unary_unary=unary)
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        stream_behavior = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            identity, refusal = judge(context)
            if refusal is not None or identity is None:
                assert refusal is not None
                await refuse(context, identity, refusal, request)
                return
            CALLER.set(identity)
            structlog.contextvars.bind_contextvars(caller=identity.name)
            async for item in stream_behavior(request, context):
                yield item

        return handler._replace(unary_stream=stream)
    # No RPC of ours streams requests: such a method cannot be checked here, so nobody may call it.
    return _refused_handler(PermissionDenied(f"{method} cannot be authorized", reason=NO_RULE))


def _refused_handler(err: BatonError) -> grpc.RpcMethodHandler:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        status = grpc_status(err)
        await context.abort(status.code, status.details, status.trailing_metadata)

    return grpc.unary_unary_rpc_method_handler(handler)


def _audit(who: str, what: str, request: Any, reply: Any, outcome: Any) -> None:
    """One line per mutating call: who, what, which job, and how it ended."""
    if isinstance(outcome, BatonError):
        code: Any = outcome.code
    else:
        code = outcome.code() if hasattr(outcome, "code") else None
    job = getattr(request, "job_id", "") or getattr(reply, "id", "")
    fields: dict[str, Any] = {"who": who or "unknown", "what": what, "job": job}
    if not job and hasattr(request, "project"):
        # Calls on many jobs (ClearJobs, DeleteCheckpoints) name their filter instead.
        fields["target"] = "/".join(getattr(request, k, "") or "*" for k in ("project", "group", "name"))
    if getattr(request, "dry_run", False):
        fields["dry_run"] = True
    code_name = code.name if isinstance(code, grpc.StatusCode) else "OK"
    audit_log.info("audit", **fields, outcome=code_name)


@contextlib.contextmanager
def reload_on_sighup(reloaders: list[Callable[[], Awaitable[None]]]) -> Iterator[None]:
    """While inside, SIGHUP re-reads the token file of each service (on the running loop)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def reload_all() -> None:
        for reload in reloaders:
            await reload()

    def hup() -> None:
        task = loop.create_task(reload_all())
        tasks.add(task)  # held until done: a task nobody references may vanish
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
