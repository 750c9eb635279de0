"""The secrets the conductor holds for jobs (``--secrets-dir``): one file per secret.

A spec's ``secret_env`` names secrets, never values. The value of each is read
from its file, byte for byte, when a step launches, and goes into that step's
environment only: no reply, event, status file, log line or error carries it
(messages here name secrets, never quote them). The directory and each file
must be private to the conductor's user (no group or other permission bits),
checked at start and again on every read.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from baton.common.errors import invalid_field
from baton.common.names import name_problem
from baton.conductor.executors.base import LaunchError


class SecretsRefused(RuntimeError):
    """The secrets directory is not private (or not a directory): the conductor does not start."""


def _private(st: os.stat_result) -> bool:
    return st.st_mode & 0o077 == 0


class SecretStore:
    """Names to values, from one private directory; without one, no secret exists."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @classmethod
    def open(cls, directory: Path | None) -> SecretStore:
        """Check the directory and its files (blocking). Raises SecretsRefused."""
        if directory is None:
            return cls(None)
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise SecretsRefused(f"--secrets-dir {directory}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SecretsRefused(f"--secrets-dir {directory}: not a directory")
        if not _private(st):
            mode = stat.S_IMODE(st.st_mode)
            raise SecretsRefused(
                f"--secrets-dir {directory}: group or others may read it (mode {mode:o}); chmod 700 it"
            )
        for entry in os.scandir(directory):
            if entry.name.startswith("."):
                continue
            est = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(est.st_mode):
                raise SecretsRefused(f"--secrets-dir: {entry.name} is not a regular file")
            if not _private(est):
                raise SecretsRefused(
                    f"--secrets-dir: group or others may read {entry.name} "
                    f"(mode {stat.S_IMODE(est.st_mode):o}); chmod 600 it"
                )
        return cls(directory)

    async def check(self, secret_env: Mapping[str, str]) -> None:
        """InvalidArgument naming ``spec.secret_env.VAR`` for a secret this conductor does not hold."""
        for var, name in sorted(secret_env.items()):
            if not await asyncio.to_thread(self._exists, name):
                raise invalid_field(
                    f"spec.secret_env.{var}",
                    f"this conductor holds no secret named {name!r}",
                    "SECRET_NOT_FOUND",
                )

    def _exists(self, name: str) -> bool:
        if self.directory is None or name_problem(name) or name.startswith("."):
            return False
        try:
            return stat.S_ISREG(os.stat(self.directory / name, follow_symlinks=False).st_mode)
        except OSError:
            return False

    async def values(self, secret_env: Mapping[str, str]) -> dict[str, str]:
        """Variable -> value for a launch. Raises LaunchError (naming the secret) if one is gone."""
        if not secret_env:
            return {}
        return await asyncio.to_thread(self._read_all, secret_env)

    def _read_all(self, secret_env: Mapping[str, str]) -> dict[str, str]:
        return {var: self._read(name) for var, name in secret_env.items()}

    def _read(self, name: str) -> str:
        if not self._exists(name):
            raise LaunchError(f"the secret {name!r} is no longer held by the conductor")
        assert self.directory is not None
        fd = os.open(self.directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not _private(os.fstat(fd)):
                raise LaunchError(f"the secret {name!r} is readable by group or others: not used")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if b"\0" in data:
            raise LaunchError(f"the secret {name!r} holds a NUL byte, which no environment variable can")
        # surrogateescape: every byte comes back out as written, UTF-8 or not.
        return data.decode("utf-8", errors="surrogateescape")
