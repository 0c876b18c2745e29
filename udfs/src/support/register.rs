//! The registration macros: each function file ends with one, which makes the function's
//! shared instance, `udf()`, created on first use (as DataFusion's `make_udf_function!`).
//! lib.rs's `functions!` list names each file once and builds the registries from them.

macro_rules! scalar_udf {
    ($make:expr) => {
        /// This function's shared instance, created on first use.
        pub fn udf() -> std::sync::Arc<datafusion::logical_expr::ScalarUDF> {
            static INSTANCE: std::sync::LazyLock<
                std::sync::Arc<datafusion::logical_expr::ScalarUDF>,
            > = std::sync::LazyLock::new(|| {
                std::sync::Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl($make))
            });
            std::sync::Arc::clone(&INSTANCE)
        }
    };
}

macro_rules! aggregate_udf {
    ($make:expr) => {
        /// This function's shared instance, created on first use.
        pub fn udf() -> std::sync::Arc<datafusion::logical_expr::AggregateUDF> {
            static INSTANCE: std::sync::LazyLock<
                std::sync::Arc<datafusion::logical_expr::AggregateUDF>,
            > = std::sync::LazyLock::new(|| {
                std::sync::Arc::new(datafusion::logical_expr::AggregateUDF::new_from_impl($make))
            });
            std::sync::Arc::clone(&INSTANCE)
        }
    };
}

macro_rules! window_udf {
    ($make:expr) => {
        /// This function's shared instance, created on first use.
        pub fn udf() -> std::sync::Arc<datafusion::logical_expr::WindowUDF> {
            static INSTANCE: std::sync::LazyLock<
                std::sync::Arc<datafusion::logical_expr::WindowUDF>,
            > = std::sync::LazyLock::new(|| {
                std::sync::Arc::new(datafusion::logical_expr::WindowUDF::new_from_impl($make))
            });
            std::sync::Arc::clone(&INSTANCE)
        }
    };
}

pub(crate) use {aggregate_udf, scalar_udf, window_udf};
