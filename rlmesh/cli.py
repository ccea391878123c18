"""The ``rlmesh`` command line: serve, demo, bench, shm, sandbox."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _load_target(target: str, kwargs: dict[str, Any], num_envs: int | None) -> tuple[Any, dict[str, Any]]:
    """What ``rlmesh serve TARGET`` serves: a factory for ``module:factory``, else a Gymnasium id."""
    module_name, sep, attr = target.rpartition(":")
    if sep and attr.isidentifier() and module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SystemExit(f"rlmesh serve: cannot import {module_name!r}: {exc}") from exc
        try:
            factory = getattr(module, attr)
        except AttributeError:
            raise SystemExit(f"rlmesh serve: {module_name!r} has no attribute {attr!r}") from None
        if num_envs is not None and num_envs > 1:
            import gymnasium

            def make_vector() -> Any:
                return gymnasium.vector.SyncVectorEnv([lambda: factory(**kwargs)] * num_envs)

            return make_vector, {}
        return (lambda: factory(**kwargs)), {}
    return target, kwargs


def _auth_token(args: argparse.Namespace) -> str | None:
    """The token of ``--auth-token-file`` (else ``RLMESH_AUTH_TOKEN``); exits if a non-loopback bind has none.

    The token is read from a file, never taken on the command line, where
    every user of the host could read it in ``ps``.
    """
    from .net.address import resolve_address
    from .wire.protocol import auth_token_from_env

    token: str | None = None
    if args.auth_token_file is not None:
        try:
            with open(args.auth_token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
            mode = os.stat(args.auth_token_file).st_mode
        except OSError as exc:
            raise SystemExit(f"rlmesh serve: cannot read --auth-token-file: {exc}") from exc
        if not token:
            raise SystemExit(f"rlmesh serve: --auth-token-file {args.auth_token_file} is empty")
        if mode & 0o077:
            print(
                f"rlmesh serve: warning: {args.auth_token_file} is readable by other users (chmod 600 it)",
                file=sys.stderr,
            )
    try:
        token = auth_token_from_env(token)
        bind = resolve_address(args.address, for_bind=True)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"rlmesh serve: {exc}") from exc
    if token is None and not bind.is_loopback:
        raise SystemExit(
            f"rlmesh serve: serving on {bind} (beyond this host) needs an auth token: "
            "--auth-token-file PATH or RLMESH_AUTH_TOKEN"
        )
    return token


def _serve(args: argparse.Namespace) -> int:
    from .server import EnvServer, ServeOptions

    try:
        kwargs = json.loads(args.kwargs_json) if args.kwargs_json else {}
    except json.JSONDecodeError as exc:
        raise SystemExit(f"rlmesh serve: --kwargs-json is not valid JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise SystemExit("rlmesh serve: --kwargs-json must be a JSON object")
    if args.framework is not None or args.device is not None:
        from ._framework import action_converter

        try:  # before any env is made: a plain message, not a traceback
            action_converter(args.framework, args.device)
        except (ValueError, ImportError) as exc:
            raise SystemExit(f"rlmesh serve: {exc}") from exc
    token = _auth_token(args)
    options = ServeOptions(
        allow_remote_shutdown=args.allow_remote_shutdown,
        idle_timeout_seconds=args.idle_timeout,
        validation=args.validation,
        auth_token=token,
    )
    server = None
    mode = args.vectorization_mode
    restart = None
    if args.max_restarts is not None:
        from ._restart import RestartPolicy

        try:
            restart = RestartPolicy(max_restarts=args.max_restarts, window_seconds=args.restart_window)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"rlmesh serve: {exc}") from exc
    if args.num_envs is not None and args.num_envs >= 2 and mode != "sync":
        # The vector fast path: the workers make the id, or import module:factory, themselves.
        try:
            server = EnvServer(
                args.target,
                args.address,
                options=options,
                num_envs=args.num_envs,
                make_kwargs=kwargs,
                vectorization_mode="async",
                workers=args.workers,
                autoreset_mode=args.autoreset_mode,
                framework=args.framework,
                device=args.device,
                restart=restart,
            )
        except (TypeError, ValueError) as exc:
            if mode == "async" or restart is not None:
                raise SystemExit(f"rlmesh serve: {exc}") from exc
    elif args.workers is not None or restart is not None:
        flag = "--workers" if args.workers is not None else "--max-restarts"
        raise SystemExit(f"rlmesh serve: {flag} needs --num-envs N >= 2 and the async vectorization mode")
    if server is None:
        env, make_kwargs = _load_target(args.target, kwargs, args.num_envs)
        server = EnvServer(
            env,
            args.address,
            options=options,
            num_envs=args.num_envs if isinstance(env, str) else None,
            make_kwargs=make_kwargs,
            framework=args.framework,
            device=args.device,
            autoreset_mode=args.autoreset_mode if isinstance(env, str) and args.num_envs else None,
            # An id keeps the asked in-process mode; a failed fast path is make_vec's choice.
            vectorization_mode=mode if isinstance(env, str) and mode != "async" and args.num_envs else None,
        )
    address = server.address
    print(f"✓ Server address: {address}", flush=True)
    print(
        f"rlmesh: serving {server.env_contract.id} (num_envs={server.env_contract.num_envs}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(address + "\n")
    dial = args.dial or os.environ.get("RLMESH_DIAL")
    if dial:
        # A sandbox: dial the host and serve that one session (rlmesh.sandbox).
        from .sandbox._bootstrap import dial as dial_host

        try:
            sock = dial_host(dial)
        except (ConnectionError, ValueError) as exc:
            server.shutdown()
            raise SystemExit(f"rlmesh serve: {exc}") from exc
        server.serve_connection(sock)
        return 0
    server.serve()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import _demo

    seconds = 0.25 if args.quick else args.seconds
    rounds = 1 if args.quick else 3
    workloads = ["CartPole-v1", "28 KiB obs", "4 MiB obs"]
    print(
        "rlmesh demo: CartPole and image envs served in subprocesses, driven with rlmesh.numpy "
        f"({rounds}x{seconds}s per cell)"
    )
    cells = _demo.run_cells(workloads, _demo.TRANSPORTS, seconds=seconds, rounds=rounds, progress=print)
    sandboxed, skipped = _demo.demo_sandbox_cells(
        build=args.build_sandbox, seconds=seconds, rounds=rounds, progress=print
    )
    if skipped is not None:
        print(skipped)
    cells += sandboxed
    print(f"\n{_demo.VECTOR_WORKLOAD}, one vector env: rlmesh (1 worker) vs gymnasium AsyncVectorEnv")
    vector = _demo.run_vector_cells(seconds=seconds, rounds=rounds, progress=print)
    print()
    print(_demo.table(cells))
    if sandboxed:
        print(_demo.sandbox_ratios(cells))
    print()
    print(_demo.vector_table(vector))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([c.as_dict() for c in [*cells, *vector]], out, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        if _demo.plot(cells, args.plot, vector):
            print(f"\nwrote {args.plot}")
        else:
            print('\nno plot: matplotlib is not installed (pip install "rlmesh[plot]")')
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import _demo

    workloads = args.workload or list(_demo.WORKLOADS)
    for name in workloads:
        if name not in _demo.WORKLOADS:
            raise SystemExit(f"rlmesh bench: unknown workload {name!r}; choose from {list(_demo.WORKLOADS)}")
    transports = args.transport or list(_demo.TRANSPORTS)
    cells = _demo.run_cells(workloads, transports, seconds=args.seconds, rounds=args.rounds)
    for cell in cells:
        print(json.dumps(cell.as_dict()))
    if not args.json_only:
        print()
        print(_demo.table(cells))
    return 0


def _shm(args: argparse.Namespace) -> int:
    from .shm import janitor

    if args.shm_command == "ls":
        segments = janitor.list_segments(all_users=args.all)
        if not segments:
            print("no rlmesh segments in /dev/shm")
            return 0
        print(f"{'name':<26} {'size':>12} {'age':>8} {'pid':>8}  state")
        for seg in segments:
            state = "in use" if seg.alive else "stale (creator gone)"
            pid = f"{seg.pid}" + ("" if seg.same_pidns else "*")
            print(f"{seg.name:<26} {seg.size:>12,} {seg.age:>7.0f}s {pid:>8}  {state}")
        if any(not s.same_pidns for s in segments):
            print("* pid in another pid namespace (a container)")
        return 0
    removed = janitor.clean(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for seg in removed:
        print(f"{verb} {seg.name} ({seg.size:,} bytes)")
    print(f"{verb} {len(removed)} stale segment(s)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlmesh", description="Serve and drive Gymnasium environments across processes."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve an env until interrupted")
    serve.add_argument("target", help="a Gymnasium id (CartPole-v1) or module:factory")
    serve.add_argument(
        "--address",
        default="tcp://127.0.0.1:0",
        help="unix:///path.sock, tcp://host:port, host:port or a port",
    )
    serve.add_argument("--num-envs", type=int, default=None, help="serve a vector env of N copies")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the vector fast path (default: min(N, cores - 1))",
    )
    serve.add_argument(
        "--max-restarts",
        type=int,
        default=None,
        metavar="N",
        help="respawn a fast-path worker that dies, at most N times within --restart-window "
        "(default: no restarts, a dead worker is an error naming its lanes)",
    )
    serve.add_argument(
        "--restart-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the window of --max-restarts (default 60)",
    )
    serve.add_argument(
        "--vectorization-mode",
        choices=["async", "sync", "vector_entry_point"],
        default=None,
        help="async: worker processes (the fast path); sync: one in-process SyncVectorEnv; "
        "vector_entry_point: the id's own vector env (default: async where the target allows it)",
    )
    serve.add_argument(
        "--autoreset-mode",
        choices=["NextStep", "SameStep", "Disabled"],
        default=None,
        help="the vector env's autoreset mode (default NextStep)",
    )
    serve.add_argument(
        "--kwargs-json", default=None, help="keyword arguments for gymnasium.make or the factory, as JSON"
    )
    serve.add_argument(
        "--ready-fd", type=int, default=None, help="write the bound address to this fd, then close it"
    )
    serve.add_argument(
        "--dial",
        default=None,
        help="connect to this unix:// address and serve one session on it (a sandbox's dial-back; "
        "default $RLMESH_DIAL)",
    )
    serve.add_argument("--allow-remote-shutdown", action="store_true", help="let clients stop the server")
    serve.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="a file holding the shared secret clients must send (their auth_token= or "
        "RLMESH_AUTH_TOKEN); required beyond loopback unless RLMESH_AUTH_TOKEN is set",
    )
    serve.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after this many seconds without requests"
    )
    serve.add_argument(
        "--framework",
        choices=["numpy", "jax", "torch"],
        default=None,
        help="the array type the env's step() wants its actions as (default numpy)",
    )
    serve.add_argument(
        "--device", default=None, help="where a jax env wants its actions: cpu, gpu:0... (needs --framework)"
    )
    serve.add_argument(
        "--validation",
        choices=["warn", "strict", "off"],
        default=None,
        help="observation value checks (default: $RLMESH_VALIDATION_POLICY, else warn)",
    )
    serve.set_defaults(func=_serve)

    demo = sub.add_parser("demo", help="serve CartPole and image envs and compare transports")
    demo.add_argument("--seconds", type=float, default=1.0, help="seconds per round of each cell")
    demo.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    demo.add_argument("--plot", default="rlmesh-demo.png", help="where to write the plot ('' for none)")
    demo.add_argument("--json", default=None, help="also write the results as JSON here")
    demo.add_argument(
        "--build-sandbox",
        action="store_true",
        help="build the Docker sandbox rows' image if it is missing (a minute or more; without it, "
        "the sandbox rows run only when the image is already built)",
    )
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="measure workloads over transports; JSON lines")
    bench.add_argument("--workload", action="append", help="a workload name (repeatable); default all")
    bench.add_argument(
        "--transport", action="append", choices=["shm", "unix", "tcp"], help="repeatable; default all"
    )
    bench.add_argument("--seconds", type=float, default=2.0)
    bench.add_argument("--rounds", type=int, default=5)
    bench.add_argument("--json-only", action="store_true")
    bench.set_defaults(func=_bench)

    shm = sub.add_parser("shm", help="list or clean rlmesh shared-memory segments")
    shm_sub = shm.add_subparsers(dest="shm_command", required=True)
    ls = shm_sub.add_parser("ls", help="list segments and whether their creator is alive")
    ls.add_argument("--all", action="store_true", help="every user's segments")
    clean = shm_sub.add_parser("clean", help="remove segments whose creator is gone")
    clean.add_argument("--dry-run", action="store_true")
    shm.set_defaults(func=_shm)

    from .sandbox._cli import add_parser as add_sandbox_parser

    add_sandbox_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
