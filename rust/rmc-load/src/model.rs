//! An opened output folder: the manifest, its SafeTensors files memory-mapped and checked against
//! it, and typed access to each tensor (aliases re-tied, lookup by the architecture's modules).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::Value;

use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::manifest::{DigestAlgorithm, FileEntry, Manifest, Module, TensorEntry, MANIFEST_FILE};
use crate::gguf;
use crate::safetensors::{parse_header, Header, HeaderEntry};

/// One output file, mapped, with its parsed header (None for a graph file, or a file that is not
/// readable as SafeTensors).
struct Mapped {
    map: Mmap,
    header: Option<Header>,
}

pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
    files: HashMap<String, Mapped>,
    by_name: HashMap<String, usize>,
}

/// A tensor's bytes in its mapped file, with what the manifest says about it.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    /// The name asked for (an alias keeps its own name here).
    pub name: &'a str,
    pub entry: &'a TensorEntry,
    pub data: &'a [u8],
}

/// A module of the architecture with the stored (or aliased) tensors made from its tensors.
pub struct ModuleTensors<'a> {
    pub module: &'a Module,
    /// Target names, in manifest order: stored tensors whose sources are this module's, then aliases.
    pub names: Vec<&'a str>,
    model: &'a Model,
}

/// What `verify` found: every problem, each naming the file, tensor or alias behind it.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub files: usize,
    pub tensors: usize,
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn to_json(&self, dir: &Path) -> Value {
        serde_json::json!({"output": dir.display().to_string(), "ok": self.ok(), "files": self.files,
                           "tensors": self.tensors, "problems": self.problems})
    }
}

impl Model {
    /// Open an output folder and check every header against the manifest (names, dtypes, shapes,
    /// offsets, coverage, metadata, index). Fails on the first inconsistency found, listing all of
    /// them; digests are checked by [`Model::verify`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Model> {
        let (model, report) = Model::open_checked(dir)?;
        if report.ok() {
            Ok(model)
        } else {
            Err(Error::Mismatch(report.problems))
        }
    }

    /// Open without failing on mismatches: the model (with whatever files could be mapped) and
    /// the structural problems found.
    pub fn open_checked(dir: impl AsRef<Path>) -> Result<(Model, Report)> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        if !path.is_file() {
            return Err(Error::NotFound(format!("{}: no {MANIFEST_FILE} (is this a conversion output?)", dir.display())));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::Io(path.display().to_string(), e))?;
        let manifest = Manifest::from_slice(&bytes)?;
        let by_name = manifest.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let mut model = Model { dir, manifest, files: HashMap::new(), by_name };
        let mut report = Report::default();
        for entry in &model.manifest.files {
            if let Some(mapped) = model.map_file(entry, &mut report)? {
                model.files.insert(entry.path.clone(), mapped);
            }
        }
        model.check_tensors(&mut report);
        model.check_aliases(&mut report);
        if model.manifest.index.is_some() {
            model.check_index(&mut report);
        }
        Ok((model, report))
    }

    fn map_file(&self, entry: &FileEntry, report: &mut Report) -> Result<Option<Mapped>> {
        let name = &entry.path;
        let path = self.dir.join(name);
        let plain = Path::new(name).file_name().map_or(false, |f| f == name.as_str());
        if !plain || !path.is_file() {
            report.problems.push(format!("{name}: missing"));
            return Ok(None);
        }
        report.files += 1;
        let file = File::open(&path).map_err(|e| Error::Io(path.display().to_string(), e))?;
        // SAFETY: the map is read-only; a file changed underneath it while open is the caller's
        // to avoid (as with every memory-mapped reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::Io(path.display().to_string(), e))?;
        if map.len() as u64 != entry.bytes {
            report.problems.push(format!("{name}: {} bytes, the manifest says {}", map.len(), entry.bytes));
        }
        if self.manifest.is_graph() {
            // a to-onnx output: its files are the graph, proven by size and digest
            return Ok(Some(Mapped { map, header: None }));
        }
        if self.manifest.is_gguf() {
            let header = match gguf_header(&map, name, &self.manifest, report) {
                Some(h) => h,
                None => return Ok(Some(Mapped { map, header: None })),
            };
            self.check_names(name, &header, report);
            return Ok(Some(Mapped { map, header: Some(header) }));
        }
        let header = match parse_header(&map) {
            Ok(h) => h,
            Err(why) => {
                report.problems.push(format!("{name}: not readable as SafeTensors ({why})"));
                return Ok(Some(Mapped { map, header: None }));
            }
        };
        self.check_names(name, &header, report);
        let aliases: BTreeMap<String, String> =
            header.metadata.iter().filter(|(k, _)| k.as_str() != "format").map(|(k, v)| (k.clone(), v.clone())).collect();
        if header.metadata.get("format").map(String::as_str) != Some("pt") || aliases != self.manifest.aliases {
            report.problems.push(format!("{name}: metadata does not carry format 'pt' and the manifest's aliases"));
        }
        Ok(Some(Mapped { map, header: Some(header) }))
    }

    fn check_names(&self, name: &str, header: &Header, report: &mut Report) {
        let expected: BTreeSet<&str> =
            self.manifest.tensors.iter().filter(|t| &t.file == name).map(|t| t.name.as_str()).collect();
        let found: BTreeSet<&str> = header.tensors.keys().map(String::as_str).collect();
        let differ: Vec<&&str> = expected.symmetric_difference(&found).take(5).collect();
        if !differ.is_empty() {
            report.problems.push(format!("{name}: tensors {differ:?} differ from the manifest"));
        }
    }

    fn check_tensors(&self, report: &mut Report) {
        let listed: BTreeSet<&str> = self.manifest.files.iter().map(|f| f.path.as_str()).collect();
        for t in &self.manifest.tensors {
            if !listed.contains(t.file.as_str()) {
                report.problems.push(format!("tensor {:?}: its file {:?} is not among the manifest's files", t.name, t.file));
                continue;
            }
            let Some(h) = self.files.get(&t.file).and_then(|m| m.header.as_ref()?.tensors.get(&t.name)) else {
                continue;
            };
            report.tensors += 1;
            if h.dtype != t.dtype || h.shape != t.shape || h.data_offsets != t.data_offsets {
                report.problems.push(format!("tensor {:?}: dtype, shape or offsets differ from the manifest", t.name));
            }
        }
    }

    fn check_aliases(&self, report: &mut Report) {
        for (alias, kept) in &self.manifest.aliases {
            if self.by_name.contains_key(alias) || !self.by_name.contains_key(kept) {
                report.problems.push(format!("alias {alias:?}: must name a tensor not stored, tied to one stored ({kept:?})"));
            }
        }
    }

    fn check_index(&self, report: &mut Report) {
        let name = self.manifest.index.as_deref().unwrap_or_default();
        let parsed: Option<(BTreeMap<String, String>, u64)> = std::fs::read(self.dir.join(name))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|doc| {
                let map = serde_json::from_value(doc.get("weight_map")?.clone()).ok()?;
                Some((map, doc.get("metadata")?.get("total_size")?.as_u64()?))
            });
        let Some((weight_map, total)) = parsed else {
            report.problems.push(format!("{name}: missing or malformed"));
            return;
        };
        let expected: BTreeMap<String, String> =
            self.manifest.tensors.iter().map(|t| (t.name.clone(), t.file.clone())).collect();
        if weight_map != expected {
            report.problems.push(format!("{name}: weight_map differs from the manifest"));
        }
        if total != self.manifest.tensors.iter().map(TensorEntry::nbytes).sum::<u64>() {
            report.problems.push(format!("{name}: total_size differs from the tensors' bytes"));
        }
    }

    /// Check every digest the manifest records: each output file whole, then each tensor's bytes,
    /// with the manifest's algorithm. Returns the problems, each naming its file or tensor.
    pub fn verify(&self) -> Vec<String> {
        let algorithm = self.manifest.digest_algorithm().unwrap_or(DigestAlgorithm::Sha256);
        let label = algorithm.name();
        let mut problems = Vec::new();
        for entry in &self.manifest.files {
            let Some(mapped) = self.files.get(&entry.path) else { continue }; // reported missing
            if Some(hex_digest(algorithm, &mapped.map).as_str()) != entry.digest() {
                problems.push(format!("{}: {label} differs from the manifest", entry.path));
            }
        }
        for t in &self.manifest.tensors {
            if let Some(data) = self.stored_bytes(t) {
                if Some(hex_digest(algorithm, data).as_str()) != t.digest() {
                    problems.push(format!("tensor {:?}: bytes do not match the manifest's {label}", t.name));
                }
            }
        }
        problems
    }

    /// Structure and digests together, as `convert verify` does without `--source`.
    pub fn verify_dir(dir: impl AsRef<Path>) -> Result<Report> {
        let (model, mut report) = Model::open_checked(dir)?;
        report.problems.extend(model.verify());
        Ok(report)
    }

    fn stored_bytes(&self, t: &TensorEntry) -> Option<&[u8]> {
        let mapped = self.files.get(&t.file)?;
        let header = mapped.header.as_ref()?;
        if header.tensors.get(&t.name)?.data_offsets != t.data_offsets {
            return None;
        }
        let start = (header.data_start + t.data_offsets[0]) as usize;
        let end = (header.data_start + t.data_offsets[1]) as usize;
        Some(&mapped.map[start..end])
    }

    /// Every name a loader may ask for: stored tensors, then aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.manifest.tensors.iter().map(|t| t.name.as_str()).chain(self.manifest.aliases.keys().map(String::as_str))
    }

    /// A tensor by name; an alias gives the tensor it is tied to.
    pub fn tensor<'a>(&'a self, name: &'a str) -> Result<Tensor<'a>> {
        let stored = self.manifest.aliases.get(name).map(String::as_str).unwrap_or(name);
        let entry = self
            .by_name
            .get(stored)
            .map(|&i| &self.manifest.tensors[i])
            .ok_or_else(|| Error::NotFound(format!("tensor {name:?}: not in the manifest")))?;
        let data = self
            .stored_bytes(entry)
            .ok_or_else(|| Error::Mismatch(vec![format!("tensor {name:?}: its file is missing or disagrees with the manifest")]))?;
        Ok(Tensor { name, entry, data })
    }

    /// The module at `path` in the architecture (e.g. "encoder.lstm").
    pub fn module(&self, path: &str) -> Result<ModuleTensors<'_>> {
        let module = self
            .manifest
            .architecture
            .modules
            .iter()
            .find(|m| m.path == path)
            .ok_or_else(|| Error::NotFound(format!("module {path:?}: not in the manifest's architecture")))?;
        Ok(self.module_tensors(module))
    }

    /// Every module of one type ("Linear", "LSTM", ...), in the manifest's order.
    pub fn modules_of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = ModuleTensors<'a>> + 'a {
        self.manifest.architecture.modules.iter().filter(move |m| m.kind == kind).map(move |m| self.module_tensors(m))
    }

    fn module_tensors<'a>(&'a self, module: &'a Module) -> ModuleTensors<'a> {
        let own: BTreeSet<&str> = module.tensors.iter().map(String::as_str).collect();
        let mut names: Vec<&str> = self
            .manifest
            .tensors
            .iter()
            .filter(|t| t.sources.iter().any(|s| own.contains(s.name.as_str())))
            .map(|t| t.name.as_str())
            .collect();
        names.extend(self.manifest.aliases.keys().map(String::as_str).filter(|a| own.contains(a)));
        ModuleTensors { module, names, model: self }
    }
}

impl<'a> ModuleTensors<'a> {
    /// The module's tensor whose target name is `suffix` or ends with `.suffix`
    /// (`weight`, `weight_ih_l1`, `0.input_gate.input_transform.weight`).
    pub fn get(&self, suffix: &str) -> Result<Tensor<'a>> {
        match self.matching(suffix).as_slice() {
            [one] => self.model.tensor(one),
            [] => Err(Error::NotFound(format!("module {:?}: no tensor named *{suffix} (has {:?})", self.module.path, self.names))),
            found => Err(Error::Mismatch(vec![format!("module {:?}: several tensors end with {suffix}: {found:?}", self.module.path)])),
        }
    }

    pub fn has(&self, suffix: &str) -> bool {
        !self.matching(suffix).is_empty()
    }

    fn matching(&self, suffix: &str) -> Vec<&'a str> {
        let dotted = format!(".{suffix}");
        self.names.iter().copied().filter(|n| *n == suffix || n.ends_with(&dotted)).collect()
    }
}

impl<'a> Tensor<'a> {
    pub fn dtype(&self) -> &'a Dtype {
        &self.entry.dtype
    }

    pub fn shape(&self) -> &'a [u64] {
        &self.entry.shape
    }

    /// The raw little-endian, row-major bytes, straight from the mapped file.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.entry.dtype.to_f32(self.data)
    }

    pub fn to_f64(&self) -> Result<Vec<f64>> {
        self.entry.dtype.to_f64(self.data)
    }

    /// f32 values, refusing a shape other than `expected` (what a layer's loader needs).
    pub fn f32_with_shape(&self, expected: &[usize]) -> Result<Vec<f32>> {
        let shape: Vec<usize> = self.shape().iter().map(|&d| d as usize).collect();
        if shape != expected {
            return Err(Error::Mismatch(vec![format!("tensor {:?}: shape {shape:?}, expected {expected:?}", self.name)]));
        }
        self.to_f32()
    }
}

/// A GGUF file's header as the checks above read a SafeTensors one (names, dtypes as the ggml type
/// names the manifest uses, numpy-order shapes, offsets in the data section), after the checks only
/// GGUF has: version 3, `general.architecture`, alignment 32 (realizar assumes it), the quantization
/// version when a tensor is quantized, llama.cpp's split keys, and the file ending where its
/// padded tensors do. None (the problem reported) when the header cannot be read.
fn gguf_header(map: &[u8], name: &str, manifest: &Manifest, report: &mut Report) -> Option<Header> {
    let parsed = match gguf::parse(map) {
        Ok(h) => h,
        Err(why) => {
            report.problems.push(format!("{name}: not readable as GGUF ({why})"));
            return None;
        }
    };
    let mut problem = |p: String| report.problems.push(format!("{name}: {p}"));
    if parsed.version != 3 {
        problem(format!("GGUF version {}, not 3", parsed.version));
    }
    if !matches!(parsed.metadata.get("general.architecture"), Some(gguf::MetaValue::Str(_))) {
        problem("no general.architecture".into());
    }
    if parsed.alignment != gguf::DEFAULT_ALIGNMENT {
        problem(format!("general.alignment is {}, not 32", parsed.alignment));
    }
    let quantized = parsed.tensors.iter().any(|t| t.ggml_type.block > 1);
    if quantized && parsed.metadata.get("general.quantization_version").and_then(gguf::MetaValue::as_u64) != Some(2) {
        problem("quantized tensors but general.quantization_version is not 2".into());
    }
    let count = manifest.files.len() as u64;
    if count > 1 {
        let index = manifest.files.iter().position(|f| f.path == name).unwrap_or(0) as u64;
        let total = manifest.tensors.len() as u64;
        for (key, want) in [("split.no", index), ("split.count", count), ("split.tensors.count", total)] {
            if parsed.metadata.get(key).and_then(gguf::MetaValue::as_u64) != Some(want) {
                problem(format!("{key} is not {want}"));
            }
        }
    }
    if parsed.data_start + parsed.data_size != map.len() as u64 {
        problem(format!("{} bytes, where its tensors end at {}", map.len(), parsed.data_start + parsed.data_size));
    }
    let tensors = parsed
        .tensors
        .iter()
        .map(|t| {
            let entry = HeaderEntry {
                dtype: Dtype::parse(t.ggml_type.name),
                shape: t.shape(),
                data_offsets: [t.offset, t.offset + t.nbytes],
            };
            (t.name.clone(), entry)
        })
        .collect();
    Some(Header { data_start: parsed.data_start, tensors, metadata: BTreeMap::new() })
}

/// Lower-case hex digest of bytes.
pub fn hex_digest(algorithm: DigestAlgorithm, bytes: &[u8]) -> String {
    use sha2::Digest;
    let raw: Vec<u8> = match algorithm {
        DigestAlgorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
        DigestAlgorithm::Blake3 => blake3::hash(bytes).as_bytes().to_vec(),
    };
    raw.iter().map(|b| format!("{b:02x}")).collect()
}
