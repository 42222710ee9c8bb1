"""kill -9 in the middle of uploads and activations: the store is old-or-new, never partial.

Two levels: a child process looping `PromptStore.put` / `activate`, killed after random delays;
and a real `spul serve` process killed while an HTTP client uploads and activates, then
restarted on the same store. After every kill the store is checked file by file (every version
loads and validates, sidecars match the bytes, ACTIVE names an existing version) and against
what the writer had been told: every acknowledged version is there with the same bytes, and
ACTIVE is the last acknowledged choice or the one in flight.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx

from support.procs import admin_headers, start_child
from support.storecheck import Journal, check_store
from support.writers import store_writer

STORE_KILLS = 8
SERVER_PHASES = ("upload", "activate", "mixed")


def test_store_writer_killed_mid_put_leaves_a_consistent_store(store_dir: Path, make_artifact, fingerprint):
    rng = random.Random(1234)
    bodies = [make_artifact("alpha", num_virtual_tokens=3 + i, seed=40 + i) for i in range(3)]
    journal = Journal.from_state(check_store(store_dir))
    log = store_dir.parent / "writer.jsonl"
    for i in range(STORE_KILLS):
        offset = log.stat().st_size if log.exists() else 0
        child = start_child(store_writer, str(store_dir), bodies, str(log), i)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL, "the writer ended before it was killed"
        with open(log, encoding="utf-8") as fh:
            fh.seek(offset)
            journal.replay(fh.read().splitlines())
        journal.reconcile(check_store(store_dir, fingerprint=fingerprint))
    versions = sum(len(v) for v in journal.versions.values())
    temp_files = check_store(store_dir).temp_files
    print(
        f"store kills: {journal.kills_mid_op}/{STORE_KILLS} mid-operation, {versions} versions, "
        f"{temp_files} orphaned temp files"
    )
    assert journal.kills_mid_op >= 1, "no kill landed inside an operation; the test proved nothing"
    assert versions > len(journal.versions)  # writes happened


class HttpWriter(threading.Thread):
    """Sequential admin client: uploads and/or activations until the server dies under it."""

    def __init__(self, url: str, journal: Journal, bodies: list[bytes], *, phase: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.journal, self.bodies, self.phase = url, journal, bodies, phase
        self.rng = random.Random(seed)
        self.acked = 0
        self.error: str | None = None  # a refused operation (assertions in a thread do not fail the test)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=admin_headers(), timeout=30) as client:
            for _ in range(2_000):  # bounded; the server is killed long before
                try:
                    self._one(client)
                except httpx.TransportError:
                    return  # killed under us: the in-flight operation stays unacknowledged
                except AssertionError as err:
                    self.error = str(err)
                    return
                self.acked += 1

    def _one(self, client: httpx.Client) -> None:
        profile = self.rng.choice(["alpha", "beta"])
        upload = self.phase == "upload" or (self.phase == "mixed" and self.rng.random() < 0.5)
        if upload:
            self.journal.begin("put", profile)
            response = client.put(f"/admin/profiles/{profile}", content=self.rng.choice(self.bodies))
            assert response.status_code == 201, response.text
            body = response.json()
            self.journal.put_done(profile, body["version"], body["sha256"], active=body["active"])
        else:
            version = self.rng.choice(sorted(self.journal.versions[profile]))
            self.journal.begin("activate", profile, version)
            response = client.post(f"/admin/profiles/{profile}/activate", json={"version": version})
            assert response.status_code == 200, response.text
            self.journal.activate_done(profile, version)


def assert_serves_the_store(url: str, store_dir: Path) -> None:
    """A restarted server serves exactly each profile's ACTIVE version, and answers."""
    state = check_store(store_dir)
    rows = httpx.get(url + "/admin/profiles", headers=admin_headers(), timeout=30).json()["profiles"]
    assert {r["profile"]: (r["serving_version"], r["error"]) for r in rows} == {
        p: (v, None) for p, v in state.active.items()
    }
    answer = httpx.post(url + "/v1/generate", json={"profile": "alpha", "prompt": "hello world"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["version"] == state.active["alpha"]


def test_server_killed_during_uploads_and_activations_restarts_consistent(
    store_dir: Path, servers, make_artifact, fingerprint
):
    rng = random.Random(99)
    bodies = [make_artifact("alpha", num_virtual_tokens=2 + i, seed=60 + i) for i in range(3)]
    journal = Journal.from_state(check_store(store_dir))
    acked = 0
    for i, phase in enumerate(SERVER_PHASES):
        server = servers(store_dir).wait_ready()
        assert_serves_the_store(server.url, store_dir)
        writer = HttpWriter(server.url, journal, bodies, phase=phase, seed=i)
        writer.start()
        time.sleep(rng.uniform(0.3, 0.8))
        server.kill9()
        writer.join(timeout=30)
        assert not writer.is_alive() and writer.error is None, writer.error
        acked += writer.acked
        journal.reconcile(check_store(store_dir, fingerprint=fingerprint))
    print(f"server kills: {acked} acknowledged operations, {journal.kills_mid_op} kills mid-operation")
    assert acked > 0 and journal.kills_mid_op >= 1
    assert_serves_the_store(servers(store_dir).wait_ready().url, store_dir)
