"""``rlmesh sandbox base-image | ls | reap``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_parser"]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _run(args: argparse.Namespace) -> int:
    from ..errors import BackendUnavailable, SandboxError
    from . import _docker, _image

    try:
        api = _docker.client()
    except (SandboxError, BackendUnavailable) as exc:
        raise SystemExit(f"rlmesh sandbox: {exc}") from exc
    try:
        if args.sandbox_command == "base-image":
            try:
                tag, built = _image.build_base_image(
                    api,
                    suite=args.suite,
                    mirror=args.mirror,
                    tag=args.tag,
                    cache=args.cache_dir,
                    force=args.force,
                )
            except SandboxError as exc:
                raise SystemExit(f"rlmesh sandbox base-image: {exc}") from exc
            _say(f"{'built' if built else 'reused'} {tag} (also tagged {args.tag})")
        elif args.sandbox_command == "ls":
            rows = _docker.list_sandboxes(api)
            if args.json:
                _say(json.dumps(rows))
            else:
                for row in rows:
                    alive = {True: "alive", False: "dead", None: "unknown"}[row["owner_alive"]]
                    _say(
                        f"{row['id'][:12]}  {row['status']:<8} owner {row['owner_pid']} ({alive})  "
                        f"{row['image']}"
                    )
        else:
            reaped = _docker.reap(api, dry_run=args.dry_run)
            verb = "would remove" if args.dry_run else "removed"
            _say(f"{verb} {len(reaped)} orphaned sandbox container(s)")
            for cid in reaped:
                _say(f"  {cid[:12]}")
    finally:
        api.close()
    return 0


def add_parser(sub: Any) -> None:
    """Add ``sandbox`` and its subcommands to the ``rlmesh`` parser's subparsers."""
    sandbox = sub.add_parser("sandbox", help="Docker sandboxes: base image, list, reap orphans")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    base = sandbox_sub.add_parser(
        "base-image",
        help="build a registry-free Debian base with python3 (debootstrap + docker import; root)",
    )
    base.add_argument("--suite", default="bookworm", help="the Debian suite (default bookworm)")
    base.add_argument("--mirror", default=None, help="a Debian mirror (default: the host's apt mirror)")
    base.add_argument(
        "--tag", default="rlmesh-base:bookworm", help="the image tag (default rlmesh-base:bookworm)"
    )
    base.add_argument(
        "--cache-dir", default=None, help="keep downloaded packages here (debootstrap --cache-dir)"
    )
    base.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    ls = sandbox_sub.add_parser("ls", help="list sandbox containers and whether their owner lives")
    ls.add_argument("--json", action="store_true", help="one JSON list")
    reap = sandbox_sub.add_parser("reap", help="remove sandbox containers whose owner died")
    reap.add_argument("--dry-run", action="store_true")
    sandbox.set_defaults(func=_run)
