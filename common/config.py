"""Settings both services share: where they listen, the tree they serve, auth."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from common.rpc import is_loopback


def default_home() -> Path:
    """``$XDG_STATE_HOME/baton``, else ``~/.local/state/baton``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "baton"


class ServiceConfig(BaseModel):
    """A service's address, its home (and the two trees under it), and its token."""

    listen: str
    home: Path = Field(default_factory=default_home)
    # <home>/status and <home>/checkpoints unless given.
    status_dir: Path | None = None
    checkpoints_dir: Path | None = None
    # Seconds of quiet after which a log or watch stream sends a heartbeat.
    feed_heartbeat: float = Field(default=5.0, gt=0)
    token_file: Path | None = None
    insecure: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> ServiceConfig:
        self.home = self.home.expanduser().resolve()
        self.status_dir = (self.status_dir or self.home / "status").expanduser().resolve()
        self.checkpoints_dir = (self.checkpoints_dir or self.home / "checkpoints").expanduser().resolve()
        if not is_loopback(self.listen) and self.token_file is None and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.listen} without a token: give --token-file, "
                "or --insecure to accept unauthenticated calls from the network"
            )
        return self

    def token(self) -> str | None:
        """The bearer token clients must send, or None for no auth."""
        if self.token_file is None:
            return None
        token = self.token_file.read_text().strip()
        if not token:
            raise ValueError(f"{self.token_file} is empty")
        return token
