//! ArrowQuant's SQL functions for Apache DataFusion, and the kernels behind them.
//!
//! - [`kernels`]: numeric code on plain slices (no Arrow types): quantization schemes, bit
//!   packing, GGUF blocks, metrics, statistics, a mergeable histogram sketch.
//! - one module per SQL function (`quantize`, `tensor_cosine`, …), each ending with its
//!   registration macro, which makes its `udf()`; [`udfs`] lists them by kind and
//!   [`register_all`] registers them all.
//! - [`layout`]: the structs the functions return and read (quantized value, error sums,
//!   statistics, refusals); [`support`]: what the function files share.
//! - [`functions`]: `Expr` helpers for the DataFrame API.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

pub mod kernels;
pub mod layout;
pub mod support;

/// Declares each function's file (`pub mod NAME;`, which ends with its registration macro)
/// and builds the three registries from the same names: adding a function is its file and
/// its name here.
macro_rules! functions {
    (scalar: $($s:ident),+ ; aggregate: $($a:ident),+ ; window: $($w:ident),+ $(;)?) => {
        $(pub mod $s;)+
        $(pub mod $a;)+
        $(pub mod $w;)+

        /// Every function, by kind, in the order of the README's table.
        pub mod udfs {
            use std::sync::Arc;

            use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

            /// Every scalar function.
            pub fn scalar_udfs() -> Vec<Arc<ScalarUDF>> {
                vec![$(crate::$s::udf()),+]
            }

            /// Every aggregate function.
            pub fn aggregate_udfs() -> Vec<Arc<AggregateUDF>> {
                vec![$(crate::$a::udf()),+]
            }

            /// Every window function.
            pub fn window_udfs() -> Vec<Arc<WindowUDF>> {
                vec![$(crate::$w::udf()),+]
            }
        }
    };
}

functions! {
    scalar: quantize, dequantize, quantize_measured, quantized_codes, cosine_similarity,
        sums_cosine, mse, sqnr_db, max_abs_error, compression_ratio, quant_error, error_sums,
        stored_bytes, weight_stats, timestep_group, quant_mse, smooth_scales, equalize,
        clip_outliers;
    aggregate: tensor_cosine, tensor_mse, quant_params, weight_stats_agg, column_absmax;
    window: allocate_bits, timestep_group_adaptive, markov_smoothness, markov_violation, thermo_smooth,
        thermo_optimize, thermo_objective;
}

/// `Expr` helpers for the DataFrame API: `quantize(col("weights"), lit(4))`. Optional
/// arguments go through the UDF itself: `crate::quantize::udf().call(vec![...])`.
pub mod functions {
    use datafusion::logical_expr::Expr;

    pub fn quantize(weights: Expr, bits: Expr) -> Expr {
        crate::quantize::udf().call(vec![weights, bits])
    }
    pub fn dequantize(q: Expr) -> Expr {
        crate::dequantize::udf().call(vec![q])
    }
    pub fn quantize_measured(weights: Expr, bits: Expr) -> Expr {
        crate::quantize_measured::udf().call(vec![weights, bits])
    }
    pub fn quantized_codes(q: Expr) -> Expr {
        crate::quantized_codes::udf().call(vec![q])
    }
    pub fn cosine_similarity(a: Expr, b: Expr) -> Expr {
        crate::cosine_similarity::udf().call(vec![a, b])
    }
    pub fn mse(a: Expr, b: Expr) -> Expr {
        crate::mse::udf().call(vec![a, b])
    }
    pub fn sqnr_db(a: Expr, b: Expr) -> Expr {
        crate::sqnr_db::udf().call(vec![a, b])
    }
    pub fn max_abs_error(a: Expr, b: Expr) -> Expr {
        crate::max_abs_error::udf().call(vec![a, b])
    }
    pub fn compression_ratio(q: Expr) -> Expr {
        crate::compression_ratio::udf().call(vec![q])
    }
    pub fn quant_error(weights: Expr, bits: Expr) -> Expr {
        crate::quant_error::udf().call(vec![weights, bits])
    }
    pub fn weight_stats(weights: Expr) -> Expr {
        crate::weight_stats::udf().call(vec![weights])
    }
    pub fn tensor_cosine(a: Expr, b: Expr) -> Expr {
        crate::tensor_cosine::udf().call(vec![a, b])
    }
    pub fn tensor_mse(a: Expr, b: Expr) -> Expr {
        crate::tensor_mse::udf().call(vec![a, b])
    }
    pub fn quant_params(values: Expr, bits: Expr) -> Expr {
        crate::quant_params::udf().call(vec![values, bits])
    }
    pub fn weight_stats_agg(weights: Expr) -> Expr {
        crate::weight_stats_agg::udf().call(vec![weights])
    }
}

/// Registers every ArrowQuant function into a session.
pub fn register_all(ctx: &SessionContext) {
    for udf in udfs::scalar_udfs() {
        ctx.register_udf(udf.as_ref().clone());
    }
    for udaf in udfs::aggregate_udfs() {
        ctx.register_udaf(udaf.as_ref().clone());
    }
    for udwf in udfs::window_udfs() {
        ctx.register_udwf(udwf.as_ref().clone());
    }
}

/// Registers every ArrowQuant function into any registry (a `SessionState`, a `TaskContext`).
pub fn register_all_into(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for udf in udfs::scalar_udfs() {
        registry.register_udf(Arc::clone(&udf))?;
    }
    for udaf in udfs::aggregate_udfs() {
        registry.register_udaf(Arc::clone(&udaf))?;
    }
    for udwf in udfs::window_udfs() {
        registry.register_udwf(Arc::clone(&udwf))?;
    }
    Ok(())
}
