"""``python -m localaws``: serve localaws until SIGINT or SIGTERM, then exit 0."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from localaws.timing import PROFILES


def _non_negative(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localaws", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=4566, help="port to bind, 0 for a free one (default 4566)"
    )
    parser.add_argument("--clock-speed", type=_non_negative, default=1.0, help="virtual seconds per real second")
    parser.add_argument(
        "--timing",
        choices=sorted(PROFILES),
        default="realistic",
        help="how long simulated states last (default realistic)",
    )
    parser.add_argument(
        "--state-file",
        help="keep the AWS state in this file: restored on start if it exists, saved on stop and periodically",
    )
    parser.add_argument(
        "--state-interval",
        type=_non_negative,
        default=10.0,
        help="seconds between snapshots to --state-file while requests come in (0: only on stop; default 10)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level on stderr (DEBUG logs each request)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from localaws.persistence import StateFileError
    from localaws.server import LocalAWS  # imports moto: after argument errors have had their say

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = LocalAWS(
        host=args.host,
        port=args.port,
        clock_speed=args.clock_speed,
        timing=args.timing,
        state_file=args.state_file,
        state_interval=args.state_interval,
    )
    try:
        server.start()
    except StateFileError as error:
        print(f"localaws: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"localaws: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    # moto builds a few self-referencing URLs from MOTO_PORT, as its own `moto_server` sets it.
    os.environ.setdefault("MOTO_PORT", str(server.port))
    print(f"localaws ready on {server.endpoint_url}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
