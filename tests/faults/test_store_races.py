"""Two processes mutating one store at once (what two replicas on one store do).

Each race runs real child processes (forkserver) for a bounded time: upload racing a delete of
the whole profile, and activate racing deletes of versions. No side may fail with anything but
the store's documented refusals, the store must check out file by file afterwards, ACTIVE must
never name a version whose file is gone, and version numbers must only grow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from spul.prompts_store import PromptStore
from support.procs import start_child
from support.storecheck import check_store
from support.writers import race_writer

RACE_S = 1.5


def race(root: Path, roles: list[str], bodies: list[bytes], *, watch=None) -> list[dict]:
    """Run one child per role for RACE_S seconds; `watch()` is called in the parent meanwhile."""
    outs = [root.parent / f"race-{i}-{role}.json" for i, role in enumerate(roles)]
    children = [
        start_child(race_writer, str(root), role, bodies, RACE_S, str(out), i)
        for i, (role, out) in enumerate(zip(roles, outs, strict=True))
    ]
    deadline = time.monotonic() + RACE_S + 30
    while any(c.is_alive() for c in children):
        assert time.monotonic() < deadline, "a racing writer hangs"
        if watch is not None:
            watch()
        time.sleep(0.001)
    for child in children:
        child.join(timeout=5)
        assert child.exitcode == 0, f"racing writer exited with {child.exitcode}"
    return [json.loads(out.read_text()) for out in outs]


def test_upload_racing_profile_delete_never_errors_nor_leaves_a_profile_without_its_artifact(
    store_dir: Path, make_artifact
):
    bodies = [make_artifact("alpha", seed=s) for s in range(3)]
    put, drop = race(store_dir, ["put", "drop"], bodies)
    assert put["errors"] == [] and drop["errors"] == []
    assert len(put["done"]) >= 3 and len(drop["done"]) >= 3, ("the two sides hardly overlapped", put, drop)
    assert put["versions"] == sorted(set(put["versions"])), "a version number was handed out twice"
    state = check_store(store_dir)  # every version loads; ACTIVE names an existing version
    if "alpha" in state.active:
        assert state.active["alpha"] in state.shas["alpha"], state


def test_activate_racing_version_deletes_never_points_active_at_a_deleted_version(store_dir: Path, make_artifact):
    bodies = [make_artifact("alpha", seed=s) for s in range(3)]
    store = PromptStore(store_dir)
    for body in bodies * 2:
        store.put("alpha", body, activate=False)
    dangling: list[int] = []

    def watch() -> None:
        """ACTIVE names a version with no file, and still does once we look again: dangling."""
        active = store.active_version("alpha")
        path = store_dir / "profiles" / "alpha" / f"v{active:06d}.safetensors"
        if active is not None and not path.exists() and store.active_version("alpha") == active:
            dangling.append(active)

    activate, prune = race(store_dir, ["activate", "prune"], bodies, watch=watch)
    assert activate["errors"] == [] and prune["errors"] == []
    assert len(activate["done"]) >= 3 and len(prune["done"]) >= 3, ("the two sides hardly overlapped", activate, prune)
    assert dangling == []
    assert prune["versions"] == sorted(set(prune["versions"])) and min(prune["versions"]) > 7  # never reused
    state = check_store(store_dir)
    assert state.active["alpha"] in state.shas["alpha"], state
