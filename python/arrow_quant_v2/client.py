"""A DB-API connection to an ``arrowquant serve`` server, through the ADBC Flight SQL driver."""

from typing import Any


def connect(uri: str = "grpc://127.0.0.1:50051", token: str | None = None, **db_kwargs: Any):
    """Connects to the server's Flight SQL endpoint at ``uri``.

    Returns an ``adbc_driver_flightsql.dbapi`` connection (PEP 249, plus Arrow results with
    ``cursor.fetch_arrow_table()``); every ArrowQuant function and table function is there::

        with connect(token=open("token").read().strip()) as conn, conn.cursor() as cur:
            cur.execute("SELECT layer, quantize(weights, 4) FROM read_safetensors('model')")
            table = cur.fetch_arrow_table()

    Parameters of a statement are ``$1``, ``$2``, … : ``cur.execute("SELECT $1 + 1", (41,))``.
    ``token`` is the server's ``--auth-token-file`` token, sent as a bearer header on every
    call. Needs the ``server`` extra: ``pip install arrow-quant-v2[server]``.
    """
    try:
        from adbc_driver_flightsql import DatabaseOptions
        from adbc_driver_flightsql import dbapi as flightsql
    except ImportError as e:
        raise ImportError(
            "arrow_quant_v2.connect needs the ADBC Flight SQL driver: "
            "pip install 'arrow-quant-v2[server]' (or adbc-driver-flightsql)"
        ) from e
    options = dict(db_kwargs)
    if token is not None:
        options[DatabaseOptions.AUTHORIZATION_HEADER.value] = f"Bearer {token}"
    return flightsql.connect(uri, db_kwargs=options, autocommit=True)
