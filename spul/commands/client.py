"""Admin client for a running server: `spul upload` and `spul profiles` (bearer token from --token or env)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


def register(subparsers: argparse._SubParsersAction) -> None:
    upload = subparsers.add_parser("upload", help="upload a prompt artifact to a running server")
    upload.add_argument("file", type=Path, help="artifact (.safetensors) written by `spul train`")
    upload.add_argument("--profile", required=True, help="profile id to publish it under")
    upload.add_argument("--no-activate", action="store_true", help="store the version without activating it")
    _add_connection(upload)
    upload.set_defaults(func=run_upload)

    profiles = subparsers.add_parser("profiles", help="list, show, activate or delete profiles on a server")
    actions = profiles.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="every profile with its active and serving version")
    show = actions.add_parser("show", help="one profile's versions")
    show.add_argument("profile")
    activate = actions.add_parser("activate", help="make VERSION the active version")
    activate.add_argument("profile")
    activate.add_argument("version", type=int)
    delete = actions.add_parser("delete", help="delete a profile (or one inactive --version)")
    delete.add_argument("profile")
    delete.add_argument("--version", type=int)
    for parser in (profiles, *actions.choices.values()):
        _add_connection(parser)
    profiles.set_defaults(func=run_profiles, action=None)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=argparse.SUPPRESS,
                        help=f"server URL (env SPUL_SERVER; default {DEFAULT_SERVER})")
    parser.add_argument("--token", default=argparse.SUPPRESS, help="admin token (env SPUL_ADMIN_TOKEN)")


def run_upload(args: argparse.Namespace) -> int:
    from spul.errors import UserError

    if not args.file.is_file():
        raise UserError(f"no artifact at {args.file}")
    params = {"activate": "false" if args.no_activate else "true"}
    body = _call(args, "PUT", f"/admin/profiles/{args.profile}", content=args.file.read_bytes(), params=params)
    print(json.dumps(body, indent=2))
    return 0


def run_profiles(args: argparse.Namespace) -> int:
    action = args.action or "list"
    if action == "list":
        body = _call(args, "GET", "/admin/profiles")
        if not body["profiles"]:
            print(f"no profiles on {_server(args)}: publish one with `spul upload FILE --profile ID`",
                  file=sys.stderr)
        for row in body["profiles"]:
            state = f"error: {row['error']}" if row["error"] else f"serving v{row['serving_version']}"
            print(f"{row['profile']}\tactive v{row['active_version']}\t{state}\tversions {row['versions']}")
        return 0
    path = f"/admin/profiles/{args.profile}"
    if action == "show":
        body = _call(args, "GET", path)
    elif action == "activate":
        body = _call(args, "POST", path + "/activate", json={"version": args.version})
    else:
        params = {"version": str(args.version)} if args.version else None
        body = _call(args, "DELETE", path, params=params) or {"deleted": args.profile, "version": args.version}
    print(json.dumps(body, indent=2))
    return 0


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import logging

    import httpx

    from spul.errors import UserError

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no "HTTP Request: ..." line per call

    server = _server(args)
    token = getattr(args, "token", None) or os.environ.get("SPUL_ADMIN_TOKEN")
    if not token:
        raise UserError("no admin token: pass --token or set SPUL_ADMIN_TOKEN")
    try:
        response = httpx.request(
            method, server.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
        )
    except httpx.TransportError as err:
        raise UserError(f"cannot reach {server}: {err}") from err
    if response.status_code >= 400:
        raise UserError(f"{method} {path} failed ({response.status_code}): {_reason(response)}")
    return response.json() if response.content else None


def _server(args: argparse.Namespace) -> str:
    return getattr(args, "server", None) or os.environ.get("SPUL_SERVER", DEFAULT_SERVER)


def _reason(response: Any) -> str:
    """The server's error message (OpenAI envelope), else the start of the body."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return response.text[:500]
    return str(error.get("message")) if isinstance(error, dict) else response.text[:500]
