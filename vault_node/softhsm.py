"""Self-contained SoftHSM2 token directories: config file, PIN file, token initialisation.

Layout of a token directory made by `create_token(DIR, label)`:

    DIR/softhsm2.conf   the config that `SOFTHSM2_CONF` must point at (tokendir = DIR/tokens)
    DIR/tokens/         SoftHSM's object store (file backend)
    DIR/pin             the user PIN, random, mode 0600

The SO PIN is random and never stored: nobody needs to reset the user PIN of a vault node's
token, and an SO PIN that does not exist cannot leak.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM_UTIL = "softhsm2-util"
CONF_NAME = "softhsm2.conf"
PIN_NAME = "pin"
TOKENS_NAME = "tokens"
_MAX_LABEL = 32  # PKCS#11 token labels are 32 bytes, blank padded
_INIT_TIMEOUT_S = 30.0


class SoftHsmError(Exception):
    """A token directory could not be made or is unusable (the message never holds a PIN)."""


class TokenSpecError(SoftHsmError):
    """A `TokenSpec` is invalid; the message lists every problem at once."""


@dataclass(frozen=True)
class TokenSpec:
    """Where one PKCS#11 token lives and how to log in to it (the `[hsm]` table of node.toml)."""

    module: str
    """Absolute path of the PKCS#11 library (SoftHSM2's `libsofthsm2.so`)."""
    softhsm_conf: Path
    """Absolute path of the softhsm2.conf that this token's process must load (`SOFTHSM2_CONF`)."""
    token_label: str
    """Label of the token inside that config; slots get random ids, so tokens are found by label."""
    pin_file: Path
    """File holding the user PIN (first line); must not be readable by group or others."""

    def problems(self) -> list[str]:
        """Every problem with this spec (empty when valid). Checks files, so call it late."""
        found: list[str] = []
        if not os.path.isabs(self.module):
            found.append("module must be an absolute path")
        elif not os.path.isfile(self.module):
            found.append(f"module {self.module} does not exist")
        if not self.softhsm_conf.is_absolute():
            found.append("softhsm_conf must be an absolute path")
        elif not self.softhsm_conf.is_file():
            found.append(f"softhsm_conf {self.softhsm_conf} does not exist")
        label_bytes = self.token_label.encode("utf-8")
        if not label_bytes or len(label_bytes) > _MAX_LABEL:
            found.append(f"token_label must be 1..{_MAX_LABEL} bytes of UTF-8")
        if self.token_label != self.token_label.strip():
            found.append("token_label must not start or end with spaces (PKCS#11 pads with them)")
        if not self.pin_file.is_absolute():
            found.append("pin_file must be an absolute path")
        elif not self.pin_file.is_file():
            found.append(f"pin_file {self.pin_file} does not exist")
        elif self.pin_file.stat().st_mode & 0o077:
            # A PIN readable by other users is a PIN shared with them.
            found.append(f"pin_file {self.pin_file} must not be accessible by group or others")
        return found

    def validate(self) -> None:
        """Raise `TokenSpecError` listing every problem, or return if the spec is usable."""
        found = self.problems()
        if found:
            raise TokenSpecError(
                f"invalid token spec for {self.token_label!r}: " + "; ".join(found)
            )

    def read_pin(self) -> str:
        """The user PIN (first line of `pin_file`). Never log or repr the result."""
        text = self.pin_file.read_text(encoding="utf-8")
        pin = text.splitlines()[0].strip() if text.strip() else ""
        if not pin:
            raise SoftHsmError(f"pin_file {self.pin_file} is empty")
        return pin


def softhsm_env(directory: Path) -> Path:
    """Write `directory/softhsm2.conf` (tokens in `directory/tokens`) and return its path.

    Point `SOFTHSM2_CONF` at the result before the PKCS#11 library is loaded.
    """
    directory = directory.resolve()
    tokens = directory / TOKENS_NAME
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / CONF_NAME
    conf.write_text(
        "# Written by vault_node.softhsm: one self-contained SoftHSM2 token store.\n"
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return conf


def _write_secret_file(path: Path, value: str) -> None:
    # O_EXCL + 0600 from the first byte: the PIN is never world-readable, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def create_token(directory: Path, label: str, *, module: str = DEFAULT_MODULE) -> TokenSpec:
    """Make a new token directory at `directory` holding one initialised token called `label`.

    Fails with `SoftHsmError` if the directory already holds a token config (a provisioned
    token is never silently replaced).
    """
    directory = directory.resolve()
    if (directory / CONF_NAME).exists():
        raise SoftHsmError(f"{directory} already holds a SoftHSM token directory")
    if shutil.which(SOFTHSM_UTIL) is None:
        raise SoftHsmError(f"{SOFTHSM_UTIL} not found (apt-get install softhsm2)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = softhsm_env(directory)
    pin_file = directory / PIN_NAME
    pin = secrets.token_hex(16)
    _write_secret_file(pin_file, pin)
    spec = TokenSpec(module=module, softhsm_conf=conf, token_label=label, pin_file=pin_file)
    spec.validate()
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = str(conf)  # the child's env only: this process may use another conf
    # The PINs go on softhsm2-util's argv, visible in /proc/<pid>/cmdline to local users for
    # the few milliseconds of a local init; accepted here (the tool has no other input), and
    # they are never logged: a failure reports softhsm2-util's stderr, never the command line.
    command = [
        SOFTHSM_UTIL,
        "--init-token",
        "--free",
        "--label",
        label,
        "--pin",
        pin,
        "--so-pin",
        secrets.token_hex(16),
    ]
    try:
        result = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=_INIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SoftHsmError(
            f"softhsm2-util failed to init token {label!r}: {type(exc).__name__}"
        ) from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {result.returncode}"
        raise SoftHsmError(f"softhsm2-util failed to init token {label!r}: {reason}")
    return spec
