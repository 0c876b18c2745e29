"""ArrowQuant's SQL functions in DataFusion Python sessions.

The functions cross into the PyPI ``datafusion`` package through ``datafusion-ffi`` capsules,
so its major version must be the one this package was built against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _native

if TYPE_CHECKING:
    import datafusion


def _datafusion():
    import datafusion

    built = _native.DATAFUSION_VERSION.split(".")[0]
    found = datafusion.__version__.split(".")[0]
    if built != found:
        raise ImportError(
            f"arrow_quant_v2 was built against DataFusion {_native.DATAFUSION_VERSION}; "
            f"the installed datafusion package is {datafusion.__version__} "
            f"(install datafusion=={built}.*)"
        )
    return datafusion


def _by_name(functions, kind: str, name: str):
    for f in functions:
        if f.name == name:
            return f
    names = ", ".join(sorted(f.name for f in functions))
    raise ValueError(f"no {kind} function named {name!r} (the {kind} functions: {names})")


def scalar_function(name: str) -> datafusion.ScalarUDF:
    """One scalar function for the DataFrame API: ``scalar_function("quantize")(col("w"), lit(4))``."""
    return _datafusion().udf(_by_name(_native.scalar_functions(), "scalar", name))


def aggregate_function(name: str) -> datafusion.AggregateUDF:
    """One aggregate function for the DataFrame API (``DataFrame.aggregate``)."""
    return _datafusion().udaf(_by_name(_native.aggregate_functions(), "aggregate", name))


def window_function(name: str) -> datafusion.WindowUDF:
    """One window function for the DataFrame API (``.over(Window(...))``)."""
    return _datafusion().udwf(_by_name(_native.window_functions(), "window", name))


def table_function(name: str, ctx: datafusion.SessionContext) -> datafusion.TableFunction:
    """One table function (``read_safetensors``, ``safetensors_info``) for the session ``ctx``
    (its plans are decoded with that session's codec)."""
    f = _by_name(_native.table_functions(), "table", name)
    return _datafusion().user_defined.TableFunction(f.name, f, ctx)


def function_names() -> dict[str, list[str]]:
    """The names of every function, by kind."""
    return {
        "scalar": [f.name for f in _native.scalar_functions()],
        "aggregate": [f.name for f in _native.aggregate_functions()],
        "window": [f.name for f in _native.window_functions()],
        "table": [f.name for f in _native.table_functions()],
    }


def register(ctx: datafusion.SessionContext) -> datafusion.SessionContext:
    """Registers every ArrowQuant function into ``ctx`` and returns it.

    >>> from datafusion import SessionContext
    >>> ctx = register(SessionContext())
    >>> ctx.sql("SELECT compression_ratio(quantize([1.0, 2.0, 3.0], 4, 'row'))").collect()
    """
    df = _datafusion()
    if not isinstance(ctx, df.SessionContext):
        raise TypeError(f"register expects a datafusion.SessionContext, got {type(ctx).__name__}")
    for f in _native.scalar_functions():
        ctx.register_udf(df.udf(f))
    for f in _native.aggregate_functions():
        ctx.register_udaf(df.udaf(f))
    for f in _native.window_functions():
        ctx.register_udwf(df.udwf(f))
    for f in _native.table_functions():
        # Built with this session's codec (`datafusion.udtf(f, name)` takes the global
        # context's).
        ctx.register_udtf(df.user_defined.TableFunction(f.name, f, ctx))
    return ctx
