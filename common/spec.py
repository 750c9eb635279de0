"""The job spec: parsed from YAML or protobuf, validated once, turned into a JobSpec.

Both services and the command line use this model, so a spec means the same
everywhere. Validation errors name the field at fault (``spec.steps[1].command``).
"""

from __future__ import annotations

import difflib
import re
import signal as _signal
import typing
from typing import Any

import yaml
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from baton.common.durations import parse_duration, seconds_of
from baton.common.errors import FieldViolation, InvalidArgument, clip, invalid_field, quote
from baton.common.limits import MAX_COMMAND_BYTES, MAX_ENV_BYTES, MAX_ENV_VARS, MAX_SPEC_BYTES
from baton.common.names import name_problem
from baton.v1 import job_pb2

DEFAULT_PAUSE_GRACE = 30.0
DEFAULT_EXECUTOR = "local"
MAX_RETRIES = 100
# What the JobSpec message's fields hold: a spec that validates must also encode.
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1
# Far past any machine, and a value every double and every engine takes.
MAX_CPUS = 1_000_000.0
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def _check_name(value: str) -> str:
    problem = name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc) or "not a duration") from None


def signal_name(value: str | int) -> str:
    """Normalise "TERM", "SIGTERM" or 15 to "SIGTERM"; ValueError if unknown."""
    try:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return _signal.Signals(int(value)).name
        text = str(value).upper()
        return _signal.Signals[text if text.startswith("SIG") else "SIG" + text].name
    except (KeyError, ValueError):
        raise ValueError(f"{quote(value)} is not a signal name such as SIGTERM or SIGUSR1") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepModel(_Strict):
    name: str
    command: str

    _name = field_validator("name")(_check_name)

    @field_validator("command")
    @classmethod
    def _command(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class PauseModel(_Strict):
    signal: str = "SIGTERM"
    grace: float = DEFAULT_PAUSE_GRACE

    @field_validator("signal", mode="before")
    @classmethod
    def _signal(cls, v: Any) -> str:
        return signal_name(v)

    _grace = field_validator("grace", mode="before")(lambda v: _duration(v))


def parse_size(v: Any) -> int:
    """Bytes in ``v``: an int, or a size such as 512M, 4G (10**9) or 4Gi (2**30).
    Raises ValueError.

    One reading of sizes for the spec's ``resources.memory`` and
    ``max_log_bytes`` and the conductor's ``--capacity memory=``, so all mean
    the same bytes.
    """
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if not isinstance(v, str | float) or isinstance(v, bool):
        raise ValueError("expected a size such as 512M or 4Gi")
    m = _SIZE.fullmatch(str(v).strip()[:64])
    if not m:
        raise ValueError(f"{quote(v)} is not a size such as 512M or 4Gi")
    size = float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]
    if not size <= MAX_INT64:  # also false for inf: a size past int64 fits no message
        raise ValueError(f"must be at most {MAX_INT64} bytes")
    return int(size)


class ResourcesModel(_Strict):
    cpus: float = Field(default=0, ge=0, le=MAX_CPUS, allow_inf_nan=False)
    memory: int = Field(default=0, ge=0, le=MAX_INT64, description="bytes")
    gpus: int = Field(default=0, ge=0, le=MAX_INT32)

    _memory = field_validator("memory", mode="before")(lambda v: parse_size(v))


class SpecModel(_Strict):
    """A validated job spec."""

    name: str
    project: str = "default"
    group: str = "default"
    command: str | None = None
    steps: list[StepModel] | None = None
    workdir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # Variable name -> the name of a secret the conductor holds (never a value).
    secret_env: dict[str, str] = Field(default_factory=dict)
    max_duration: float | None = None
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    pause: PauseModel = Field(default_factory=PauseModel)
    executor: str = DEFAULT_EXECUTOR
    resources: ResourcesModel = Field(default_factory=ResourcesModel)
    # output.log is kept to about this many bytes, from the end (None: unbounded).
    max_log_bytes: int | None = Field(default=None, gt=0, le=MAX_INT64)

    @field_validator("max_log_bytes", mode="before")
    @classmethod
    def _max_log_bytes(cls, v: Any) -> int | None:
        return None if v is None else parse_size(v)

    _names = field_validator("name", "project", "group")(_check_name)

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, v: Any) -> float | None:
        if v is None:
            return None
        seconds = _duration(v)
        if seconds <= 0:
            raise ValueError("must be positive")
        return seconds

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of variable names to values")
        out: dict[str, str] = {}
        for key, value in v.items():
            if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
                raise ValueError(f"{quote(key)} is not a valid environment variable name")
            if key.startswith("BATON_"):
                raise ValueError(f"{quote(key)}: BATON_* variables are set by Baton")
            if isinstance(value, dict | list) or value is None:
                raise ValueError(f"{key}: value must be a string or number")
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    @field_validator("secret_env", mode="before")
    @classmethod
    def _secret_env(cls, v: Any) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of variable names to secret names")
        out: dict[str, str] = {}
        for key, name in v.items():
            if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("BATON_"):
                raise ValueError(f"{key!r}: BATON_* variables are set by Baton")
            problem = name_problem(name) if isinstance(name, str) else "must be a secret's name"
            if problem:
                raise ValueError(f"{key}: {problem}")
            out[key] = name
        return out

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        # `command:` with nothing after it is YAML's null: an empty command, not a missing one.
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError("must not be empty")
        return v

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        return _check_name(v)

    @model_validator(mode="after")
    def _command_or_steps(self) -> SpecModel:
        if (self.command is None) == (not self.steps):
            raise ValueError("give exactly one of 'command' and 'steps'")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"{both[0]} is in both env and secret_env: give it in one")
        if self.steps:
            seen: set[str] = set()
            for step in self.steps:
                if step.name in seen:
                    raise ValueError(f"step name {step.name!r} is used twice")
                seen.add(step.name)
        return self

    def effective_steps(self) -> list[StepModel]:
        """The steps to run: ``steps``, or one step named "main" for ``command``."""
        if self.steps:
            return list(self.steps)
        assert self.command is not None
        return [StepModel(name="main", command=self.command)]


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the spec allows where ``loc`` (an error's path, its last part the key) stands."""
    model: Any = SpecModel
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an item of a list: the list's element model follows
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        # Unwrap list[X], X | None down to a model class.
        while not (isinstance(model, type) and issubclass(model, BaseModel)):
            inner = [a for a in typing.get_args(model) if a is not type(None)]
            if not inner:
                return []
            model = inner[0]
    return list(model.model_fields)


# Violations reported for one spec: enough to fix it, never a reply the size of the input.
_MAX_VIOLATIONS = 20


def _violations(exc: ValidationError, prefix: str) -> InvalidArgument:
    out: list[FieldViolation] = []
    for err in exc.errors(include_url=False, include_input=False)[:_MAX_VIOLATIONS]:
        path = prefix
        for part in err["loc"]:
            # A key is input: a path quotes at most a few dozen characters of it.
            path += f"[{part}]" if isinstance(part, int) else f".{clip(str(part), 64)}"
        msg = clip(err["msg"].removeprefix("Value error, "), 300)
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            near = difflib.get_close_matches(str(err["loc"][-1])[:64], _fields_at(tuple(err["loc"])), n=1)
            if near:
                msg += f"; did you mean {near[0]!r}?"
        out.append(FieldViolation(path, msg))
    summary = "; ".join(f"{v.field}: {v.description}" for v in out)
    return InvalidArgument(message=f"invalid job spec: {summary}", field_violations=out)


def too_large(field: str, what: str, limit: int, reason: str) -> InvalidArgument:
    """A refusal naming the limit: the field (BadRequest), the reason (ErrorInfo) and the number."""
    err = invalid_field(field, f"{what}; the limit is {limit}", reason=reason)
    err.metadata["limit"] = str(limit)
    return err


def check_limits(model: SpecModel, prefix: str = "spec") -> None:
    """Refuse a valid spec past Baton's size limits (``common.limits``); InvalidArgument naming each."""
    if len(model.env) > MAX_ENV_VARS:
        raise too_large(
            f"{prefix}.env", f"has {len(model.env)} variables", MAX_ENV_VARS, "ENV_TOO_MANY_VARIABLES"
        )
    env_bytes = sum(len(k.encode()) + len(v.encode("utf-8", "surrogatepass")) for k, v in model.env.items())
    if env_bytes > MAX_ENV_BYTES:
        raise too_large(f"{prefix}.env", f"holds {env_bytes} bytes", MAX_ENV_BYTES, "ENV_TOO_LARGE")
    commands = [("command", model.command)] if model.command is not None else []
    commands += [(f"steps[{i}].command", step.command) for i, step in enumerate(model.steps or [])]
    for field, command in commands:
        size = len(command.encode("utf-8", "surrogatepass"))
        if size > MAX_COMMAND_BYTES:
            raise too_large(f"{prefix}.{field}", f"is {size} bytes", MAX_COMMAND_BYTES, "COMMAND_TOO_LARGE")
    size = to_proto(model).ByteSize()
    if size > MAX_SPEC_BYTES:
        raise too_large(prefix, f"is {size} bytes encoded", MAX_SPEC_BYTES, "SPEC_TOO_LARGE")


def from_mapping(data: Any, prefix: str = "spec") -> SpecModel:
    """Validate a mapping (from YAML or JSON), limits included. Raises InvalidArgument."""
    if not isinstance(data, dict):
        raise invalid_field(prefix, "must be a mapping with at least 'name' and 'command'")
    try:
        model = SpecModel.model_validate(data)
    except ValidationError as exc:
        raise _violations(exc, prefix) from None
    except RecursionError:
        raise invalid_field(prefix, "is nested too deeply") from None
    check_limits(model, prefix)
    return model


def from_yaml(text: str) -> SpecModel:
    """Parse and validate a YAML spec. Raises InvalidArgument naming the field."""
    # Before parsing: the YAML of a spec past the limit is never read at all.
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise too_large("spec_yaml", "is too large", MAX_SPEC_BYTES, "SPEC_TOO_LARGE")
    try:
        # libyaml when present: ten times faster on every submission.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise invalid_field("spec_yaml", f"not valid YAML{where}: {clip(str(problem), 200)}") from None
    except RecursionError:
        raise invalid_field("spec_yaml", "is nested too deeply") from None
    return from_mapping(data)


def from_proto(spec: job_pb2.JobSpec) -> SpecModel:
    """Validate a JobSpec message. Raises InvalidArgument naming the field."""
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        raise too_large("spec", f"is {size} bytes encoded", MAX_SPEC_BYTES, "SPEC_TOO_LARGE")
    # Durations the wire allows but the Duration rules do not would fail the JSON mapping below.
    if spec.HasField("max_duration"):
        seconds_of(spec.max_duration, "spec.max_duration")
    if spec.pause.HasField("grace"):
        seconds_of(spec.pause.grace, "spec.pause.grace")
    try:
        data = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    except (ValueError, json_format.Error):
        raise invalid_field("spec", "cannot be read as a job spec") from None
    resources = data.get("resources")
    if isinstance(resources, dict) and "memory_bytes" in resources:
        resources["memory"] = int(resources.pop("memory_bytes"))
    for key in ("command", "workdir"):
        if data.get(key) == "":
            data.pop(key)
    if not data.get("steps"):
        data.pop("steps", None)
        data.setdefault("command", spec.command)
    if not data.get("executor"):
        data.pop("executor", None)
    return from_mapping(data)


def _nanoseconds(seconds: float) -> int:
    return round(seconds * 1e9)


def to_proto(model: SpecModel) -> job_pb2.JobSpec:
    """The normalised JobSpec message for a validated spec.

    Filled in place rather than from nested messages built and copied in:
    it runs twice on every submission (``check_limits``, then the conductor).
    """
    spec = job_pb2.JobSpec(
        name=model.name,
        project=model.project,
        group=model.group,
        command=model.command or "",
        workdir=model.workdir or "",
        retries=model.retries,
        executor=model.executor,
    )
    if model.steps:
        spec.steps.extend([job_pb2.Step(name=s.name, command=s.command) for s in model.steps])
    if model.env:
        spec.env.update(model.env)
    if model.secret_env:
        spec.secret_env.update(model.secret_env)
    spec.pause.signal = model.pause.signal
    spec.pause.grace.FromNanoseconds(_nanoseconds(model.pause.grace))
    resources = spec.resources
    resources.SetInParent()
    resources.cpus = model.resources.cpus
    resources.memory_bytes = model.resources.memory
    resources.gpus = model.resources.gpus
    if model.max_duration is not None:
        spec.max_duration.FromNanoseconds(_nanoseconds(model.max_duration))
    if model.max_log_bytes is not None:
        spec.max_log_bytes = model.max_log_bytes
    return spec
