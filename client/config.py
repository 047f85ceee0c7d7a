"""client.toml: where the frontends are, which fleet key to pin, and how patient to be.

```toml
[cluster]
frontends = ["127.0.0.1:40001", "127.0.0.1:40002"]   # tried in order, failover on UNAVAILABLE
ca = "/abs/pki/cluster-ca.pem"                        # CA of the frontends' TLS certificates
server_name = "localhost"                             # TLS name checked on those certificates
fleet_public_key = "/abs/fleet/fleet.pub"             # PEM: the pinned HPKE key of the HSM fleet
fleet_id = "hex of 16 bytes"                          # must match the key above
fleet_epoch = 1                                       # the epoch of that key (default 1)
fleet_root_key = "/abs/fleet/root.pub"                # PEM: the pinned fleet root key that signs
                                                      # announcements of rotated keys (optional)
opaque_context = "BKV-v1"                             # the fleet's OPAQUE context (optional:
                                                      # else the fleet's announced one)
# insecure = true                                     # plaintext gRPC: tests only

[client]                                              # optional, every field has a default
ksf = "default"            # "default" = Argon2id t=3 p=4 64 MiB; "fast" = t=1 p=1 256 KiB (WEAKER)
call_timeout_s = 15.0      # deadline of one RPC
connect_timeout_s = 1.0    # how long to wait for one frontend's connection before the next
overall_deadline_s = 30.0  # no retry starts later than this after the first try
enrollment_token = ""      # hex, when the operator requires one for logins
```

Relative paths are resolved against the file's folder.

>>> cfg = ClientConfig(frontends=("127.0.0.1:1",), ca="", server_name="localhost",
...                    fleet_public_key="", fleet_id="00" * 16, insecure=True)
>>> cfg.problems()
['cluster.fleet_public_key is required']
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.errors import ConfigError
from vault_common.toml_config import TomlReadError, read_toml, unknown_keys

if TYPE_CHECKING:
    from vault_protocol.envelope import FleetKey
    from vault_protocol.fleet import FleetRootKey
    from vault_protocol.ksf import Ksf

KSF_NAMES = ("default", "fast")
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5}$")


def ksf_named(name: str) -> Ksf:
    """The client KSF preset called `name`.

    "default": Argon2id t=3, p=4, m=64 MiB (RFC 9106's second recommended setting).
    "fast": Argon2id t=1, p=1, m=256 KiB — far cheaper to brute-force if a vault record ever
    leaked together with the OPRF key; for load tests only, never for real users.

    >>> ksf_named("fast").memory_kib
    256
    """
    from vault_protocol.ksf import Argon2idKsf

    if name == "default":
        return Argon2idKsf()
    if name == "fast":
        return Argon2idKsf(time_cost=1, lanes=1, memory_kib=256)
    raise ConfigError(f"ksf must be one of {', '.join(KSF_NAMES)}")


@dataclass(frozen=True)
class ClientConfig:
    """Validated contents of client.toml (see the module docstring for each field)."""

    frontends: tuple[str, ...]
    ca: str
    server_name: str
    fleet_public_key: str
    fleet_id: str
    insecure: bool = False
    fleet_epoch: int = 1
    fleet_root_key: str = ""  # "" = none pinned: the client cannot learn a rotated fleet key
    opaque_context: str | None = None  # None: the fleet's announced one, else "BKV-v1"
    ksf: str = "default"
    call_timeout_s: float = 15.0
    connect_timeout_s: float = 1.0
    overall_deadline_s: float = 30.0
    # Security: an enrollment token lets anyone claim this account id; keep it out of reprs.
    enrollment_token: str = field(default="", repr=False)
    source: str = ""  # the file this came from ("" when built from arguments)

    def problems(self) -> list[str]:
        """Every problem with this configuration (empty when it is usable)."""
        from vault_protocol.fleet import MAX_CONTEXT_BYTES, MAX_EPOCH

        out: list[str] = []
        if not self.frontends:
            out.append("cluster.frontends must list at least one host:port")
        for fe in self.frontends:
            if not isinstance(fe, str) or not _HOSTPORT.match(fe):
                out.append(f"cluster.frontends: {fe!r} is not host:port")
        if not self.insecure:
            if not self.ca:
                out.append("cluster.ca is required (or insecure = true, for tests only)")
            elif not os.path.isfile(self.ca):
                out.append(f"cluster.ca: no such file {self.ca}")
            if not self.server_name:
                out.append("cluster.server_name is required")
        if not self.fleet_public_key:
            out.append("cluster.fleet_public_key is required")
        elif not os.path.isfile(self.fleet_public_key):
            out.append(f"cluster.fleet_public_key: no such file {self.fleet_public_key}")
        if not re.fullmatch(r"[0-9a-fA-F]{32}", self.fleet_id or ""):
            out.append("cluster.fleet_id must be 32 hex digits")
        epoch = self.fleet_epoch
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_EPOCH:
            out.append(f"cluster.fleet_epoch must be an integer in 1..{MAX_EPOCH}")
        if self.fleet_root_key and not os.path.isfile(self.fleet_root_key):
            out.append(f"cluster.fleet_root_key: no such file {self.fleet_root_key}")
        if self.opaque_context is not None and (
            not isinstance(self.opaque_context, str)
            or len(self.opaque_context.encode("utf-8")) > MAX_CONTEXT_BYTES
        ):
            out.append(
                f"cluster.opaque_context must be a string of at most {MAX_CONTEXT_BYTES} bytes"
            )
        if self.ksf not in KSF_NAMES:
            out.append(f"client.ksf must be one of {', '.join(KSF_NAMES)}")
        for name in ("call_timeout_s", "connect_timeout_s", "overall_deadline_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                out.append(f"client.{name} must be a positive number")
        if self.enrollment_token and not re.fullmatch(r"[0-9a-fA-F]+", self.enrollment_token):
            out.append("client.enrollment_token must be hex")
        return out

    def validate(self) -> ClientConfig:
        """Return self, or raise ConfigError naming every problem at once."""
        problems = self.problems()
        if problems:
            where = f"{self.source}: " if self.source else ""
            raise ConfigError(where + "; ".join(problems))
        return self

    def with_overrides(self, **changes: Any) -> ClientConfig:
        """A validated copy with some fields replaced (e.g. `ksf="fast"`)."""
        return replace(self, **changes).validate()


_CLUSTER_KEYS = {
    "frontends", "ca", "server_name", "fleet_public_key", "fleet_id", "insecure", "fleet_epoch",
    "fleet_root_key", "opaque_context",
}  # fmt: skip
_CLIENT_KEYS = {f.name for f in fields(ClientConfig)} - _CLUSTER_KEYS - {"source"}


def default_config_path() -> Path:
    """`$BKV_CONFIG` if set, else `./client.toml`."""
    return Path(os.environ.get("BKV_CONFIG") or "client.toml")


def load_config(path: str | os.PathLike[str]) -> ClientConfig:
    """Read and validate client.toml; ConfigError (every problem at once) when it is unusable."""
    p = Path(path)
    try:
        data = read_toml(p)
    except TomlReadError as err:
        if err.missing:
            raise ConfigError(f"no client configuration at {p}") from None
        raise ConfigError(f"{p}: cannot read: {type(err.cause).__name__}") from None
    problems: list[str] = []
    cluster = data.get("cluster", {})
    client = data.get("client", {})
    if not isinstance(cluster, dict) or not isinstance(client, dict):
        raise ConfigError(f"{p}: [cluster] and [client] must be tables")
    problems += [f"unknown section [{k}]" for k in unknown_keys(data, ("cluster", "client"))]
    problems += [f"unknown key cluster.{k}" for k in unknown_keys(cluster, _CLUSTER_KEYS)]
    problems += [f"unknown key client.{k}" for k in unknown_keys(client, _CLIENT_KEYS)]
    base = p.resolve().parent

    def path_of(value: Any) -> str:
        if not isinstance(value, str) or not value:
            return ""
        return str(base / value)

    frontends = cluster.get("frontends", [])
    insecure = cluster.get("insecure", False)
    if not isinstance(insecure, bool):
        # Security: `insecure = "false"` must not turn TLS off (a non-empty string is truthy).
        problems.append("cluster.insecure must be true or false (a TOML boolean, no quotes)")
    cfg = ClientConfig(
        frontends=tuple(frontends) if isinstance(frontends, list) else (),
        ca=path_of(cluster.get("ca", "")),
        server_name=str(cluster.get("server_name", "")),
        fleet_public_key=path_of(cluster.get("fleet_public_key", "")),
        fleet_id=str(cluster.get("fleet_id", "")),
        insecure=insecure is True,
        fleet_epoch=cluster.get("fleet_epoch", 1),
        fleet_root_key=path_of(cluster.get("fleet_root_key", "")),
        opaque_context=cluster.get("opaque_context"),
        **{k: client[k] for k in client if k in _CLIENT_KEYS},
        source=str(p),
    )
    problems += cfg.problems()
    if problems:
        raise ConfigError(f"{p}: " + "; ".join(problems))
    return cfg


def load_root_key(config: ClientConfig) -> FleetRootKey | None:
    """The pinned fleet root key, or None when client.toml pins none."""
    from vault_protocol.errors import InvalidInput
    from vault_protocol.fleet import FleetRootKey

    if not config.fleet_root_key:
        return None
    try:
        return FleetRootKey.from_pem(Path(config.fleet_root_key).read_bytes())
    except OSError:
        raise ConfigError(f"cannot read the fleet root key {config.fleet_root_key}") from None
    except InvalidInput:
        raise ConfigError(f"{config.fleet_root_key} is not an Ed25519 fleet root key") from None


def load_fleet_key(config: ClientConfig) -> FleetKey:
    """Load the pinned fleet key and check it against `fleet_id` (ConfigError on mismatch)."""
    from vault_protocol.envelope import FleetKey
    from vault_protocol.errors import InvalidInput

    try:
        fleet = FleetKey.from_pem(Path(config.fleet_public_key).read_bytes())
    except OSError:
        raise ConfigError(f"cannot read the fleet public key {config.fleet_public_key}") from None
    except InvalidInput:
        raise ConfigError(f"{config.fleet_public_key} is not a P-256 fleet public key") from None
    # Security: the pin. A swapped fleet.pub would let its owner open every envelope.
    if fleet.fleet_id.hex() != config.fleet_id.lower():
        raise ConfigError("the fleet public key does not match fleet_id (wrong or swapped file)")
    return fleet
