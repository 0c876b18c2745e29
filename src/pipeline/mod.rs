//! The model pipeline (the `DiffusionOrchestrator` of the architecture we were asked to build): modality detection, the strategy
//! table, the quantization and report queries, and the output directory.

pub mod activations;
pub mod batch;
pub mod gguf_allocate;
pub mod gguf_arch;
pub mod gguf_checkpoint;
pub mod gguf_export;
pub mod gguf_importance;
pub mod gguf_metadata;
pub mod gguf_output;
pub mod gguf_recipe;
pub mod gguf_select;
pub mod modality;
pub mod output;
pub mod plan;
pub mod recipes;
pub mod run;
pub mod strategy;

pub use run::{Progress, RunOptions, RunSummary, plans, quantize_model};
