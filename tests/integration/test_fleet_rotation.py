"""`bkv-cluster rotate-fleet` on a real local cluster while recoveries run (issue 17, section 2).

One rotation, epoch 1 -> 2, on a cluster whose OPAQUE context is the empty string (section 3),
with three clients recovering in a loop and one spending wrong guesses the whole time, all
pinned to epoch 1's key and the fleet root key. Then: no recovery failed, the guess limit held
(evaluations counted from the nodes' audit lines), the clients learnt the new key through the
frontends, forged announcements are refused, an envelope to the retired key is refused with
nothing applied, and no token holds an object of epoch 1's rotated keys.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cluster_fixtures import own_cluster
from cryptography.hazmat.primitives.asymmetric import ed25519

from bkv.v1 import fleet_pb2
from bkv_chaos import insider
from client import VaultClient
from client.config import ClientConfig, load_config
from client.errors import (
    ConfigError,
    FleetAnnouncementRefused,
    InvalidPassword,
    Locked,
    UnknownFleetKey,
    VaultError,
)
from deploy.cluster import Cluster
from vault_common.audit_line import AuditEvent, read_audits
from vault_node import ceremony
from vault_node.config import NodeConfig
from vault_node.softhsm import TokenSpec
from vault_protocol.fleet import parse_announcement, sign_announcement

pytestmark = pytest.mark.integration

PASSWORD = "the right passphrase, rotated fleet"
LOAD_ACCOUNTS = 3
MAX_RECOVERIES = 400  # per load client: the load is bounded in count as well as in time
TARGET_MAX_ATTEMPTS = 4
AFTER_ROTATION_S = 4.0


@dataclass
class Worker:
    """One client recovering (or guessing) in a loop; what it saw."""

    client: VaultClient
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    after_rotation: int = 0
    thread: threading.Thread | None = None


@dataclass
class Run:
    cluster: Cluster
    config: ClientConfig  # client.toml as it was before the rotation (epoch 1 pinned)
    keys: Path
    load: list[Worker]
    guesser: Worker
    sleeper: VaultClient  # pinned to epoch 1, idle during the rotation
    stale_pin: VaultClient  # pinned to epoch 1 without the root key: cannot learn
    rotation_s: float
    audit: tuple[AuditEvent, ...] = ()

    def evaluations(self, account: str) -> int:
        rid = insider.record_id_of(self.cluster, account).hex()
        return sum(1 for e in self.audit if e.record_id == rid and e.event == "evaluate")


def _recover_loop(worker: Worker, stop: threading.Event, rotated: threading.Event) -> None:
    for _ in range(MAX_RECOVERIES):
        if stop.is_set():
            return
        try:
            worker.client.recover(PASSWORD)
            worker.outcomes["ok"] += 1
            worker.after_rotation += rotated.is_set()
        except VaultError as exc:  # any failure of a right password is a failure of the test
            worker.failures.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.15)  # under the frontends' account rate limit (20 relays per second)


def _guess_loop(worker: Worker, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            worker.client.recover("not " + PASSWORD)
            worker.failures.append("a wrong password recovered the key")
        except InvalidPassword:
            worker.outcomes["invalid_password"] += 1
        except Locked:
            worker.outcomes["locked"] += 1
        except VaultError as exc:
            worker.failures.append(f"{type(exc).__name__}: {exc}")
        stop.wait(1.5)


def _client(config: ClientConfig, keys: Path, *, account: str | None = None) -> VaultClient:
    return VaultClient(config, key_dir=keys, ksf="fast", account_id=account)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    options = {"ticket_ttl_s": 10, "opaque_context": ""}
    with own_cluster("bkv-rotate-", one_node_per_dc=True, options=options) as cluster:
        keys = tmp_path_factory.mktemp("keys")
        config = load_config(cluster.client_config_path)
        assert config.fleet_epoch == 1 and config.fleet_root_key and config.opaque_context == ""
        load = [Worker(_client(config, keys)) for _ in range(LOAD_ACCOUNTS)]
        guesser = Worker(_client(config, keys))
        sleeper, stale_pin = _client(config, keys), _client(config, keys)
        for worker in load:
            worker.client.create_account()
            worker.client.register(PASSWORD)  # the empty OPAQUE context registers...
            worker.client.recover(PASSWORD)  # ...and recovers
        guesser.client.create_account()
        guesser.client.register(PASSWORD, max_attempts=TARGET_MAX_ATTEMPTS)
        for client in (sleeper, stale_pin):
            client.create_account()
            client.register(PASSWORD)
        no_root = dataclasses.replace(config, fleet_root_key="")
        stale_pin.close()
        stale_pin = _client(no_root, keys, account=stale_pin.account_id)

        stop, rotated = threading.Event(), threading.Event()
        for worker in load:
            worker.thread = threading.Thread(target=_recover_loop, args=(worker, stop, rotated))
        guesser.thread = threading.Thread(target=_guess_loop, args=(guesser, stop))
        for worker in (*load, guesser):
            assert worker.thread is not None
            worker.thread.start()
        started = time.monotonic()
        try:
            cluster.rotate_fleet(timeout_s=180)
            rotation_s = time.monotonic() - started
            rotated.set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                w.after_rotation < 3 and w.thread is not None and w.thread.is_alive() for w in load
            ):
                time.sleep(0.2)
            time.sleep(AFTER_ROTATION_S)
        finally:
            stop.set()
            for worker in (*load, guesser):
                assert worker.thread is not None
                worker.thread.join(timeout=60)
        result = Run(cluster, config, keys, load, guesser, sleeper, stale_pin, rotation_s)
        result.audit = read_audits((cluster.directory / "logs").glob("*.audit.jsonl"))
        try:
            yield result
        finally:
            for client in (*(w.client for w in load), guesser.client, sleeper, stale_pin):
                client.close()


@pytest.mark.timeout(900)
def test_no_recovery_failed_and_every_client_crossed_to_the_new_key(run: Run) -> None:
    for worker in run.load:
        assert worker.failures == [], worker.failures
        assert worker.outcomes["ok"] > 0 and worker.after_rotation >= 1, worker.outcomes
        # Logged in before the rotation, they met the retired key's refusal after it, learnt
        # the new key from the signed announcement and resent step 1: epoch 2 now.
        assert worker.client.fleet.epoch == 2
        # No guess was lost on the way: every recovery forgave its own.
        status = worker.client.status()
        assert status.guesses_left == status.max_attempts == 10
    assert "reseal" in {e.event for e in run.audit}
    fleet_lines = [e for e in run.audit if e.event == "fleet"]
    assert len(fleet_lines) >= 4 * 3  # each node: start, and 3 reloads (install, switch, retire)
    log = (run.cluster.layout.rotation_dir / "log.jsonl").read_text().splitlines()
    steps = {e["step"]: e["seconds"] for e in map(json.loads, log) if e["event"] == "done"}
    print(
        f"rotation {run.rotation_s:.1f} s, steps {steps}; recoveries "
        f"{[w.outcomes['ok'] for w in run.load]} (after it {[w.after_rotation for w in run.load]})"
        f", reseal lines {sum(e.event == 'reseal' for e in run.audit)}"
    )


@pytest.mark.timeout(300)
def test_the_guess_limit_held_through_the_rotation(run: Run) -> None:
    guesser = run.guesser
    assert guesser.failures == [], guesser.failures
    assert guesser.outcomes["invalid_password"] == TARGET_MAX_ATTEMPTS, guesser.outcomes
    assert guesser.outcomes["locked"] >= 1, guesser.outcomes
    # Counted from the nodes' audit lines: exactly the limit, no evaluation after it.
    assert run.evaluations(guesser.client.account_id or "") == TARGET_MAX_ATTEMPTS
    with pytest.raises(Locked):  # permanent: the right password too
        guesser.client.recover(PASSWORD)


@pytest.mark.timeout(300)
def test_a_client_holding_only_the_old_pin_learns_the_new_key_through_the_frontend(
    run: Run,
) -> None:
    assert run.sleeper.fleet.epoch == 1  # idle during the rotation: still epoch 1's pin
    run.sleeper.recover(PASSWORD)
    assert run.sleeper.fleet.epoch == 2
    assert run.sleeper.refresh_fleet() == 2


@pytest.mark.timeout(300)
def test_an_envelope_to_the_retired_key_is_refused_with_nothing_applied(run: Run) -> None:
    account = run.stale_pin.account_id or ""
    before = run.evaluations(account)
    with pytest.raises(UnknownFleetKey):
        run.stale_pin.recover(PASSWORD)  # no root key: it cannot learn the new one
    run.audit = read_audits((run.cluster.directory / "logs").glob("*.audit.jsonl"))
    assert run.evaluations(account) == before
    learner = _client(run.config, run.keys, account=account)
    try:
        status = learner.status()  # the same account through a client that learns the key
        assert status.registered and status.guesses_left == 10
    finally:
        learner.close()


@pytest.mark.timeout(300)
def test_forged_announcements_are_refused(run: Run) -> None:
    etcd = run.cluster.etcd_as_root()
    genuine = etcd.announcement()
    assert genuine is not None
    payload = fleet_pb2.SignedFleetAnnouncement.FromString(genuine).announcement
    impostor = ed25519.Ed25519PrivateKey.generate()
    forged = dict(
        wrong_signature=sign_announcement(parse_announcement(payload), impostor.sign),
        unsigned=fleet_pb2.SignedFleetAnnouncement(announcement=payload).SerializeToString(),
        # Validly signed by the root key, but epoch 1's: a replay must not take a client back.
        lower_epoch=run.cluster.layout.announcement(1).read_bytes(),
    )
    client = _client(run.config, run.keys, account=run.load[0].client.account_id)
    try:
        assert client.refresh_fleet() == 2
        for name, announcement in forged.items():
            etcd.publish(announcement)
            time.sleep(1.1)  # the frontends cache the announcement for a second
            with pytest.raises(FleetAnnouncementRefused):
                client.refresh_fleet()
            assert client.fleet.epoch == 2, name
        etcd.publish(genuine)
        time.sleep(1.1)
        assert client.refresh_fleet() == 2
        client.recover(PASSWORD)
    finally:
        etcd.publish(genuine)
        client.close()


@pytest.mark.timeout(300)
def test_no_token_holds_an_object_of_the_retired_keys(run: Run) -> None:
    for node in run.cluster.topology.nodes:
        hsm = NodeConfig.load(run.cluster.layout.config(node.name), check_files=False).hsm
        spec = TokenSpec(hsm.module, Path(hsm.softhsm_conf), hsm.token_label, Path(hsm.pin_file))
        status = ceremony.token_step("fleet-status", spec)
        assert status["accepted"] == [2] and status["seal"] == 2, status
        assert {"kem", "record", "ticket"}.isdisjoint(status["keys"]), status
        assert {"kem.2", "record.2", "ticket.2", "oprf_seed", "id_mac"} <= set(status["keys"])
        assert len(status["retired_fleet_ids"]) == 1


@pytest.mark.timeout(300)
def test_a_client_with_another_opaque_context_fails_cleanly(run: Run) -> None:
    account = run.load[1].client.account_id or ""
    before = run.evaluations(account)
    wrong = dataclasses.replace(run.config, opaque_context="BKV-v1")
    client = _client(wrong, run.keys, account=account)
    try:
        with pytest.raises(ConfigError, match="opaque_context"):
            client.recover(PASSWORD)  # refused before any envelope: no guess spent
    finally:
        client.close()
    run.audit = read_audits((run.cluster.directory / "logs").glob("*.audit.jsonl"))
    assert run.evaluations(account) == before
