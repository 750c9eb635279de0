"""The conductor's settings, from flags or ``BATON_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from common.rpc import is_loopback


def default_home() -> Path:
    """``$XDG_STATE_HOME/baton``, else ``~/.local/state/baton``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "baton"


class ConductorConfig(BaseModel):
    listen: str = "127.0.0.1:50051"
    home: Path = Field(default_factory=default_home)
    status_dir: Path | None = None
    checkpoints_dir: Path | None = None
    max_running: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    heartbeat: float = Field(default=30.0, gt=0)
    # Seconds of quiet after which a log or watch stream sends a heartbeat.
    feed_heartbeat: float = Field(default=5.0, gt=0)
    token_file: Path | None = None
    insecure: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> ConductorConfig:
        self.home = self.home.expanduser().resolve()
        if self.status_dir is None:
            self.status_dir = self.home / "status"
        if self.checkpoints_dir is None:
            self.checkpoints_dir = self.home / "checkpoints"
        self.status_dir = self.status_dir.expanduser().resolve()
        self.checkpoints_dir = self.checkpoints_dir.expanduser().resolve()
        if not is_loopback(self.listen) and self.token_file is None and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.listen} without a token: give --token-file, "
                "or --insecure to accept unauthenticated calls from the network"
            )
        return self

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        token = self.token_file.read_text().strip()
        if not token:
            raise ValueError(f"{self.token_file} is empty")
        return token
