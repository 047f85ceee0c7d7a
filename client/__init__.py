"""Backup Key Vault client: `VaultClient` (sync), `AsyncVaultClient` (asyncio), the `bkv` CLI.

>>> from client import VaultClient, InvalidPassword  # doctest: +SKIP
>>> with VaultClient.from_config("client.toml", account_id="alice") as vault:  # doctest: +SKIP
...     key = vault.register("correct horse battery staple")

See client/README.md for a five-minute tour.
"""

from client.aio import AsyncVaultClient
from client.backup_file import CorruptBackup, decrypt_backup, encrypt_backup
from client.config import ClientConfig, load_config
from client.errors import (
    BadInput,
    ChallengeRefused,
    ConfigError,
    FleetAnnouncementRefused,
    InvalidPassword,
    Locked,
    NotRegistered,
    ProtocolError,
    RateLimited,
    RecordTampered,
    StaleRequest,
    Unauthenticated,
    Unavailable,
    UnknownFleetKey,
    VaultError,
)
from client.protocol import Status
from client.retry import RetryPolicy
from client.vault import VaultClient
from vault_protocol.backup_key import BackupKey

__all__ = [
    "AsyncVaultClient",
    "BackupKey",
    "BadInput",
    "ChallengeRefused",
    "ClientConfig",
    "ConfigError",
    "CorruptBackup",
    "FleetAnnouncementRefused",
    "InvalidPassword",
    "Locked",
    "NotRegistered",
    "ProtocolError",
    "RateLimited",
    "RecordTampered",
    "RetryPolicy",
    "StaleRequest",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "UnknownFleetKey",
    "VaultClient",
    "VaultError",
    "decrypt_backup",
    "encrypt_backup",
    "load_config",
]
