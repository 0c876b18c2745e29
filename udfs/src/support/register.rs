//! The registration macros: each function file ends with one, which makes the function's
//! shared instance, `udf()`, created on first use (as DataFusion's `make_udf_function!`).
//! lib.rs's `functions!` list names each file once and builds the registries from them.

/// `pub fn udf() -> Arc<$kind>`: one instance of `$kind::new_from_impl($make)`, made on first use.
macro_rules! shared_udf {
    ($kind:ident, $make:expr) => {
        /// This function's shared instance, created on first use.
        pub fn udf() -> std::sync::Arc<datafusion::logical_expr::$kind> {
            static INSTANCE: std::sync::LazyLock<std::sync::Arc<datafusion::logical_expr::$kind>> =
                std::sync::LazyLock::new(|| {
                    std::sync::Arc::new(datafusion::logical_expr::$kind::new_from_impl($make))
                });
            std::sync::Arc::clone(&INSTANCE)
        }
    };
}

/// Registers a scalar function file's `ScalarUDFImpl`.
macro_rules! scalar_udf {
    ($make:expr) => {
        crate::support::register::shared_udf!(ScalarUDF, $make);
    };
}

/// Registers an aggregate function file's `AggregateUDFImpl`.
macro_rules! aggregate_udf {
    ($make:expr) => {
        crate::support::register::shared_udf!(AggregateUDF, $make);
    };
}

/// Registers a window function file's `WindowUDFImpl`.
macro_rules! window_udf {
    ($make:expr) => {
        crate::support::register::shared_udf!(WindowUDF, $make);
    };
}

pub(crate) use {aggregate_udf, scalar_udf, shared_udf, window_udf};
