//! The quantized value's struct, `{codes, scales, offsets, bits, group_size, len, scheme}`:
//! its layout, the one reader every function that takes `q` goes through
//! ([`QuantizedColumn`], which validates what it reads) and the one writer ([`QuantizedBuilder`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Float16Builder, ListArray, ListBuilder, StringArray,
    StringBuilder, StructArray, UInt8Array, UInt8Builder, UInt32Array, UInt32Builder,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float16Type, UInt8Type, UInt32Type};
use datafusion::common::{DataFusionError, Result, exec_datafusion_err, plan_err};

use crate::kernels::KernelError;
use crate::kernels::quantized::{QuantizedRef, QuantizedRow, check_stored};
use crate::kernels::scheme::Scheme;

pub fn float16_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float16, true)))
}

/// Fields of the struct `quantize` returns (documented with `quantize` in the README's function
/// table). They are nullable
/// so that structs built by hand or read back from files cast to this layout.
pub fn quantized_fields() -> Fields {
    Fields::from(vec![
        Field::new("codes", DataType::Binary, true),
        Field::new("scales", float16_list(), true),
        Field::new("offsets", float16_list(), true),
        Field::new("bits", DataType::UInt8, true),
        Field::new("group_size", DataType::UInt32, true),
        Field::new("len", DataType::UInt32, true),
        Field::new("scheme", DataType::Utf8, true),
    ])
}

pub fn quantized_type() -> DataType {
    DataType::Struct(quantized_fields())
}

/// Plans a quantized-struct argument: any struct with the seven fields (in any order, with
/// view, large or nullable variants, as a Parquet round trip may give) is cast to the canonical
/// layout.
pub fn coerce_quantized(function: &str, argument: &str, dt: &DataType) -> Result<DataType> {
    match dt {
        DataType::Struct(fields) => {
            for want in quantized_fields().iter() {
                if fields.find(want.name()).is_none() {
                    return plan_err!(
                        "{function}: argument '{argument}' is a struct without the field '{}' of a quantized value (as returned by quantize)",
                        want.name()
                    );
                }
            }
            Ok(quantized_type())
        }
        DataType::Null => Ok(quantized_type()),
        _ => plan_err!(
            "{function}: argument '{argument}' must be a quantized value (the struct quantize returns), got {dt}"
        ),
    }
}

/// A column of quantized structs, read row by row without copying. [`get`](Self::get) is the
/// one reader every function taking a quantized value uses: it hands out only rows that passed
/// [`check_stored`].
pub struct QuantizedColumn<'a> {
    nulls: Option<NullBuffer>,
    codes: &'a BinaryArray,
    scales: &'a ListArray,
    offsets: &'a ListArray,
    scale_values: &'a [half::f16],
    offset_values: &'a [half::f16],
    scale_nulls: Option<&'a NullBuffer>,
    offset_nulls: Option<&'a NullBuffer>,
    bits: &'a UInt8Array,
    group_size: &'a UInt32Array,
    len: &'a UInt32Array,
    scheme: &'a StringArray,
}

impl<'a> QuantizedColumn<'a> {
    /// Reads the canonical layout ([`quantized_fields`], which planning casts every accepted
    /// struct to); any other layout is an error, not a panic.
    pub fn new(array: &'a ArrayRef) -> Result<Self> {
        let s = array.as_struct_opt().ok_or_else(|| {
            exec_datafusion_err!("expected a quantized struct, got {}", array.data_type())
        })?;
        let column = |name: &str| {
            s.column_by_name(name)
                .ok_or_else(|| exec_datafusion_err!("quantized struct has no field '{name}'"))
        };
        let wrong = |name: &str, column: &ArrayRef| {
            exec_datafusion_err!(
                "quantized struct field '{name}' has type {}, expected {}",
                column.data_type(),
                quantized_fields()
                    .find(name)
                    .map(|(_, f)| f.data_type().to_string())
                    .unwrap_or_default()
            )
        };
        let list =
            |name: &str| -> Result<(&'a ListArray, &'a [half::f16], Option<&'a NullBuffer>)> {
                let c = column(name)?;
                let list = c.as_list_opt::<i32>().ok_or_else(|| wrong(name, c))?;
                let values = list
                    .values()
                    .as_primitive_opt::<Float16Type>()
                    .ok_or_else(|| wrong(name, c))?;
                Ok((list, values.values(), values.nulls()))
            };
        let (scales, scale_values, scale_nulls) = list("scales")?;
        let (offsets, offset_values, offset_nulls) = list("offsets")?;
        let codes = column("codes")?;
        let bits = column("bits")?;
        let group_size = column("group_size")?;
        let len = column("len")?;
        let scheme = column("scheme")?;
        Ok(QuantizedColumn {
            nulls: s.logical_nulls(),
            codes: codes
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("codes", codes))?,
            scales,
            offsets,
            scale_values,
            offset_values,
            scale_nulls,
            offset_nulls,
            bits: bits
                .as_primitive_opt::<UInt8Type>()
                .ok_or_else(|| wrong("bits", bits))?,
            group_size: group_size
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| wrong("group_size", group_size))?,
            len: len
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| wrong("len", len))?,
            scheme: scheme
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("scheme", scheme))?,
        })
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `row`, checked ([`check_stored`]), or `None` when NULL. A row whose own fields are
    /// NULL, or whose scales or offsets hold a NULL, is corrupt: a NULL would read as 0. The
    /// error is the message (callers add the function and row).
    pub fn get(&self, row: usize) -> std::result::Result<Option<QuantizedRef<'a>>, String> {
        self.checked(row).map_err(|e| e.to_string())
    }

    fn checked(&self, row: usize) -> std::result::Result<Option<QuantizedRef<'a>>, KernelError> {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(row)) {
            return Ok(None);
        }
        let corrupt = |message: String| KernelError::Corrupt(message);
        let fields: [(&str, &dyn Array); 7] = [
            ("codes", self.codes),
            ("scales", self.scales),
            ("offsets", self.offsets),
            ("bits", self.bits),
            ("group_size", self.group_size),
            ("len", self.len),
            ("scheme", self.scheme),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, a)| a.is_null(row)) {
            return Err(corrupt(format!("field '{name}' is NULL")));
        }
        let scheme = Scheme::parse(self.scheme.value(row))?;
        let span =
            |what: &str, list: &ListArray, values: &'a [half::f16], nulls: Option<&NullBuffer>| {
                let o = list.value_offsets();
                let (start, end) = (o[row] as usize, o[row + 1] as usize);
                if let Some(g) = nulls.and_then(|n| (start..end).find(|&i| n.is_null(i))) {
                    return Err(corrupt(format!(
                        "the {what} of group {} is NULL",
                        g - start
                    )));
                }
                values
                    .get(start..end)
                    .ok_or_else(|| corrupt(format!("the {what} list is out of bounds")))
            };
        let q = QuantizedRef {
            codes: self.codes.value(row),
            scales: span("scale", self.scales, self.scale_values, self.scale_nulls)?,
            offsets: span(
                "offset",
                self.offsets,
                self.offset_values,
                self.offset_nulls,
            )?,
            bits: self.bits.value(row),
            group_size: self.group_size.value(row),
            len: self.len.value(row),
            scheme,
        };
        check_stored(&q)?;
        Ok(Some(q))
    }
}

/// Builds a column of quantized structs.
pub(crate) struct QuantizedBuilder {
    /// The codes column's bytes and offsets, built by hand to reserve room for them at once.
    code_bytes: Vec<u8>,
    code_offsets: Vec<i32>,
    scales: ListBuilder<Float16Builder>,
    offsets: ListBuilder<Float16Builder>,
    bits: UInt8Builder,
    group_size: UInt32Builder,
    len: UInt32Builder,
    scheme: StringBuilder,
    valid: Vec<bool>,
}

impl QuantizedBuilder {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        let f16_list = || {
            let DataType::List(item) = float16_list() else {
                unreachable!()
            };
            ListBuilder::with_capacity(Float16Builder::new(), rows).with_field(item)
        };
        Self {
            code_bytes: Vec::new(),
            code_offsets: {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                offsets
            },
            scales: f16_list(),
            offsets: f16_list(),
            bits: UInt8Builder::with_capacity(rows),
            group_size: UInt32Builder::with_capacity(rows),
            len: UInt32Builder::with_capacity(rows),
            scheme: StringBuilder::with_capacity(rows, rows * 4),
            valid: Vec::with_capacity(rows),
        }
    }

    pub(crate) fn append(&mut self, q: &QuantizedRow, bits: u8, len: u32, scheme: &str) {
        if self.valid.is_empty() {
            // Rows of a column are usually alike: room for as many as the first one, at once,
            // rather than doubling through tens of megabytes.
            self.code_bytes
                .reserve(q.codes.len() * self.valid.capacity());
        }
        self.code_bytes.extend_from_slice(&q.codes);
        self.push_code_offset();
        self.scales.values().append_slice(&q.scales);
        self.scales.append(true);
        self.offsets.values().append_slice(&q.offsets);
        self.offsets.append(true);
        self.bits.append_value(bits);
        self.group_size.append_value(q.group_size);
        self.len.append_value(len);
        self.scheme.append_value(scheme);
        self.valid.push(true);
    }

    /// Ends a row of codes (an offset past 2 GiB saturates; `finish` refuses the column).
    fn push_code_offset(&mut self) {
        let end = i32::try_from(self.code_bytes.len()).unwrap_or(i32::MAX);
        self.code_offsets.push(end);
    }

    /// A NULL struct, with NULL fields so that `q['bits']` of a NULL row is NULL too.
    pub(crate) fn append_null(&mut self) {
        self.push_code_offset();
        self.scales.append(false);
        self.offsets.append(false);
        self.bits.append_null();
        self.group_size.append_null();
        self.len.append_null();
        self.scheme.append_null();
        self.valid.push(false);
    }

    pub(crate) fn finish(mut self) -> Result<ArrayRef> {
        if i32::try_from(self.code_bytes.len()).is_err() {
            return Err(DataFusionError::Execution(format!(
                "{} bytes of codes in one batch: more than a column of binary values holds \
                 (2 GiB); use smaller batches",
                self.code_bytes.len()
            )));
        }
        let nulls = NullBuffer::from(self.valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let codes = BinaryArray::new(
            OffsetBuffer::new(self.code_offsets.into()),
            Buffer::from_vec(self.code_bytes),
            nulls.clone(),
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(codes),
            Arc::new(self.scales.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.bits.finish()),
            Arc::new(self.group_size.finish()),
            Arc::new(self.len.finish()),
            Arc::new(self.scheme.finish()),
        ];
        Ok(Arc::new(StructArray::new(
            quantized_fields(),
            columns,
            nulls,
        )))
    }
}
