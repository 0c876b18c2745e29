//! The error sums struct, `{n, dot, a_sq, b_sq, err_sq, max_abs_error}`: what `error_sums`
//! and `quantize_measured` return and `sums_cosine` reads.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Builder, Int64Builder, StructArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};

use crate::kernels::metrics::PairSums;

/// The struct's fields, in order.
pub const FIELDS: [&str; 6] = ["n", "dot", "a_sq", "b_sq", "err_sq", "max_abs_error"];

pub fn error_sums_type() -> DataType {
    let fields: Fields = FIELDS
        .iter()
        .map(|&name| {
            let dt = if name == "n" {
                DataType::Int64
            } else {
                DataType::Float64
            };
            Field::new(name, dt, true)
        })
        .collect();
    DataType::Struct(fields)
}

/// Builds a column of `error_sums` structs.
pub(crate) struct SumsBuilder {
    n: Int64Builder,
    sums: [Float64Builder; 5],
    valid: Vec<bool>,
}

impl SumsBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            n: Int64Builder::with_capacity(rows),
            sums: std::array::from_fn(|_| Float64Builder::with_capacity(rows)),
            valid: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn append(&mut self, s: &PairSums) {
        self.n.append_value(s.n as i64);
        for (builder, value) in
            self.sums
                .iter_mut()
                .zip([s.dot, s.aa, s.bb, s.sq_err, s.max_abs_err])
        {
            builder.append_value(value);
        }
        self.valid.push(true);
    }

    pub(crate) fn append_null(&mut self) {
        self.n.append_null();
        self.sums.iter_mut().for_each(|b| b.append_null());
        self.valid.push(false);
    }

    pub(crate) fn finish(mut self) -> ArrayRef {
        let DataType::Struct(fields) = error_sums_type() else {
            unreachable!()
        };
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.n.finish())];
        columns.extend(
            self.sums
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        let nulls = NullBuffer::from(self.valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        Arc::new(StructArray::new(fields, columns, nulls))
    }
}
