//! Load and verify what rust-model-convert writes: `manifest.json` as typed structs, the
//! SafeTensors files memory-mapped and checked against it (names, dtypes, shapes, offsets,
//! coverage, digests), typed tensor access with aliases re-tied, tensors found by the
//! architecture's modules, and reference forward passes ([`nn`]) that document each layout.
//! GGUF outputs ([`gguf`]) are checked alike, and every ggml type they hold dequantizes to f32.
//!
//! ```no_run
//! let model = rmc_load::Model::open("out/")?;       // headers checked against the manifest
//! assert!(model.verify().is_empty());                // every file and tensor digest
//! let lstm = model.module("encoder.lstm")?;          // sizes in lstm.module.params
//! let w = lstm.get("weight_ih_l0")?.to_f32()?;       // F32/F16/BF16/F64/integers -> Vec<f32>
//! # Ok::<(), rmc_load::Error>(())
//! ```

pub mod dtype;
pub mod error;
pub mod fann;
pub mod gguf;
pub mod manifest;
pub mod model;
pub mod nn;
pub mod probe;
pub mod safetensors;

pub use dtype::Dtype;
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use model::{Model, ModuleTensors, Report, Tensor};
