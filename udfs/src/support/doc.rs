//! Documentation sections shared by the functions' `Documentation`.

use datafusion::logical_expr::DocSection;

pub const DOC_QUANTIZATION: DocSection = DocSection {
    include: true,
    label: "Quantization Functions",
    description: Some("Quantize and dequantize rows of model weights."),
};

pub const DOC_QUALITY: DocSection = DocSection {
    include: true,
    label: "Quality Functions",
    description: Some("Compare original and reconstructed weights."),
};

pub const DOC_STATISTICS: DocSection = DocSection {
    include: true,
    label: "Weight Statistics Functions",
    description: Some("Describe the distribution of weights."),
};

pub const DOC_DIFFUSION: DocSection = DocSection {
    include: true,
    label: "Diffusion Functions",
    description: Some("Timestep groups and their quantization parameters."),
};

pub fn scheme_list() -> &'static str {
    "Storage scheme: 'asym' (default: scale and offset per group, clipping search), 'sym' \
     (signed scale only), 'asym_minmax' / 'sym_minmax' (no search), or one of llama.cpp's block \
     formats, whose rows are exactly its blocks: 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0' (blocks \
     of 32), 'q2_K', 'q3_K', 'q4_K', 'q5_K', 'q6_K', 'iq4_xs' (super-blocks of 256), 'iq4_nl' \
     (blocks of 32 on its non-linear grid). Their codes are chosen by our search; \
     'NAME:reference' gives llama.cpp's own rule, bit for bit, for the blocks of 32."
}

pub const DOC_THERMODYNAMIC: DocSection = DocSection {
    include: true,
    label: "Thermodynamic Constraint Functions",
    description: Some("Window functions over a layer's chain of timestep groups."),
};

pub const DOC_TABLES: DocSection = DocSection {
    include: true,
    label: "Table Functions",
    description: Some("Model files read as tables."),
};

pub const DOC_SPATIAL: DocSection = DocSection {
    include: true,
    label: "Spatial Functions",
    description: Some("Per-channel equalisation and outlier smoothing."),
};
