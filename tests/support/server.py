"""Talking to a server under test: the admin token, its headers, waiting for readiness."""

from __future__ import annotations

import time

ADMIN_TOKEN = "test-admin-token-0123456789"


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_ready(client, timeout_s: float = 60.0) -> None:
    """Poll `/readyz` through `client` (TestClient or httpx.Client) until 200; fail on `failed`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert response.json()["status"] != "failed", response.json()
        time.sleep(0.05)
    raise AssertionError("server did not become ready")
