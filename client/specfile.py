"""Reading a job spec file the way ``baton submit`` does."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def read_spec(path: str) -> str:
    """The YAML text of the spec at ``path`` (``-`` for stdin).

    A relative ``workdir`` means relative to the spec file's directory (so a
    spec can sit beside the code it runs, wherever it is submitted from): it
    is made absolute before the spec is sent. Anything else is sent as written;
    the conductor validates it.
    """
    if path == "-":
        return sys.stdin.read()
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # the conductor says what is wrong with it
    workdir = data.get("workdir") if isinstance(data, dict) else None
    if isinstance(workdir, str) and workdir and not Path(workdir).expanduser().is_absolute():
        data["workdir"] = str((Path(path).parent / workdir).resolve())
        return yaml.safe_dump(data, sort_keys=False)
    return text
