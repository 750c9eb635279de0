"""The viewer's settings, from flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from common.rpc import is_loopback
from conductor.config import default_home


class ViewerConfig(BaseModel):
    listen: str = "127.0.0.1:50052"
    home: Path = Field(default_factory=default_home)
    status_dir: Path | None = None
    checkpoints_dir: Path | None = None
    watch: Literal["inotify", "poll"] = "inotify"
    poll_interval: float = Field(default=2.0, gt=0)
    reconcile_interval: float = Field(default=300.0, gt=0)
    stale_after: float = Field(default=300.0, gt=0)
    feed_heartbeat: float = Field(default=5.0, gt=0)
    token_file: Path | None = None
    insecure: bool = False
    log_level: str = "info"

    @model_validator(mode="after")
    def _fill(self) -> ViewerConfig:
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
        if self.token_file is None:
            return None
        token = self.token_file.read_text().strip()
        if not token:
            raise ValueError(f"{self.token_file} is empty")
        return token
