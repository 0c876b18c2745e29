//! ArrowQuant's SQL functions for Apache DataFusion, and the kernels behind them.
//!
//! - [`kernels`]: numeric code on plain slices (no Arrow types): quantization schemes, bit
//!   packing, GGUF blocks, metrics, statistics, a mergeable histogram sketch.
//! - [`udfs`]: one constructor per SQL function; [`register_all`] registers them all.
//! - [`functions`]: `Expr` helpers for the DataFrame API.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

pub mod common;
pub mod doc;
pub mod kernels;
mod pair_aggregate;
mod pair_metric;
mod quant_args;
mod window;

pub mod clip_outliers;
pub mod column_absmax;
pub mod compression_ratio;
pub mod cosine_similarity;
pub mod dequantize;
pub mod equalize;
pub mod error_sums;
pub mod markov_smoothness;
pub mod markov_violation;
pub mod max_abs_error;
pub mod mse;
pub mod quant_error;
pub mod quant_mse;
pub mod quant_params;
pub mod quantize;
pub mod quantize_measured;
pub mod quantized_codes;
pub mod smooth_scales;
pub mod sqnr_db;
pub mod stored_bytes;
pub mod sums_cosine;
pub mod tensor_cosine;
pub mod tensor_mse;
pub mod thermo_objective;
pub mod thermo_optimize;
pub mod thermo_smooth;
pub mod timestep_group;
pub mod timestep_group_adaptive;
pub mod weight_stats;
pub mod weight_stats_agg;

/// One shared instance of every function, created on first use.
pub mod udfs {
    use std::sync::{Arc, LazyLock};

    use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};

    macro_rules! scalar {
        ($name:ident, $make:expr) => {
            pub fn $name() -> Arc<ScalarUDF> {
                static INSTANCE: LazyLock<Arc<ScalarUDF>> =
                    LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl($make)));
                Arc::clone(&INSTANCE)
            }
        };
    }

    macro_rules! aggregate {
        ($name:ident, $make:expr) => {
            pub fn $name() -> Arc<AggregateUDF> {
                static INSTANCE: LazyLock<Arc<AggregateUDF>> =
                    LazyLock::new(|| Arc::new(AggregateUDF::new_from_impl($make)));
                Arc::clone(&INSTANCE)
            }
        };
    }

    macro_rules! window {
        ($name:ident, $make:expr) => {
            pub fn $name() -> Arc<WindowUDF> {
                static INSTANCE: LazyLock<Arc<WindowUDF>> =
                    LazyLock::new(|| Arc::new(WindowUDF::new_from_impl($make)));
                Arc::clone(&INSTANCE)
            }
        };
    }

    scalar!(quantize_udf, crate::quantize::Quantize::default());
    scalar!(dequantize_udf, crate::dequantize::Dequantize::default());
    scalar!(
        quantize_measured_udf,
        crate::quantize_measured::QuantizeMeasured::default()
    );
    scalar!(
        quantized_codes_udf,
        crate::quantized_codes::QuantizedCodes::default()
    );
    scalar!(sums_cosine_udf, crate::sums_cosine::SumsCosine::default());
    scalar!(
        cosine_similarity_udf,
        crate::cosine_similarity::cosine_similarity()
    );
    scalar!(mse_udf, crate::mse::mse());
    scalar!(sqnr_db_udf, crate::sqnr_db::sqnr_db());
    scalar!(max_abs_error_udf, crate::max_abs_error::max_abs_error());
    scalar!(
        compression_ratio_udf,
        crate::compression_ratio::CompressionRatio::default()
    );
    scalar!(quant_error_udf, crate::quant_error::QuantError::default());
    scalar!(error_sums_udf, crate::error_sums::ErrorSums::default());
    scalar!(
        timestep_group_udf,
        crate::timestep_group::TimestepGroup::default()
    );
    scalar!(quant_mse_udf, crate::quant_mse::QuantMse::default());
    scalar!(
        smooth_scales_udf,
        crate::smooth_scales::SmoothScales::default()
    );
    scalar!(equalize_udf, crate::equalize::Equalize::default());
    scalar!(
        clip_outliers_udf,
        crate::clip_outliers::ClipOutliers::default()
    );
    scalar!(
        stored_bytes_udf,
        crate::stored_bytes::StoredBytes::default()
    );
    scalar!(
        weight_stats_udf,
        crate::weight_stats::WeightStats::default()
    );

    aggregate!(tensor_cosine_udaf, crate::tensor_cosine::tensor_cosine());
    aggregate!(tensor_mse_udaf, crate::tensor_mse::tensor_mse());
    aggregate!(
        quant_params_udaf,
        crate::quant_params::QuantParams::default()
    );
    aggregate!(
        column_absmax_udaf,
        crate::column_absmax::ColumnAbsmax::default()
    );
    aggregate!(
        weight_stats_agg_udaf,
        crate::weight_stats_agg::WeightStatsAgg::default()
    );

    window!(
        markov_smoothness_udwf,
        crate::markov_smoothness::MarkovSmoothness::default()
    );
    window!(
        markov_violation_udwf,
        crate::markov_violation::MarkovViolation::default()
    );
    window!(
        thermo_smooth_udwf,
        crate::thermo_smooth::ThermoSmooth::default()
    );
    window!(
        thermo_optimize_udwf,
        crate::thermo_optimize::ThermoOptimize::default()
    );
    window!(
        thermo_objective_udwf,
        crate::thermo_objective::ThermoObjective::default()
    );
    window!(
        timestep_group_adaptive_udwf,
        crate::timestep_group_adaptive::TimestepGroupAdaptive::default()
    );

    /// Every scalar function.
    pub fn scalar_udfs() -> Vec<Arc<ScalarUDF>> {
        vec![
            quantize_udf(),
            dequantize_udf(),
            quantize_measured_udf(),
            quantized_codes_udf(),
            cosine_similarity_udf(),
            sums_cosine_udf(),
            mse_udf(),
            sqnr_db_udf(),
            max_abs_error_udf(),
            compression_ratio_udf(),
            quant_error_udf(),
            error_sums_udf(),
            stored_bytes_udf(),
            weight_stats_udf(),
            timestep_group_udf(),
            quant_mse_udf(),
            smooth_scales_udf(),
            equalize_udf(),
            clip_outliers_udf(),
        ]
    }

    /// Every window function.
    pub fn window_udfs() -> Vec<Arc<WindowUDF>> {
        vec![
            timestep_group_adaptive_udwf(),
            markov_smoothness_udwf(),
            markov_violation_udwf(),
            thermo_smooth_udwf(),
            thermo_optimize_udwf(),
            thermo_objective_udwf(),
        ]
    }

    /// Every aggregate function.
    pub fn aggregate_udfs() -> Vec<Arc<AggregateUDF>> {
        vec![
            tensor_cosine_udaf(),
            tensor_mse_udaf(),
            quant_params_udaf(),
            weight_stats_agg_udaf(),
            column_absmax_udaf(),
        ]
    }
}

/// `Expr` helpers for the DataFrame API: `quantize(col("weights"), lit(4))`. Optional
/// arguments go through the UDF itself: `udfs::quantize_udf().call(vec![...])`.
pub mod functions {
    use datafusion::logical_expr::Expr;

    use crate::udfs;

    pub fn quantize(weights: Expr, bits: Expr) -> Expr {
        udfs::quantize_udf().call(vec![weights, bits])
    }
    pub fn dequantize(q: Expr) -> Expr {
        udfs::dequantize_udf().call(vec![q])
    }
    pub fn quantize_measured(weights: Expr, bits: Expr) -> Expr {
        udfs::quantize_measured_udf().call(vec![weights, bits])
    }
    pub fn quantized_codes(q: Expr) -> Expr {
        udfs::quantized_codes_udf().call(vec![q])
    }
    pub fn cosine_similarity(a: Expr, b: Expr) -> Expr {
        udfs::cosine_similarity_udf().call(vec![a, b])
    }
    pub fn mse(a: Expr, b: Expr) -> Expr {
        udfs::mse_udf().call(vec![a, b])
    }
    pub fn sqnr_db(a: Expr, b: Expr) -> Expr {
        udfs::sqnr_db_udf().call(vec![a, b])
    }
    pub fn max_abs_error(a: Expr, b: Expr) -> Expr {
        udfs::max_abs_error_udf().call(vec![a, b])
    }
    pub fn compression_ratio(q: Expr) -> Expr {
        udfs::compression_ratio_udf().call(vec![q])
    }
    pub fn quant_error(weights: Expr, bits: Expr) -> Expr {
        udfs::quant_error_udf().call(vec![weights, bits])
    }
    pub fn weight_stats(weights: Expr) -> Expr {
        udfs::weight_stats_udf().call(vec![weights])
    }
    pub fn tensor_cosine(a: Expr, b: Expr) -> Expr {
        udfs::tensor_cosine_udaf().call(vec![a, b])
    }
    pub fn tensor_mse(a: Expr, b: Expr) -> Expr {
        udfs::tensor_mse_udaf().call(vec![a, b])
    }
    pub fn quant_params(values: Expr, bits: Expr) -> Expr {
        udfs::quant_params_udaf().call(vec![values, bits])
    }
    pub fn weight_stats_agg(weights: Expr) -> Expr {
        udfs::weight_stats_agg_udaf().call(vec![weights])
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
