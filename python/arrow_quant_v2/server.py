"""``python -m arrow_quant_v2.server``: the ``arrowquant serve`` server, started from Python.

Arrow Flight SQL on ``--flight`` (default 127.0.0.1:50051) with every ArrowQuant function, and
the HTTP jobs API with Prometheus metrics on ``--http`` (default 127.0.0.1:8000). It takes the
flags of ``arrowquant serve`` (``--help`` lists them) and runs until SIGTERM or Ctrl-C.
"""

import sys

from ._native import serve


def main(argv: list[str] | None = None) -> None:
    """Runs the server with ``argv`` (default: the process's arguments)."""
    try:
        serve(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        # The server stopped on SIGINT already; Python saw the same signal afterwards.
        pass


if __name__ == "__main__":
    main()
