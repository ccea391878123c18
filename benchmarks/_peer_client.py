"""Step an env served by the published rlmesh package, in the peer's interpreter, and print the rates.

Run by ``bench_transports.py`` (never imported)::

    PEER_PYTHON -I benchmarks/_peer_client.py ADDRESS --seconds 2 --rounds 5

It connects with the published NumPy client, times the steps with the same
``_harness.step_rates`` as every other cell of the benchmark, and prints one
JSON line: ``{"rounds": [steps/s, ...], "rlmesh": VERSION, "python": VERSION}``.
Imports only the standard library, numpy, gymnasium, the published ``rlmesh``,
and ``_harness.py`` and ``_peer.py`` beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _harness and _peer, under python -I too

from _harness import step_rates  # noqa: E402
from _peer import import_published  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("address", help="what _peer_server.py printed")
    parser.add_argument("--seconds", type=float, required=True, help="seconds per round")
    parser.add_argument("--rounds", type=int, required=True, help="rounds")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
    args = parser.parse_args()
    rlmesh = import_published()
    from rlmesh.numpy import RemoteEnv

    env = RemoteEnv(args.address, connect_timeout_seconds=args.connect_timeout)
    try:
        rates = step_rates(env, args.seconds, args.rounds)
    finally:
        env.close()
    print(
        json.dumps(
            {
                "rounds": rates,
                "rlmesh": rlmesh.__version__,
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
