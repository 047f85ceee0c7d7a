"""Provisioned SoftHSM tokens for integration tests, and a probe that drives a token elsewhere.

python-pkcs11 binds a process to the first SOFTHSM2_CONF it loads, so a pytest process can open
at most one token directory in-process. `TokenProbe` runs a `vault_node.hsm.Token` in a child
process (this file run as a script) and forwards calls to it as JSON lines; open as many probes
as there are tokens.

    specs, fleet = provision_tokens(tmp_path, ["node-a", "node-b"])
    with TokenProbe(specs[0]) as a:
        a.call("hmac_sha256", label="id_mac", data=b"alice")
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from vault_node.ceremony import FleetPublic, run_ceremony
from vault_node.softhsm import TokenSpec, create_token

PROBE_TIMEOUT_S = 30.0


def provision_tokens(base_dir: Path, names: list[str]) -> tuple[list[TokenSpec], FleetPublic]:
    """Make one token per name under `base_dir/<name>` and run the ceremony over them.

    The fleet's public files go to `base_dir/fleet`. Deleting `base_dir` removes everything.
    """
    specs = [create_token(base_dir / name, name) for name in names]
    fleet = run_ceremony(specs, base_dir / "fleet")
    return specs, fleet


class ProbeError(Exception):
    """The token raised `kind` in the probe process."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"hex"}:
            return bytes.fromhex(value["hex"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def spec_json(spec: TokenSpec) -> dict[str, str]:
    return {
        "module": spec.module,
        "softhsm_conf": str(spec.softhsm_conf),
        "token_label": spec.token_label,
        "pin_file": str(spec.pin_file),
    }


def _spec_from(value: dict[str, str]) -> TokenSpec:
    return TokenSpec(
        module=value["module"],
        softhsm_conf=Path(value["softhsm_conf"]),
        token_label=value["token_label"],
        pin_file=Path(value["pin_file"]),
    )


class TokenProbe:
    """A `Token` opened in a child process; `call(op, **kwargs)` runs one operation there."""

    def __init__(self, spec: TokenSpec, *, read_write: bool = False) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--probe-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.call("open", spec=spec_json(spec), read_write=read_write)
        except BaseException:
            self.close()
            raise

    def call(self, op: str, **kwargs: Any) -> Any:
        """Run `op` in the child; return its result or raise `ProbeError`."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"op": op, "args": _encode(kwargs)}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"probe process died (exit {self._proc.wait(PROBE_TIMEOUT_S)})")
        reply = json.loads(line)
        if "error" in reply:
            raise ProbeError(reply["error"], reply["message"])
        return _decode(reply["ok"])

    def close(self) -> None:
        """End the child process (closes its token session)."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> TokenProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the child side ---------------------------------------------------------------------------


def _serve() -> None:  # pragma: no cover - runs in the probe process
    from pkcs11 import Attribute, KeyType, ObjectClass

    from vault_node.hsm import P256_EC_PARAMS, Token

    token: Token | None = None

    def need() -> Token:
        assert token is not None
        return token

    def read_value(label: str) -> bytes:
        def read(session: Any) -> bytes:
            wanted = ObjectClass.PRIVATE_KEY if label == "kem" else ObjectClass.SECRET_KEY
            keys = list(session.get_objects({Attribute.CLASS: wanted, Attribute.LABEL: label}))
            assert len(keys) == 1
            return bytes(keys[0][Attribute.VALUE])

        return need().run_in_session(read)

    def tamper(label: str) -> dict[str, str]:
        """Try to switch DERIVE on for a fleet key, in place and in a copy: the error kinds."""

        def attempt(session: Any) -> dict[str, str]:
            wanted = ObjectClass.PRIVATE_KEY if label == "kem" else ObjectClass.SECRET_KEY
            (key,) = session.get_objects({Attribute.CLASS: wanted, Attribute.LABEL: label})
            outcome: dict[str, str] = {}
            try:
                key[Attribute.DERIVE] = True
                outcome["set"] = "allowed"
            except Exception as exc:  # noqa: BLE001 - the refusal is the result
                outcome["set"] = type(exc).__name__
            try:
                key.copy({Attribute.DERIVE: True, Attribute.TOKEN: False})
                outcome["copy"] = "allowed"
            except Exception as exc:  # noqa: BLE001
                outcome["copy"] = type(exc).__name__
            return outcome

        return need().run_in_session(attempt)

    def labels() -> list[str]:
        def read(session: Any) -> list[str]:
            return sorted(
                f"{obj.object_class.name}:{obj[Attribute.LABEL]}" for obj in session.get_objects()
            )

        return need().run_in_session(read)

    def kept_secret(label: str, value: bytes) -> dict[Any, Any]:
        """The template of an imported key the token keeps: stored, private, sensitive and
        never extractable."""
        return {
            Attribute.VALUE: value,
            Attribute.LABEL: label,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }

    def import_ec_private(label: str, value: bytes, public_point: bytes) -> None:
        def create(session: Any) -> None:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.EC_PARAMS: P256_EC_PARAMS,
                    **kept_secret(label, value),
                    Attribute.DERIVE: True,
                }
            )
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.EC_PARAMS: P256_EC_PARAMS,
                    Attribute.EC_POINT: b"\x04\x41" + public_point,
                    Attribute.LABEL: label,
                    Attribute.TOKEN: True,
                }
            )

        need().run_in_session(create)

    def import_secret_key(label: str, value: bytes, key_type: Any, *uses: Any) -> None:
        """A sensitive, non-extractable secret key `value` allowed only `uses`."""

        def create(session: Any) -> None:
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: key_type,
                    **kept_secret(label, value),
                    **dict.fromkeys(uses, True),
                }
            )

        need().run_in_session(create)

    def import_secret(label: str, value: bytes) -> None:
        import_secret_key(label, value, KeyType.GENERIC_SECRET, Attribute.SIGN, Attribute.VERIFY)

    def import_aes(label: str, value: bytes) -> None:
        import_secret_key(label, value, KeyType.AES, Attribute.ENCRYPT, Attribute.DECRYPT)

    def async_burst(peer: bytes, data: bytes, count: int) -> dict[str, Any]:
        tok = need()

        async def burst() -> tuple[list[bytes], list[bytes]]:
            # asyncio callers on many threads at once (the loop's default executor): each call
            # still runs on the one PKCS#11 thread.
            loop = asyncio.get_running_loop()
            ecdhs = [loop.run_in_executor(None, tok.ecdh, peer) for _ in range(count)]
            macs = [
                loop.run_in_executor(None, tok.hmac_sha512, "oprf_seed", data) for _ in range(count)
            ]
            return list(await asyncio.gather(*ecdhs)), list(await asyncio.gather(*macs))

        ecdhs, macs = asyncio.run(burst())
        return {"ecdh_distinct": len(set(ecdhs)), "mac_distinct": len(set(macs)), "ecdh": ecdhs[0]}

    def threads_burst(peer: bytes, count: int) -> int:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: need().ecdh(peer), range(count)))
        return len(set(results))

    def churn(label: str, count: int) -> int:
        """Replace data object `label` `count` times, as a running node rewrites its
        checkpoint: each new object made before the older one is destroyed."""
        for i in range(count):
            need().replace_data(label, b"value %d" % i)
        return count

    def read_many(label: str, count: int) -> list[int]:
        """How many values each of `count` reads of `label` found."""
        return [len(need().read_data(label)) for _ in range(count)]

    def held_many(count: int) -> list[list[str]]:
        """`count` listings of the fleet key labels (as `ceremony_cli fleet-status` makes)."""
        from vault_node.fleet_steps import held_labels

        return [held_labels(need()) for _ in range(count)]

    for line in sys.stdin:
        request = json.loads(line)
        args = _decode(request["args"])
        try:
            op = request["op"]
            if op == "open":
                token = Token.open(_spec_from(args["spec"]), read_write=args["read_write"])
                result: Any = token.label
            elif op == "open_other":
                result = Token.open(_spec_from(args["spec"])).label
            elif op == "read_value":
                result = read_value(args["label"])
            elif op == "tamper":
                result = tamper(args["label"])
            elif op == "labels":
                result = labels()
            elif op == "import_ec_private":
                import_ec_private(**args)
                result = None
            elif op == "import_secret":
                import_secret(**args)
                result = None
            elif op == "import_aes":
                import_aes(**args)
                result = None
            elif op == "async_burst":
                result = async_burst(**args)
            elif op == "threads_burst":
                result = threads_burst(**args)
            elif op == "churn":
                result = churn(**args)
            elif op == "read_many":
                result = read_many(**args)
            elif op == "held_many":
                result = held_many(**args)
            elif op == "close":
                need().close()
                result = None
            else:
                result = getattr(need(), op)(**args)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the test
            reply = {"error": type(exc).__name__, "message": str(exc)}
        else:
            reply = {"ok": _encode(result)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if token is not None:
        token.close()


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["--probe-worker"]:
        _serve()
