"""ArrowQuant for Python: model-weight quantization as SQL on Apache DataFusion.

- ``register(ctx)`` adds every ArrowQuant function (scalar, aggregate, window and table) to a
  ``datafusion.SessionContext`` from the PyPI ``datafusion`` package, through ``datafusion-ffi``.
- ``ArrowQuantV2`` quantizes whole models (safetensors files, sharded checkpoints, diffusers
  folders) with the same SQL plans as the ``arrowquant`` command line.
- ``connect(uri, token)`` opens a DB-API connection (ADBC Flight SQL) to an ``arrowquant serve``
  server, which ``python -m arrow_quant_v2.server`` also starts.
- ``DiffusionQuantConfig`` resolves a configuration from a profile, a YAML file and
  ``ARROW_QUANT_*`` environment variables.
"""

from ._native import DATAFUSION_VERSION, QuantizationError, __version__
from .api import ArrowQuantV2
from .async_api import AsyncArrowQuantV2
from .client import connect
from .config import DiffusionQuantConfig
from .functions import (
    aggregate_function,
    function_names,
    register,
    scalar_function,
    table_function,
    window_function,
)

__all__ = [
    "DATAFUSION_VERSION",
    "ArrowQuantV2",
    "AsyncArrowQuantV2",
    "DiffusionQuantConfig",
    "QuantizationError",
    "__version__",
    "aggregate_function",
    "connect",
    "function_names",
    "register",
    "scalar_function",
    "table_function",
    "window_function",
]
