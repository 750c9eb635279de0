"""Settings both services share: where they listen, the tree they serve, auth."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
from pydantic import BaseModel, Field, model_validator

from baton.common.auth import Authenticator
from baton.common.metrics import split_address
from baton.common.rpc import is_loopback
from baton.common.serving import DEFAULT_SHUTDOWN_GRACE


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
    # Named tokens and certificate identities with their roles (common.auth).
    token_file: Path | None = None
    # TLS: the server's certificate chain and key (PEM), and with
    # tls_client_ca_file, mutual TLS: clients need a certificate this CA
    # signed, whose identity the token file maps to a role.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    insecure: bool = False
    log_level: str = "info"
    # Plaintext listeners beside the main one, off unless given: Prometheus
    # metrics over HTTP (/metrics), and gRPC health only (kubelet's probes
    # speak plaintext). Neither carries job data or accepts a token.
    metrics_listen: str | None = None
    health_listen: str | None = None
    # On SIGTERM: seconds that calls in flight get before the process exits
    # (keep it under the pod's terminationGracePeriodSeconds).
    shutdown_grace: float = Field(default=DEFAULT_SHUTDOWN_GRACE, ge=0)

    @model_validator(mode="after")
    def _fill(self) -> ServiceConfig:
        self.home = self.home.expanduser().resolve()
        self.status_dir = (self.status_dir or self.home / "status").expanduser().resolve()
        self.checkpoints_dir = (self.checkpoints_dir or self.home / "checkpoints").expanduser().resolve()
        side = {"--metrics-listen": self.metrics_listen, "--health-listen": self.health_listen}
        for flag, address in side.items():
            if address is not None:
                split_address(address, flag)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        if self.tls_client_ca_file is not None and self.token_file is None:
            # A CA's signature says who a caller is, not what it may do.
            raise ValueError(
                "--tls-client-ca-file needs --token-file mapping certificate subjects or SANs to roles"
            )
        # Client certificates checked against a CA authenticate callers as a token does.
        authenticated = self.token_file is not None or self.tls_client_ca_file is not None
        if not is_loopback(self.listen) and not authenticated and not self.insecure:
            raise ValueError(
                f"refusing to listen on {self.listen} without authentication: give --token-file "
                "or --tls-client-ca-file, or --insecure to accept unauthenticated calls from the network"
            )
        return self

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials to serve with (reads the PEM files), or None for plaintext."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        client_ca = self.tls_client_ca_file.read_bytes() if self.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.tls_key_file.read_bytes(), self.tls_cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )

    def authenticator(self) -> Authenticator | None:
        """The token file's checker (reads the file: call it off the event loop), or None for no auth."""
        if self.token_file is None:
            return None
        return Authenticator.from_file(self.token_file)

    def exposure_warnings(self) -> list[tuple[str, str]]:
        """(event, detail) for settings that expose the service: logged at start."""
        if is_loopback(self.listen):
            return []
        warnings = []
        if self.insecure:
            warnings.append(("insecure_listen", f"{self.listen} accepts calls from the network with no auth"))
        if self.token_file is not None and self.tls_cert_file is None:
            warnings.append(
                ("plaintext_token", f"{self.listen} takes bearer tokens without TLS: the wire shows them")
            )
        return warnings
