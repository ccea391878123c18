"""Serve one workload with the published rlmesh package, in the peer's interpreter.

Run by ``bench_transports.py`` (never imported)::

    PEER_PYTHON -I benchmarks/_peer_server.py --env image --kwargs '{"nbytes": 28672}' \\
        --address unix:///tmp/x/peer.sock

It prints one JSON line, ``{"address": ..., "rlmesh": VERSION}``, once the
server is bound, then serves until it is terminated. Imports only the standard
library, numpy, gymnasium, the published ``rlmesh`` and ``_peer.py`` beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _peer, under python -I too

from _peer import CARTPOLE, IMAGE, import_published, make_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", required=True, choices=[CARTPOLE, IMAGE], help="what to serve")
    parser.add_argument("--kwargs", default="{}", help="the env's keyword arguments, as JSON")
    parser.add_argument("--address", required=True, help="unix://PATH or HOST:PORT (port 0: any)")
    args = parser.parse_args()
    rlmesh = import_published()
    server = rlmesh.EnvServer(make_env(args.env, json.loads(args.kwargs)), args.address)
    print(json.dumps({"address": server.address, "rlmesh": rlmesh.__version__}), flush=True)
    server.serve()


if __name__ == "__main__":
    main()
