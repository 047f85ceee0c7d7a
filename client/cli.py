"""`bkv`: the Backup Key Vault command line.

```
bkv [--config FILE] [--account ID] [--key-dir DIR] [--json] COMMAND
  account create [--no-login] | account show
  account change-key [--password-stdin] [--key-file F|-]
  account rebind-request
  register [--password-stdin] [--key-file F|-] [--max-attempts N]
  recover  [--password-stdin]
  status | delete
  keygen
  backup encrypt SRC DST [--key-file F|-]
  backup decrypt SRC DST [--key-file F|-]
```

The backup key K is never taken from the command line: argv is readable by every local user
(`ps`, `/proc/PID/cmdline`) and lands in shell history, so `--key VALUE` is refused (exit 2).
`--key-file F` reads it from a file, `--key-file -` from one line of stdin (64 hex digits; spaces,
dashes and upper case are fine). `backup` without `--key-file` asks for it with getpass (no echo)
on a terminal, else reads one line of stdin; `register` without it escrows a fresh key and
prints it. `register --key-file -` cannot be combined with `--password-stdin` (one stdin).

`--config` defaults to `$BKV_CONFIG`, then `./client.toml`; `--account` to `$BKV_ACCOUNT`; the
account key file lives beside the config unless `--key-dir`. A rotated fleet key learnt from
the fleet's signed announcement (client.toml pins the root key that signs it) is kept in
`<config>.fleet` beside the config and verified again at each start. Hidden: `--ksf fast` (or
`$BKV_KSF=fast`) uses a much weaker Argon2id (t=1, p=1, 256 KiB) — load tests only.

Exit codes: 0 success; 2 usage or bad input; 3 wrong password; 4 locked; 5 not registered;
6 unavailable or rate limited; 7 authentication failed (the frontend's session, or the vault
record bound to another account key, or this device's clock too far ahead); 8 tampered;
1 anything else.
`--json` prints one JSON object on stdout: `ok`, `error` (invalid_password, locked,
not_registered, unavailable, rate_limited, unauthenticated, account_key, clock,
stale_signature, tampered, protocol, bad_input),
`guesses_left` where known, `key` where a key is returned, `message` on errors.

>>> exit_code_for(InvalidPassword(2))
3

Security: every exception is caught in `main` and printed as one line that names its type and
its message (the library's messages never carry secrets); unknown exceptions print their type
only. Passwords and keys are read with getpass (no echo), from stdin or (keys) from a file,
never from the command line; no message repeats a key or the text it was parsed from.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from client.backup_file import decrypt_backup, encrypt_backup
from client.config import KSF_NAMES, default_config_path, load_config
from client.errors import (
    AccountKeyRefused,
    BadInput,
    ClockAhead,
    InvalidPassword,
    Locked,
    NotRegistered,
    ProtocolError,
    RateLimited,
    RecordTampered,
    StaleSignature,
    Unauthenticated,
    Unavailable,
    VaultError,
)
from client.protocol import MAX_ATTEMPTS_LIMIT, Status
from client.session import AccountKey
from client.vault import VaultClient
from vault_protocol.backup_key import BackupKey
from vault_protocol.errors import KeyFormatError

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_BAD_INPUT = 2
EXIT_INVALID_PASSWORD = 3
EXIT_LOCKED = 4
EXIT_NOT_REGISTERED = 5
EXIT_UNAVAILABLE = 6
EXIT_UNAUTHENTICATED = 7
EXIT_TAMPERED = 8

_EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (InvalidPassword, EXIT_INVALID_PASSWORD, "invalid_password"),
    (Locked, EXIT_LOCKED, "locked"),
    (NotRegistered, EXIT_NOT_REGISTERED, "not_registered"),
    (RateLimited, EXIT_UNAVAILABLE, "rate_limited"),
    (Unavailable, EXIT_UNAVAILABLE, "unavailable"),
    (Unauthenticated, EXIT_UNAUTHENTICATED, "unauthenticated"),
    (AccountKeyRefused, EXIT_UNAUTHENTICATED, "account_key"),
    (ClockAhead, EXIT_UNAUTHENTICATED, "clock"),
    (StaleSignature, EXIT_UNAVAILABLE, "stale_signature"),
    (RecordTampered, EXIT_TAMPERED, "tampered"),
    (BadInput, EXIT_BAD_INPUT, "bad_input"),  # includes ConfigError's code too
    (KeyFormatError, EXIT_BAD_INPUT, "bad_input"),
    (ProtocolError, EXIT_OTHER, "protocol"),
)


def exit_code_for(err: BaseException) -> int:
    """The process exit code for an error (1 for anything not listed)."""
    return _classify(err)[0]


def _classify(err: BaseException) -> tuple[int, str]:
    for cls, code, name in _EXIT_CODES:
        if isinstance(err, cls):
            return code, name
    if isinstance(err, VaultError) and err.code == "bad_input":
        return EXIT_BAD_INPUT, "bad_input"
    return EXIT_OTHER, "protocol"


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit on its own
        raise UsageError(message)


KEY_ON_ARGV_MESSAGE = (
    "--key is not accepted: the command line is visible to every local user (ps, /proc) and "
    "is kept in shell history; pass --key-file FILE, or --key-file - to read the key from "
    "standard input"
)


class _RefuseKeyOnArgv(argparse.Action):
    """A hidden `--key [VALUE]` that always fails, so the old spelling is refused with a clear
    message rather than taken as an abbreviation of `--key-file`/`--key-dir` (which would then
    print the key back as a file or folder name)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(KEY_ON_ARGV_MESSAGE)  # never repeats the value


@dataclass
class Io:
    """What the command line reads and writes; tests pass their own."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    getpass: Callable[[str], str] = getpass.getpass


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = _Parser(prog="bkv", description="Backup Key Vault client")
    p.add_argument("--config", help="client.toml (default: $BKV_CONFIG, then ./client.toml)")
    p.add_argument("--account", help="account id (default: $BKV_ACCOUNT)")
    p.add_argument("--key-dir", help="folder of the account key file (default: the config's)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--ksf", choices=KSF_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--key", action=_RefuseKeyOnArgv)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    account = sub.add_parser("account", help="create or show the account key")
    account_sub = account.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = account_sub.add_parser("create", help="make a new account key (0600 file), log in")
    create.add_argument(
        "--no-login",
        action="store_true",
        help="only make the key (a new device of an account whose key was lost: show it to "
        "the operator, then `account rebind-request`)",
    )
    account_sub.add_parser("show", help="print the account id, public key and key file")
    change = account_sub.add_parser(
        "change-key", help="replace the account key by a new one (you still hold the old one)"
    )
    change.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    change.add_argument(
        "--key-file", metavar="FILE", help="the escrowed key, - for stdin (default: recover it)"
    )
    account_sub.add_parser(
        "rebind-request",
        help="key lost: ask the vault to bind this key after the operator's delay",
    )

    reg = sub.add_parser("register", help="escrow a key behind a password")
    reg.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    reg.add_argument(
        "--key-file",
        metavar="FILE",
        help="a file holding the 64-hex-digit key to escrow, - for stdin (default: a fresh one)",
    )
    reg.add_argument("--key", action=_RefuseKeyOnArgv)
    reg.add_argument("--max-attempts", type=int, help="wrong passwords before the key is erased")

    rec = sub.add_parser("recover", help="get the key back with the password")
    rec.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    sub.add_parser("status", help="registered? guesses left? locked?")
    sub.add_parser("delete", help="erase the account's key from the vault")
    sub.add_parser("keygen", help="print a fresh 64-hex-digit key")

    backup = sub.add_parser("backup", help="encrypt or decrypt a backup file")
    backup_sub = backup.add_subparsers(dest="action", required=True, parser_class=_Parser)
    for name in ("encrypt", "decrypt"):
        b = backup_sub.add_parser(name, help=f"{name} SRC into DST")
        b.add_argument("src")
        b.add_argument("dst")
        b.add_argument(
            "--key-file",
            metavar="FILE",
            help="a file holding the 64-hex-digit key, - for stdin "
            "(default: ask on a terminal, else read stdin)",
        )
        b.add_argument("--key", action=_RefuseKeyOnArgv)
    return p


# -- helpers ---------------------------------------------------------------------------------


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $BKV_CONFIG, else ./client.toml."""
    return Path(args.config) if args.config else default_config_path()


def key_dir(args: argparse.Namespace) -> Path:
    """--key-dir, else the config file's folder."""
    return Path(args.key_dir) if args.key_dir else config_path(args).resolve().parent


def account_id(args: argparse.Namespace) -> str | None:
    """--account, else $BKV_ACCOUNT."""
    return args.account or os.environ.get("BKV_ACCOUNT") or None


def make_client(args: argparse.Namespace) -> VaultClient:
    """The VaultClient the network commands use (tests replace this function)."""
    ksf = args.ksf or os.environ.get("BKV_KSF") or None
    if ksf is not None and ksf not in KSF_NAMES:
        raise BadInput(f"BKV_KSF must be one of {', '.join(KSF_NAMES)}")
    client = VaultClient(
        load_config(config_path(args)),
        account_id=account_id(args),
        key_dir=key_dir(args),
        ksf=ksf,
    )
    # A rotated fleet key, once learnt from its signed announcement, is kept beside the config
    # (verified again at every start), so that this client seals to it from then on.
    client.remember_fleet(learned_fleet_path(args))
    return client


def learned_fleet_path(args: argparse.Namespace) -> Path:
    """Where `bkv` keeps the last fleet announcement it took: `<config>.fleet` beside it."""
    return config_path(args).resolve().with_suffix(".fleet")


def _read_password(args: argparse.Namespace, io: Io, *, confirm: bool) -> str:
    if args.password_stdin:
        line = io.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    else:
        password = io.getpass("Password: ")
        if confirm and io.getpass("Password (again): ") != password:
            raise BadInput("the passwords do not match")
    if not password:
        raise BadInput("the password is empty")
    return password


# A key with separators is under 100 characters; a bigger "key" (say --key-file /dev/zero) is
# refused after this many rather than read whole.
_KEY_TEXT_MAX = 4096


def _looks_like_a_key(text: str) -> bool:
    try:
        BackupKey.parse(text)
    except KeyFormatError:
        return False
    return True


def _read_key_file(path: str) -> str:
    """A key file's text. Errors name the file and the OS's reason, never the content; a "file
    name" that is itself a key (`--key-file 804e0f27...`) is not repeated either."""
    if _looks_like_a_key(path) and not os.path.lexists(path):
        raise BadInput("--key-file takes the name of a file holding the key, not the key itself")
    try:
        # utf-8-sig: a key saved by an editor that writes a byte-order mark still parses.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(_KEY_TEXT_MAX + 1)
    except FileNotFoundError:
        raise BadInput(f"no such key file {path}") from None
    except UnicodeDecodeError:
        raise BadInput(f"bad key in the key file {path}: not UTF-8 text") from None
    except OSError as err:
        raise BadInput(f"cannot read the key file {path}: {err.strerror or 'error'}") from None
    if len(text) > _KEY_TEXT_MAX:
        raise BadInput(f"bad key in the key file {path}: too long to be a key")
    return text


def _parse_key(text: str, source: str) -> BackupKey:
    text = text.strip()
    if not text:
        raise BadInput(f"no key {source}")
    try:
        return BackupKey.parse(text)
    except KeyFormatError as err:
        # KeyFormatError gives a position or a digit count, never the text itself.
        raise BadInput(f"bad key {source}: {err}") from None


def _key_from_stdin(args: argparse.Namespace, io: Io) -> BackupKey:
    if getattr(args, "password_stdin", False):
        raise UsageError("--password-stdin and a key on stdin cannot share stdin; use --key-file")
    return _parse_key(io.stdin.readline(_KEY_TEXT_MAX), "on standard input")


def _key_from_option(args: argparse.Namespace, io: Io) -> BackupKey | None:
    """K from --key-file: a file, or - for one line of stdin; None without --key-file."""
    path: str | None = args.key_file
    if path is None:
        return None
    if path == "-":
        return _key_from_stdin(args, io)
    return _parse_key(_read_key_file(path), f"in the key file {path}")


def _key_required(args: argparse.Namespace, io: Io) -> BackupKey:
    """K from --key-file, else asked for without echo on a terminal, else one line of stdin."""
    key = _key_from_option(args, io)
    if key is not None:
        return key
    if io.stdin.isatty():
        return _parse_key(io.getpass("Backup key (64 hex digits): "), "typed")
    return _key_from_stdin(args, io)


class _ProgressBar:
    """A one-line progress bar on a terminal's stderr."""

    def __init__(self, out: TextIO, total: int, label: str) -> None:
        self._out, self._total, self._label, self._last = out, max(total, 1), label, -1

    def __call__(self, done: int) -> None:
        pct = min(100, done * 100 // self._total)
        if pct != self._last:
            self._last = pct
            bar = "#" * (pct // 4) + "." * (25 - pct // 4)
            self._out.write(f"\r{self._label} [{bar}] {pct:3d}% {done >> 20} MiB")
            self._out.flush()

    def finish(self) -> None:
        if self._last >= 0:
            self._out.write("\n")
            self._out.flush()


# -- commands --------------------------------------------------------------------------------

Result = dict[str, Any]


def _key_result(key: BackupKey) -> Result:
    return {"key": bytes(key).hex(), "_text": key.display()}


def _status_result(s: Status) -> Result:
    text = (
        f"registered: {'yes' if s.registered else 'no'}, guesses left: {s.guesses_left}, "
        f"locked: {'yes' if s.locked else 'no'}"
    )
    result: Result = {
        "registered": s.registered,
        "guesses_left": s.guesses_left,
        "locked": s.locked,
        "max_attempts": s.max_attempts,
        "rebind_pending": s.rebind_pending,
    }
    if s.rebind_pending:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.rebind_matures_at_ms / 1000))
        result.update(rebind_key=s.rebind_key.hex(), rebind_matures_at_ms=s.rebind_matures_at_ms)
        text += (
            f"\nrebind pending to key {s.rebind_key.hex()}, matures {when}; the current key "
            "cancels it by signing any request (`bkv status`)"
        )
    if s.rebind_cancelled_key:
        result["rebind_cancelled_key"] = s.rebind_cancelled_key.hex()
        text += (
            f"\na rebind to key {s.rebind_cancelled_key.hex()} was pending: this request, "
            "signed by your key, cancelled it"
        )
    result["_text"] = text
    return result


def cmd_account(args: argparse.Namespace, io: Io) -> Result:
    if args.action == "create":
        with make_client(args) as client:
            created = client.create_account(account_id(args), login=not args.no_login)
            path = str(client.account.path)
            public = client.account.public_key.hex()
        return {
            "account": created,
            "key_file": path,
            "public_key": public,
            "_text": f"account {created} ({path})\npublic key {public}",
        }
    if args.action == "change-key":
        given = _key_from_option(args, io)
        with make_client(args) as client:
            client.account  # noqa: B018 - fail on a missing account before asking for a password
            password = _read_password(args, io, confirm=False)
            client.change_account_key(password, given)
            public = client.account.public_key.hex()
        return {"public_key": public, "_text": f"account key changed; public key {public}"}
    if args.action == "rebind-request":
        with make_client(args) as client:
            return _status_result(client.request_rebind())
    acct = account_id(args)
    if not acct:
        raise BadInput("no account: pass --account or set $BKV_ACCOUNT")
    key = AccountKey.load(key_dir(args), acct)
    return {
        "account": key.account_id,
        "public_key": key.public_key.hex(),
        "key_file": str(key.path),
        "_text": f"account {key.account_id}\npublic key {key.public_key.hex()}\n"
        f"key file {key.path}",
    }


def cmd_register(args: argparse.Namespace, io: Io) -> Result:
    given = _key_from_option(args, io)  # None: register escrows a fresh key and prints it
    if args.max_attempts is not None and not 1 <= args.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise BadInput(f"--max-attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
    with make_client(args) as client:
        client.account  # noqa: B018 - fail on a missing account before asking for a password
        password = _read_password(args, io, confirm=True)
        try:
            key = client.register(password, given, args.max_attempts)
        except ValueError as err:
            raise BadInput(str(err)) from None
    if given is not None:
        return {"_text": "registered"}
    return _key_result(key)


def cmd_recover(args: argparse.Namespace, io: Io) -> Result:
    with make_client(args) as client:
        client.account  # noqa: B018 - fail on a missing account before asking for a password
        password = _read_password(args, io, confirm=False)
        return _key_result(client.recover(password))


def cmd_status(args: argparse.Namespace, io: Io) -> Result:
    with make_client(args) as client:
        return _status_result(client.status())


def cmd_delete(args: argparse.Namespace, io: Io) -> Result:
    with make_client(args) as client:
        existed = client.delete()
    return {"existed": existed, "_text": "deleted" if existed else "nothing to delete"}


def cmd_keygen(args: argparse.Namespace, io: Io) -> Result:
    return _key_result(BackupKey.generate(os.urandom))


def cmd_backup(args: argparse.Namespace, io: Io) -> Result:
    key = _key_required(args, io)
    if not os.path.isfile(args.src):
        raise BadInput(f"no such file {args.src}")
    bar = None
    if not args.json and io.stderr.isatty():
        bar = _ProgressBar(io.stderr, os.path.getsize(args.src), args.action)
    try:
        if args.action == "encrypt":
            size = encrypt_backup(args.src, args.dst, key, progress=bar)
        else:
            size = decrypt_backup(args.src, args.dst, key, progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    return {"bytes": size, "_text": f"{args.action}ed {size} bytes into {args.dst}"}


_COMMANDS: dict[str, Callable[[argparse.Namespace, Io], Result]] = {
    "account": cmd_account,
    "register": cmd_register,
    "recover": cmd_recover,
    "status": cmd_status,
    "delete": cmd_delete,
    "keygen": cmd_keygen,
    "backup": cmd_backup,
}


def _error_message(err: BaseException) -> str:
    if isinstance(err, VaultError | UsageError | KeyFormatError):
        return str(err) or type(err).__name__
    # Unknown exceptions: the type only; their text could hold anything.
    return f"internal error ({type(err).__name__})"


def main(argv: Sequence[str] | None = None, io: Io | None = None) -> int:
    """Run `bkv`; returns the exit code (the console script passes it to sys.exit)."""
    io = io or Io()
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args_list
    try:
        args = build_parser().parse_args(args_list)
        as_json = bool(args.json)
        result = _COMMANDS[args.command](args, io)
    except UsageError as err:
        return _fail(io, as_json, EXIT_BAD_INPUT, "bad_input", f"usage: {err}", None)
    except KeyboardInterrupt:
        return _fail(io, as_json, 130, "interrupted", "interrupted", None)
    except SystemExit as err:  # --help
        return int(err.code) if isinstance(err.code, int) else EXIT_OK
    except BaseException as err:  # noqa: BLE001 - the one place every error becomes one line
        code, name = _classify(err)
        guesses = getattr(err, "guesses_left", None)
        message = _error_message(err)
        return _fail(io, as_json, code, name, message, guesses)
    text = result.pop("_text", "")
    if as_json:
        io.stdout.write(json.dumps({"ok": True, "error": None, **result}) + "\n")
    elif text:
        io.stdout.write(text + "\n")
    return EXIT_OK


def _fail(
    io: Io, as_json: bool, code: int, name: str, message: str, guesses_left: int | None
) -> int:
    if as_json:
        out: Result = {"ok": False, "error": name, "message": message}
        if guesses_left is not None:
            out["guesses_left"] = guesses_left
        io.stdout.write(json.dumps(out) + "\n")
    else:
        io.stderr.write(f"bkv: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
