"""The `bkv` command line: parsing, exit codes, --json, passwords, keys (fake client)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from inproc_cluster import InProcessVault
from test_client_vault import FE, FakeFrontends

from client import cli
from client.config import ClientConfig, load_config
from client.errors import (
    AccountKeyRefused,
    ClockAhead,
    ProtocolError,
    RateLimited,
    StaleSignature,
    Unavailable,
)
from client.vault import VaultClient
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SECRET = "Tr0ub4dor&3-cli"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Run:
    """Runs cli.main with captured streams, fake getpass and a fake cluster."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vault = InProcessVault()
        self.frontends = FakeFrontends(self.vault)
        (tmp_path / "fleet.pub").write_bytes(self.vault.fleet.to_pem())
        self.config_path = tmp_path / "client.toml"
        self.config_path.write_text(
            f'[cluster]\nfrontends = ["{FE[0]}", "{FE[1]}"]\ninsecure = true\n'
            f'fleet_public_key = "fleet.pub"\nfleet_id = "{self.vault.fleet.fleet_id.hex()}"\n'
        )
        self.passwords: list[str] = []
        self.prompts: list[str] = []
        self.fail_with: BaseException | None = None
        monkeypatch.setenv("BKV_CONFIG", str(self.config_path))
        monkeypatch.setenv("BKV_ACCOUNT", "alice")
        monkeypatch.setattr(cli, "make_client", self._make_client)

    def _make_client(self, args: Any) -> VaultClient:
        if self.fail_with is not None:
            raise self.fail_with
        config: ClientConfig = load_config(cli.config_path(args))
        return VaultClient(
            config,
            account_id=cli.account_id(args),
            key_dir=cli.key_dir(args),
            ksf=IdentityKsf(),
            connector=self.frontends,
            sleep=lambda s: None,
        )

    def getpass(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.passwords.pop(0)

    def __call__(
        self, *argv: str, stdin: str = "", tty: bool = False, stdin_tty: bool = False
    ) -> tuple[int, str, str]:
        """`tty`: stderr is a terminal (progress bar); `stdin_tty`: stdin is (key prompt)."""
        out, err = io.StringIO(), (Tty() if tty else io.StringIO())
        stdin_io = Tty(stdin) if stdin_tty else io.StringIO(stdin)
        code = cli.main(
            list(argv), cli.Io(stdin=stdin_io, stdout=out, stderr=err, getpass=self.getpass)
        )
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    return Run(tmp_path, monkeypatch)


def test_account_create_writes_a_0600_key_and_show_prints_it(run: Run) -> None:
    code, out, err = run("account", "create")
    assert code == 0, err
    key_file = run.config_path.parent / "alice.account.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    code, out, _ = run("--json", "account", "show")
    shown = json.loads(out)
    assert code == 0 and shown["account"] == "alice" and len(shown["public_key"]) == 64
    assert "PRIVATE" not in out
    assert run("account", "create")[0] == 2  # never overwrites


def test_register_prompts_twice_and_prints_the_key_recover_prints_it_again(run: Run) -> None:
    run("account", "create")
    run.passwords = [SECRET, SECRET]
    code, out, err = run("--json", "register")
    assert code == 0, err
    key = json.loads(out)["key"]
    assert len(key) == 64 and run.prompts == ["Password: ", "Password (again): "]
    code, out, _ = run("recover", "--password-stdin", stdin=SECRET + "\n")
    assert code == 0 and out.replace(" ", "").strip() == key


def test_register_mismatched_passwords_is_bad_input(run: Run) -> None:
    run("account", "create")
    run.passwords = [SECRET, SECRET + "!"]
    code, out, err = run("register")
    assert code == 2 and "do not match" in err and SECRET not in err + out


def test_register_with_a_key_file_escrows_it_and_does_not_print_it(
    run: Run, tmp_path: Path
) -> None:
    run("account", "create")
    key = "ab" * 32
    key_file = tmp_path / "key.txt"
    key_file.write_text("ABAB abab-" + "ab" * 28 + "\n")  # the parser's separators, upper case
    code, out, err = run("register", "--password-stdin", "--key-file", str(key_file), stdin=SECRET)
    assert code == 0 and out == "registered\n" and key not in out + err
    code, out, _ = run("--json", "recover", "--password-stdin", stdin=SECRET)
    assert json.loads(out)["key"] == key


def test_register_with_the_key_on_stdin_asks_for_the_password(run: Run) -> None:
    run("account", "create")
    key = "cd" * 32
    run.passwords = [SECRET, SECRET]
    code, out, err = run("register", "--key-file", "-", stdin=f"  {key}  \n")
    assert code == 0 and out == "registered\n" and key not in out + err
    assert run.prompts == ["Password: ", "Password (again): "]
    code, out, _ = run("--json", "recover", "--password-stdin", stdin=SECRET)
    assert json.loads(out)["key"] == key


def test_register_key_and_password_cannot_both_come_from_stdin(run: Run) -> None:
    run("account", "create")
    code, out, err = run(
        "register", "--password-stdin", "--key-file", "-", stdin="ab" * 32 + "\n" + SECRET
    )
    assert code == 2 and "--key-file" in err and out == ""
    assert json.loads(run("--json", "status")[1])["registered"] is False


def test_register_without_a_key_still_escrows_a_fresh_one(run: Run) -> None:
    run("account", "create")
    code, out, _ = run("--json", "register", "--password-stdin", stdin=SECRET)
    assert code == 0 and len(json.loads(out)["key"]) == 64


def test_bad_key_format_is_exit_2(run: Run, tmp_path: Path) -> None:
    run("account", "create")
    (tmp_path / "k").write_text("xyz\n")
    code, _out, err = run("register", "--password-stdin", "--key-file", str(tmp_path / "k"))
    assert code == 2 and "bad key" in err and "xyz" not in err


def test_max_attempts_outside_the_vaults_range_is_exit_2(run: Run) -> None:
    run("account", "create")
    for bad in ("0", "101"):
        code, out, _ = run("--json", "register", "--password-stdin", "--max-attempts", bad,
                           stdin=SECRET)  # fmt: skip
        assert code == 2 and json.loads(out)["error"] == "bad_input"
    code, out, _ = run("--json", "status")
    assert code == 0 and json.loads(out)["registered"] is False


def test_wrong_password_locked_not_registered_exit_codes(run: Run) -> None:
    run("account", "create")
    code, out, _ = run("--json", "recover", "--password-stdin", stdin=SECRET)
    assert code == 5 and json.loads(out)["error"] == "not_registered"
    run("register", "--password-stdin", "--max-attempts", "2", stdin=SECRET)
    code, out, err = run("recover", "--password-stdin", stdin="wrong-guess")
    assert code == 3 and "1 guesses left" in err
    code, out, _ = run("--json", "recover", "--password-stdin", stdin="wrong-guess")
    assert code == 3 and json.loads(out) == {
        "ok": False,
        "error": "invalid_password",
        "message": "wrong password: 0 guesses left",
        "guesses_left": 0,
    }
    code, out, _ = run("--json", "recover", "--password-stdin", stdin=SECRET)
    assert code == 4 and json.loads(out)["error"] == "locked"
    code, out, _ = run("--json", "status")
    assert code == 0 and json.loads(out)["locked"] is True


def test_status_and_delete(run: Run) -> None:
    run("account", "create")
    run("register", "--password-stdin", stdin=SECRET)
    code, out, _ = run("status")
    assert code == 0 and out.startswith("registered: yes, guesses left: 10")
    assert run("delete") == (0, "deleted\n", "")
    assert run("--json", "delete")[1].startswith('{"ok": true, "error": null, "existed": false')


def test_authentication_failure_is_exit_7(run: Run) -> None:
    run("account", "create")
    (run.config_path.parent / "alice.account.key").unlink()
    run.frontends.tokens.clear()
    code, out, _ = run("--json", "account", "create")  # a new key for a taken account id
    assert code == 7 and json.loads(out)["error"] == "unauthenticated"


@pytest.mark.parametrize(
    ("error", "code", "name"),
    [
        (Unavailable(), 6, "unavailable"),
        (RateLimited(1.5), 6, "rate_limited"),
        (ProtocolError("x"), 1, "protocol"),
        (RuntimeError(SECRET), 1, "protocol"),
        (AccountKeyRefused(), 7, "account_key"),
        (ClockAhead(), 7, "clock"),
        (StaleSignature(5), 6, "stale_signature"),
    ],
)
def test_error_classes_map_to_exit_codes(
    run: Run, error: BaseException, code: int, name: str
) -> None:
    run.fail_with = error
    got, out, _ = run("--json", "status")
    assert got == code and json.loads(out)["error"] == name
    assert SECRET not in out  # unknown exceptions show their type only
    got, out, err = run("status")
    assert got == code and err.startswith("bkv: ") and err.count("\n") == 1 and SECRET not in err


def test_frontends_down_is_exit_6(run: Run) -> None:
    run("account", "create")
    run.frontends.down.update(FE)
    assert run("status")[0] == 6


def test_usage_errors_are_exit_2(run: Run) -> None:
    assert run()[0] == 2
    assert run("frobnicate")[0] == 2
    code, out, _ = run("--json", "backup", "encrypt", "a")
    assert code == 2 and json.loads(out)["error"] == "bad_input"


def test_missing_config_is_exit_2(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "make_client", Run._make_client.__get__(run))
    code, _, err = run("--config", "/nonexistent/client.toml", "status")
    assert code == 2 and "no client configuration" in err


def test_no_account_is_exit_2(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BKV_ACCOUNT")
    code, _, err = run("status")
    assert code == 2 and "no account" in err


def test_empty_password_is_bad_input(run: Run) -> None:
    run("account", "create")
    assert run("register", "--password-stdin", stdin="\n")[0] == 2


def test_keygen_prints_a_fresh_key(run: Run) -> None:
    code, out, _ = run("keygen")
    code2, out2, _ = run("--json", "keygen")
    assert code == code2 == 0
    assert len(out.replace(" ", "").strip()) == 64 and len(json.loads(out2)["key"]) == 64
    assert out.replace(" ", "").strip() != json.loads(out2)["key"]


def test_backup_round_trip_with_key_on_stdin_and_key_file(run: Run, tmp_path: Path) -> None:
    src, enc, dec = tmp_path / "plain", tmp_path / "plain.bkv", tmp_path / "plain.out"
    src.write_bytes(os.urandom(3 * (1 << 20) + 17))
    key = run("keygen")[1]  # the display form: "804e 0f27 ..."
    key_file = tmp_path / "key.txt"
    key_file.write_text(key)
    code, _, err = run("backup", "encrypt", str(src), str(enc), stdin=key, tty=True)
    assert code == 0 and "100%" in err  # progress bar on a terminal
    code, out, err = run(
        "--json", "backup", "decrypt", str(enc), str(dec), "--key-file", str(key_file), tty=True
    )
    assert code == 0 and err == "" and json.loads(out)["bytes"] == src.stat().st_size
    assert dec.read_bytes() == src.read_bytes()


def test_backup_with_key_file_dash_reads_one_line_of_stdin(run: Run, tmp_path: Path) -> None:
    src, enc, dec = tmp_path / "p", tmp_path / "p.bkv", tmp_path / "p.out"
    src.write_bytes(b"hello" * 1000)
    key = "0f" * 32
    assert run("backup", "encrypt", str(src), str(enc), "--key-file", "-", stdin=key + "\n")[0] == 0
    code, out, err = run("backup", "decrypt", str(enc), str(dec), "--key-file", "-", stdin=key)
    assert code == 0 and key not in out + err and dec.read_bytes() == src.read_bytes()


def test_backup_without_a_key_file_prompts_without_echo_on_a_terminal(
    run: Run, tmp_path: Path
) -> None:
    src, enc, dec = tmp_path / "p", tmp_path / "p.bkv", tmp_path / "p.out"
    src.write_bytes(b"hello" * 1000)
    key = "5a" * 32
    run.passwords = [key, key.upper()]
    assert run("backup", "encrypt", str(src), str(enc), stdin_tty=True)[0] == 0
    code, out, err = run("backup", "decrypt", str(enc), str(dec), stdin_tty=True)
    assert code == 0 and key not in out + err and dec.read_bytes() == src.read_bytes()
    assert run.prompts == ["Backup key (64 hex digits): "] * 2
    run.passwords = ["not a key"]
    code, out, err = run("backup", "encrypt", str(src), str(enc), stdin_tty=True)
    assert code == 2 and "bad key" in err and "not a key" not in out + err


def test_backup_with_no_key_on_stdin_is_exit_2(run: Run, tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"x")
    code, _, err = run("backup", "encrypt", str(tmp_path / "p"), str(tmp_path / "p.bkv"))
    assert code == 2 and "no key on standard input" in err
    assert not (tmp_path / "p.bkv").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ("register", "--password-stdin", "--key", "KEY"),
        ("register", "--key=KEY", "--password-stdin"),
        ("backup", "encrypt", "SRC", "DST", "--key", "KEY"),
        ("backup", "decrypt", "SRC", "DST", "--key=KEY"),
        ("backup", "encrypt", "--key", "KEY", "SRC", "DST"),
        ("backup", "encrypt", "SRC", "DST", "--key"),
        ("--key", "KEY", "backup", "encrypt", "SRC", "DST"),  # not taken as --key-dir
    ],
)
def test_a_key_on_the_command_line_is_refused_with_exit_2(
    run: Run, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    run("account", "create")
    key = "80" * 32
    src, dst = tmp_path / "p", tmp_path / "p.bkv"
    src.write_bytes(b"hello")
    argv = tuple(
        a.replace("KEY", key).replace("SRC", str(src)).replace("DST", str(dst)) for a in argv
    )
    code, out, err = run(*argv, stdin=SECRET)
    assert code == 2 and out == "" and not dst.exists()
    assert err.count("\n") == 1 and "--key-file" in err and "visible" in err and key not in err
    code, out, _ = run("--json", *argv, stdin=SECRET)
    assert code == 2 and json.loads(out)["error"] == "bad_input" and key not in out
    assert json.loads(run("--json", "status")[1])["registered"] is False


def test_the_help_offers_key_file_and_not_key(run: Run) -> None:
    parser = cli.build_parser()
    for argv in (["register", "--help"], ["backup", "encrypt", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert "--key-file" in out.getvalue() and "--key " not in out.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        "ab" * 31 + "zz\n",  # a bad digit
        "ab" * 31 + "a\n",  # 63 digits
        "ab" * 32 + "ab\n",  # 66 digits
        "# my key\n" + "ab" * 32 + "\n",
    ],
)
def test_a_malformed_key_file_is_exit_2_and_never_echoed(
    run: Run, tmp_path: Path, content: str
) -> None:
    src, dst, key_file = tmp_path / "p", tmp_path / "p.bkv", tmp_path / "key.txt"
    src.write_bytes(b"hello")
    key_file.write_text(content)
    for json_flag in ((), ("--json",)):
        argv = (*json_flag, "backup", "encrypt", str(src), str(dst), "--key-file", str(key_file))
        code, out, err = run(*argv)
        assert code == 2 and "bad key in the key file" in out + err and not dst.exists()
        assert "abab" not in out + err and "zz" not in out + err and "my key" not in out + err


def test_a_missing_or_unreadable_key_file_is_exit_2(run: Run, tmp_path: Path) -> None:
    src, dst = tmp_path / "p", tmp_path / "p.bkv"
    src.write_bytes(b"hello")
    backup = ("backup", "encrypt", str(src), str(dst), "--key-file")
    code, _, err = run(*backup, str(tmp_path / "nope.txt"))
    assert code == 2 and f"no such key file {tmp_path / 'nope.txt'}" in err
    code, _, err = run(*backup, str(tmp_path))
    assert code == 2 and "cannot read the key file" in err
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00" * 30)
    code, _, err = run(*backup, str(tmp_path / "binary"))
    assert code == 2 and "not UTF-8" in err
    (tmp_path / "huge").write_text("ab" * 10_000)
    code, _, err = run(*backup, str(tmp_path / "huge"))
    assert code == 2 and "too long" in err and "abab" not in err
    assert not dst.exists()


def test_a_key_file_without_read_permission_is_exit_2(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p").write_bytes(b"hello")
    key_file = tmp_path / "key.txt"
    key_file.write_text("ab" * 32)
    key_file.chmod(0)
    if os.geteuid() == 0:  # root reads a mode-000 file: make the open fail as it would for others

        def refuse(path: str, *args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(cli, "open", refuse, raising=False)
    code, out, err = run("backup", "encrypt", str(tmp_path / "p"), str(tmp_path / "x"),
                         "--key-file", str(key_file))  # fmt: skip
    assert code == 2 and f"cannot read the key file {key_file}: Permission denied" in err
    assert "abab" not in out + err and not (tmp_path / "x").exists()


def test_a_key_given_as_the_key_file_name_is_not_echoed(run: Run, tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"hello")
    key = "804e 0f27 " * 8
    code, out, err = run("backup", "encrypt", str(tmp_path / "p"), str(tmp_path / "x"),
                         "--key-file", key)  # fmt: skip
    assert code == 2 and "not the key itself" in err and "804e" not in out + err


def test_backup_decrypt_with_the_wrong_key_leaves_no_output(run: Run, tmp_path: Path) -> None:
    src, enc, dec = tmp_path / "p", tmp_path / "p.bkv", tmp_path / "p.out"
    src.write_bytes(b"hello" * 1000)
    assert run("backup", "encrypt", str(src), str(enc), stdin="11" * 32)[0] == 0
    code, _, err = run("backup", "decrypt", str(enc), str(dec), stdin="22" * 32)
    assert code == 2 and "corrupt" in err
    assert not dec.exists() and [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_backup_missing_source_is_exit_2(run: Run, tmp_path: Path) -> None:
    code, _, err = run(
        "backup", "encrypt", str(tmp_path / "nope"), str(tmp_path / "x"), stdin="11" * 32
    )
    assert code == 2 and "no such file" in err


def test_hidden_ksf_option_is_accepted_but_not_in_help(run: Run) -> None:
    assert "--ksf" not in cli.build_parser().format_help()
    assert run("--ksf", "fast", "keygen")[0] == 0
    assert run("--ksf", "slow", "keygen")[0] == 2


def test_the_password_never_appears_in_any_output(run: Run) -> None:
    outputs: list[str] = []
    for argv, stdin in [
        (("account", "create"), ""),
        (("register", "--password-stdin"), SECRET),
        (("--json", "recover", "--password-stdin"), SECRET + "x"),
        (("recover", "--password-stdin"), SECRET + "x"),
        (("--json", "recover", "--password-stdin"), SECRET),
    ]:
        _code, out, err = run(*argv, stdin=stdin)
        outputs.append(out + err)
    assert all(SECRET not in o for o in outputs)


def test_account_change_key_replaces_the_key_and_keeps_the_backup_key(run: Run) -> None:
    run("account", "create")
    run.passwords = [SECRET, SECRET]
    _, out, _ = run("--json", "register")
    key = json.loads(out)["key"]
    before = json.loads(run("--json", "account", "show")[1])["public_key"]
    code, out, err = run("--json", "account", "change-key", "--password-stdin", stdin=SECRET)
    assert code == 0, err
    after = json.loads(out)["public_key"]
    assert (
        after != before and json.loads(run("--json", "account", "show")[1])["public_key"] == after
    )
    assert run.frontends.accounts["alice"].hex() == after
    code, out, _ = run("--json", "recover", "--password-stdin", stdin=SECRET)
    assert code == 0 and json.loads(out)["key"] == key
    assert SECRET not in out


def test_key_loss_new_device_rebind_request_and_status(run: Run, tmp_path: Path) -> None:
    run("account", "create")
    run("register", "--password-stdin", stdin=SECRET)
    new_dir = tmp_path / "new-device"
    code, out, err = run("--key-dir", str(new_dir), "--json", "account", "create", "--no-login")
    assert code == 0, err
    new_key = json.loads(out)["public_key"]
    # Before the operator's rebind the frontends refuse the new key.
    assert run("--key-dir", str(new_dir), "status")[0] == 7
    run.frontends.accounts["alice"] = bytes.fromhex(new_key)  # the operator's half (fake)
    run.frontends.tokens.clear()
    code, out, err = run("--key-dir", str(new_dir), "--json", "account", "rebind-request")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["rebind_pending"] and shown["rebind_key"] == new_key
    code, out, err = run("--key-dir", str(new_dir), "account", "rebind-request")
    assert code == 0 and "rebind pending to key" in out and "matures" in out
    # The vault refuses the new key until the delay (7 days here) has passed.
    code, out, _ = run("--key-dir", str(new_dir), "--json", "status")
    assert code == 7 and json.loads(out)["error"] == "account_key"
    assert "bound to another account key" in json.loads(out)["message"]
