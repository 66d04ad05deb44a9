//! `manifest.json` as typed structs (schemas/manifest.schema.json).
//!
//! Tolerant of fields added later (unknown fields are ignored), strict about the version: only
//! the versions in [`SUPPORTED_VERSIONS`] load. Free-form parts of the schema (source details,
//! options, module params, configs) stay `serde_json` values. Both digest forms are read:
//! version 1.0's `sha256` fields, and 2.0's `digest` fields under a top-level `digest_algorithm`.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0", "2.0"];

pub type Object = Map<String, Value>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_algorithm: Option<String>,
    pub generator: Generator,
    pub source: Source,
    pub target: Target,
    pub files: Vec<FileEntry>,
    /// The Hugging Face shard index (`model.safetensors.index.json`) when the output is sharded.
    pub index: Option<String>,
    #[serde(default)]
    pub sidecars: Vec<String>,
    #[serde(default)]
    pub tensors: Vec<TensorEntry>,
    /// Tied tensors stored once: alias name -> stored name.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// Source tensors the layout dropped on purpose.
    #[serde(default)]
    pub dropped: Vec<String>,
    pub architecture: Architecture,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph: Option<Graph>,
    /// ruv-FANN networks written beside the tensors (layout neuro-divergent); see [`crate::fann`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generator {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub format: String,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub details: Object,
    /// Source arrays the reader did not convert, each with the reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, String>,
    /// The reader options the source was opened with, so a verifier reopens it alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_options: Option<Object>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// `safetensors` (tensors listed in `tensors`) or `onnx` (the weights live in the graph).
    pub format: String,
    pub layout: String,
    pub rules: String,
    /// The `--dtype` cast requested, or None.
    pub dtype: Option<String>,
    #[serde(default)]
    pub options: Object,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The batch job's options; `Some(Value::Null)` when the manifest says null.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// How tied tensors were written, and what the layout's loader needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ties: Option<Ties>,
    /// The tensor output's own options (GGUF: `type`, `type_override`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_options: Option<Object>,
}

/// Tied tensors: `loader` is what the layout's loader needs (`alias`: it re-ties from the file's
/// metadata; `duplicate`: it looks every name up), `written` what this output did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ties {
    pub loader: String,
    pub written: String,
    /// Every {alias: first name}.
    #[serde(default)]
    pub tied: BTreeMap<String, String>,
}

/// A file with its size and digest: an output file, or a source file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub file: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// [begin, end) in the file's data buffer (after the header).
    pub data_offsets: [u64; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub sources: Vec<SourceTensor>,
    #[serde(default)]
    pub transforms: Vec<Transform>,
    #[serde(default)]
    pub lossy: bool,
    #[serde(default)]
    pub invertible: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_invertible_because: Option<String>,
    /// What the target needs to know: activation, gate, layout of rows and columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Object>,
    /// A GGUF tensor's ggml type, why it was chosen, and its error against the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// How a GGUF tensor was written: its ggml type (and id, block size), the type asked for and why
/// another was taken, and the error of its dequantized values against the source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quantization {
    #[serde(rename = "type")]
    pub kind: String,
    pub type_id: u64,
    pub block_size: u64,
    pub requested: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub source_dtype: Dtype,
    pub error: QuantizationError,
    pub on_loss: String,
    pub overflowed: u64,
    pub flushed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuantizationError {
    pub max_abs: f64,
    pub rms: f64,
    pub relative_rms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
}

/// One step of the closed transform vocabulary: `op` plus its arguments (axis, parts, index, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    pub op: String,
    pub args: Object,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Architecture {
    /// True when the modules were inferred from names and shapes.
    pub inferred: bool,
    #[serde(default)]
    pub modules: Vec<Module>,
    #[serde(default)]
    pub unknown: Vec<String>,
    /// The model's own config (config.json), when the source has one.
    pub config: Option<Object>,
    /// What the source format records about the model; `Some(Value::Null)` when it says null.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub source_model: Option<Value>,
}

/// A module of the source model: its path, type (Linear, LSTM, ...), sizes, and its tensors'
/// source (canonical) names. [`crate::Model::module`] finds the stored tensors made from them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Module {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub params: Object,
    #[serde(default)]
    pub tensors: Vec<String>,
    /// Other module types the same names and shapes fit: the type is a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternatives: Option<Vec<ModuleChoice>>,
    /// What settled the type when names and shapes left it open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Tensors the module computes from saved pieces (torch's weight_norm, spectral_norm), by name:
    /// `type`, `by`, `dim`, `tensors` (the pieces, in the order the recorded fold takes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parametrizations: Option<Object>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub params: Object,
}

/// One `<name>.network.json`: a dense chain as ruv-FANN's serde `Network<T>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkEntry {
    pub name: String,
    pub file: String,
    pub format: String,
    pub bytes: u64,
    pub digest: String,
    pub inputs: u64,
    pub outputs: u64,
    pub layers: Vec<NetworkLayer>,
}

/// A network layer: its source module, its tensor, and the ruv-FANN activation that computes the
/// source's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkLayer {
    pub module: String,
    pub tensor: String,
    pub activation: String,
    pub function: String,
    pub steepness: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graph {
    pub file: String,
    pub external_data: Option<String>,
    #[serde(default)]
    pub opset: BTreeMap<String, i64>,
    #[serde(default)]
    pub producer: Object,
    pub exporter: String,
    pub simplified: bool,
    #[serde(default)]
    pub inputs: Vec<GraphValue>,
    #[serde(default)]
    pub outputs: Vec<GraphValue>,
    pub validation: Validation,
    /// How an int8 graph (`to-onnx --quantize`) was made; `validation` is then the int8 graph's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<GraphQuantization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantics: Option<Object>,
}

/// The int8 graph's recipe: mode (dynamic-int8 for ort, qdq-int8 per-tensor for ort and tract), the
/// ops holding int8 weights, the calibration, the bound it met and the float graph it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphQuantization {
    pub mode: String,
    pub tool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activations: Option<String>,
    pub per_channel: bool,
    pub int8_weight_ops: BTreeMap<String, i64>,
    pub runtimes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub atol: Tolerance,
    pub atol_from: String,
    pub float_graph: FloatGraph,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    pub from: String,
    pub rows: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatGraph {
    pub bytes: u64,
    pub validation: Object,
}

/// A validation bound as the manifest holds it: one number for every output, or (an int8 graph's
/// default) an object of bounds by output name. `bound` reads it for one output.
pub type Tolerance = Value;

/// The bound `atol` set for `output`: the one number, or that output's entry.
pub fn bound(atol: &Tolerance, output: &str) -> Option<f64> {
    atol.as_f64().or_else(|| atol.get(output).and_then(Value::as_f64))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphValue {
    pub name: String,
    pub dtype: Option<String>,
    /// Sizes: an integer, a string naming a dynamic axis, or null for an unknown size.
    pub shape: Option<Vec<Value>>,
    #[serde(default)]
    pub dynamic_axes: BTreeMap<String, Option<String>>,
    /// An integer or bool input's values: `low` included, `high` excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ValueRange>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueRange {
    pub low: i64,
    pub high: i64,
    /// What set the range: an nn.Embedding's rows, a mask, --input-range, the --inputs file.
    pub from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Validation {
    pub atol: Tolerance,
    #[serde(default)]
    pub batch_sizes: Vec<i64>,
    #[serde(default)]
    pub max_abs_diff: BTreeMap<String, f64>,
    /// [min, max] of the source's values of each output on the validation inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_range: Option<BTreeMap<String, Vec<f64>>>,
    /// `max_abs_diff` as a share of the output's range (None for a constant output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rel_diff: Option<BTreeMap<String, Option<f64>>>,
}

/// The digest algorithms a manifest may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Blake3,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Blake3 => "blake3",
        }
    }
}

impl Manifest {
    /// Parse a manifest, refusing versions this crate does not know (as the schema does: exit 8).
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("manifest.json: not valid JSON ({e})")))?;
        let version = doc.get("manifest_version").and_then(Value::as_str).unwrap_or("");
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::Mismatch(vec![format!(
                "manifest.json: manifest_version {version:?} is not one this crate reads ({})",
                SUPPORTED_VERSIONS.join(", ")
            )]));
        }
        let manifest: Manifest = serde_json::from_value(doc)
            .map_err(|e| Error::Mismatch(vec![format!("manifest.json: does not follow the schema ({e})")]))?;
        manifest.digest_algorithm()?;
        Ok(manifest)
    }

    /// The algorithm of every digest in the manifest: `digest_algorithm` when present, else
    /// sha256 (version 1.0 has no such field).
    pub fn digest_algorithm(&self) -> Result<DigestAlgorithm> {
        match self.digest_algorithm.as_deref() {
            None | Some("sha256") => Ok(DigestAlgorithm::Sha256),
            Some("blake3") => Ok(DigestAlgorithm::Blake3),
            Some(other) => Err(Error::Mismatch(vec![format!("manifest.json: unknown digest_algorithm {other:?}")])),
        }
    }

    pub fn is_graph(&self) -> bool {
        self.target.format == "onnx"
    }

    /// A GGUF output (`convert to-gguf`): its files are GGUF, its tensors ggml types.
    pub fn is_gguf(&self) -> bool {
        self.target.format == "gguf"
    }
}

impl FileEntry {
    /// The recorded digest (hex), whichever name the manifest version gives it.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref().or(self.sha256.as_deref())
    }
}

impl TensorEntry {
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref().or(self.sha256.as_deref())
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> u64 {
        self.data_offsets[1].saturating_sub(self.data_offsets[0])
    }
}

impl Module {
    /// An integer size from `params` (hidden_size, num_layers, in_features, ...).
    pub fn param_usize(&self, key: &str) -> Result<usize> {
        self.params
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::NotFound(format!("module {:?} ({}): no integer param {key:?}", self.path, self.kind)))
    }

    pub fn param_bool(&self, key: &str) -> Option<bool> {
        self.params.get(key).and_then(Value::as_bool)
    }
}

/// Deserialize a field that may hold null as `Some(Value::Null)`, so null and absent differ.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Serialize for Transform {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.args.len() + 1))?;
        map.serialize_entry("op", &self.op)?;
        for (k, v) in &self.args {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct TransformVisitor;
        impl<'de> Visitor<'de> for TransformVisitor {
            type Value = Transform;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a transform object with an `op`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Transform, A::Error> {
                let mut op = None;
                let mut args = Object::new();
                while let Some(key) = access.next_key::<String>()? {
                    if key == "op" {
                        op = Some(access.next_value::<String>()?);
                    } else {
                        args.insert(key, access.next_value()?);
                    }
                }
                let op = op.ok_or_else(|| serde::de::Error::missing_field("op"))?;
                Ok(Transform { op, args })
            }
        }
        // A struct with one declared field, so the schema probe sees `op`; other keys are the arguments.
        d.deserialize_struct("Transform", &["op"], TransformVisitor)
    }
}
