//! `quant_params(values, bits [, scheme])`: one scale and offset over many rows.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{Result, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Documentation, Signature};

use crate::kernels::KernelError;
use crate::kernels::error::GRID_BITS;
use crate::kernels::error::check_finite;
use crate::kernels::sketch::{RangeParams, Sketch, clip_search};
use crate::support::args::UserDefined;
use crate::support::args::nullable_fields;
use crate::support::args::{ArgType, Parameters};
use crate::support::args::{FloatRows, arg_error, constant_value, row_error};
use crate::support::doc::DOC_QUANTIZATION;

#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantParams {
    signature: UserDefined,
}

static DOCUMENTATION: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_QUANTIZATION,
        "One set of quantization parameters for all the values of many rows (a whole tensor, \
         or the activations of one timestep group): {scale, offset (the value of code 0), \
         zero_point (the code of 0.0), clip_min, clip_max, min, max, count, mse (expected)}. \
         The values go into a mergeable histogram sketch (exact merges across partitions), \
         and the clipping range is the one with the least expected squared error. NULL rows \
         are skipped; NULL when there are no values; NaN or ±Inf values are an error.",
        "quant_params(values, bits [, scheme])",
    )
    .with_sql_example(
        "```sql\n> SELECT layer, tg, quant_params(values, 8) AS p FROM activations GROUP BY layer, tg;\n```",
    )
    .with_argument("values", "List of Float16, Float32 or Float64.")
    .with_argument("bits", "Code width, 2 to 8 (7 included: no codes are stored), a constant.")
    .with_argument("scheme", "'asym' (default: any range) or 'sym' (a range centred on zero) (a constant).")
    .with_related_udf("quantize")
    .build()
});

fn fields() -> Fields {
    nullable_fields(&[
        ("scale", DataType::Float32),
        ("offset", DataType::Float32),
        ("zero_point", DataType::Int32),
        ("clip_min", DataType::Float32),
        ("clip_max", DataType::Float32),
        ("min", DataType::Float32),
        ("max", DataType::Float32),
        ("count", DataType::UInt64),
        ("mse", DataType::Float64),
    ])
}

fn constant(args: &AccumulatorArgs, index: usize) -> Option<ScalarValue> {
    args.exprs.get(index).and_then(constant_value)
}

fn parse_bits(value: Option<&ScalarValue>) -> Result<u8> {
    match value {
        Some(ScalarValue::Int64(Some(b))) if (2..=8).contains(b) => Ok(*b as u8),
        Some(ScalarValue::Int64(Some(b))) => Err(arg_error(
            "quant_params",
            "bits",
            &KernelError::UnsupportedBits {
                bits: *b,
                expected: GRID_BITS,
            },
        )),
        _ => plan_err!("quant_params: argument 'bits' must be a constant integer"),
    }
}

fn parse_symmetric(value: Option<&ScalarValue>) -> Result<bool> {
    match value {
        None => Ok(false),
        Some(ScalarValue::Utf8(Some(s))) => match s.to_ascii_lowercase().as_str() {
            "asym" => Ok(false),
            "sym" => Ok(true),
            _ => plan_err!("quant_params: argument 'scheme' must be 'asym' or 'sym', got '{s}'"),
        },
        _ => plan_err!("quant_params: argument 'scheme' must be a constant string"),
    }
}

const PARAMETERS: Parameters = Parameters::new(
    &[
        ("values", ArgType::FloatList),
        ("bits", ArgType::Integer),
        ("scheme", ArgType::Text),
    ],
    2,
);

impl AggregateUDFImpl for QuantParams {
    fn name(&self) -> &str {
        "quant_params"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        PARAMETERS.coerce(self.name(), arg_types)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(fields()))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let bits = parse_bits(constant(&args, 1).as_ref())?;
        let symmetric = if args.exprs.len() > 2 {
            parse_symmetric(constant(&args, 2).as_ref())?
        } else {
            false
        };
        Ok(Box::new(ParamsAccumulator {
            bits,
            symmetric,
            sketch: Sketch::default(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sketch"),
            DataType::Binary,
            true,
        ))])
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOCUMENTATION)
    }
}

#[derive(Debug)]
struct ParamsAccumulator {
    bits: u8,
    symmetric: bool,
    sketch: Sketch,
}

fn params_struct(p: Option<(RangeParams, &Sketch)>) -> StructArray {
    let scalars: Vec<ScalarValue> = match p {
        Some((p, s)) => vec![
            ScalarValue::Float32(Some(p.scale as f32)),
            ScalarValue::Float32(Some(p.offset as f32)),
            ScalarValue::Int32(Some(p.zero_point as i32)),
            ScalarValue::Float32(Some(p.clip_min as f32)),
            ScalarValue::Float32(Some(p.clip_max as f32)),
            ScalarValue::Float32(Some(s.min())),
            ScalarValue::Float32(Some(s.max())),
            ScalarValue::UInt64(Some(s.count())),
            ScalarValue::Float64(Some(p.mse)),
        ],
        None => fields()
            .iter()
            .map(|f| ScalarValue::try_from(f.data_type()).expect("primitive"))
            .collect(),
    };
    let columns: Vec<ArrayRef> = scalars
        .iter()
        .map(|s| s.to_array().expect("scalar"))
        .collect();
    let nulls = p
        .is_none()
        .then(|| datafusion::arrow::buffer::NullBuffer::new_null(1));
    StructArray::new(fields(), columns, nulls)
}

impl Accumulator for ParamsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let rows = FloatRows::new(&values[0], "quant_params", "values")?;
        for row in 0..rows.len() {
            if let Some(x) = rows.row(row) {
                check_finite(x).map_err(|e| row_error("quant_params", row, e))?;
                self.sketch.add(x);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let params = clip_search(&self.sketch.sorted_buckets(), self.bits, self.symmetric);
        Ok(ScalarValue::Struct(Arc::new(params_struct(
            params.map(|p| (p, &self.sketch)),
        ))))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_bytes()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.to_bytes()))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let sketches = states[0].as_binary::<i32>();
        for row in 0..sketches.len() {
            if sketches.is_valid(row) {
                let other = Sketch::from_bytes(sketches.value(row))
                    .map_err(|e| exec_datafusion_err!("quant_params: {e}"))?;
                self.sketch.merge(&other);
            }
        }
        Ok(())
    }
}

crate::support::register::aggregate_udf!(QuantParams::default());
