//! The refusal struct, `{reason, beyond_f16, max_abs}`: why the pipeline's `quantize_measured`
//! refused a row (see `QuantizeMeasured::reporting_refusals`).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields};

use crate::kernels::KernelError;

/// The fields, in order.
pub fn refusal_fields() -> Fields {
    Fields::from(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("beyond_f16", DataType::Boolean, false),
        Field::new("max_abs", DataType::Float32, false),
    ])
}

/// The `refused` column: one entry per row, NULL where the row quantized.
#[derive(Default)]
pub struct RefusalBuilder {
    reason: StringBuilder,
    beyond_f16: BooleanBuilder,
    max_abs: Float32Builder,
    valid: Vec<bool>,
}

impl RefusalBuilder {
    pub fn append(&mut self, error: &KernelError, x: &[f32]) {
        self.reason.append_value(error.to_string());
        self.beyond_f16
            .append_value(matches!(error, KernelError::ScaleOverflow { .. }));
        // NaN never wins a max, so a row refused for NaN reports its finite magnitude.
        self.max_abs
            .append_value(x.iter().fold(0f32, |m, v| m.max(v.abs())));
        self.valid.push(true);
    }

    pub fn append_null(&mut self) {
        self.reason.append_value("");
        self.beyond_f16.append_value(false);
        self.max_abs.append_value(0.0);
        self.valid.push(false);
    }

    pub fn finish(mut self) -> ArrayRef {
        Arc::new(StructArray::new(
            refusal_fields(),
            vec![
                Arc::new(self.reason.finish()),
                Arc::new(self.beyond_f16.finish()),
                Arc::new(self.max_abs.finish()),
            ],
            Some(self.valid.into()),
        ))
    }
}
