//! What the integration tests share: the committed outputs under `tests/data` (written by
//! `scripts/make_rust_fixtures.py` with this project's `convert`), the values their reference
//! readers gave (torch, the `gguf` package's dequantizer), and scratch copies to corrupt.

#![allow(dead_code)] // each test file uses its own part of this module

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rmc_load::manifest::DigestAlgorithm;
use rmc_load::Model;

/// A committed output folder: `safetensors`, `sharded` or `gguf`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join(name)
}

/// Every name's values as the reference reader gave them (`expected/<fixture>/<name>.f32`,
/// little-endian f32), as bit patterns so that comparisons are exact.
pub fn expected(fixture_name: &str) -> BTreeMap<String, Vec<u32>> {
    let dir = fixture("expected").join(fixture_name);
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().strip_suffix(".f32").expect("only .f32 files").to_string();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() % 4, 0, "{}", path.display());
        found.insert(name, bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect());
    }
    assert!(!found.is_empty(), "{}: no expected values", dir.display());
    found
}

/// Every name the model gives (stored tensors and aliases) has the reference values, bit for bit,
/// and the reference has no name the model lacks.
pub fn assert_values_match(model: &Model, fixture_name: &str) {
    let want = expected(fixture_name);
    let names: Vec<&str> = model.names().collect();
    assert_eq!(names.iter().copied().collect::<std::collections::BTreeSet<_>>(), want.keys().map(String::as_str).collect());
    for name in names {
        let tensor = model.tensor(name).unwrap();
        let got: Vec<u32> = tensor.to_f32().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got.len() as u64, tensor.shape().iter().product::<u64>(), "{name}: element count");
        if let Some(i) = (0..got.len()).find(|&i| Some(&got[i]) != want[name].get(i)) {
            let (mine, theirs) = (f32::from_bits(got[i]), want[name].get(i).map(|&b| f32::from_bits(b)));
            panic!("{name}: element {i} is {mine:?}, the reference reader's {theirs:?}");
        }
        assert_eq!(got.len(), want[name].len(), "{name}: element count against the reference");
    }
}

/// Lower-case hex digest, computed here rather than by the crate.
pub fn digest(algorithm: DigestAlgorithm, bytes: &[u8]) -> String {
    use sha2::Digest;
    let raw: Vec<u8> = match algorithm {
        DigestAlgorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
        DigestAlgorithm::Blake3 => blake3::hash(bytes).as_bytes().to_vec(),
    };
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file's and every stored tensor's digest, computed here, is the manifest's.
pub fn assert_digests_match(model: &Model) {
    let m = &model.manifest;
    let algorithm = m.digest_algorithm().unwrap();
    for file in &m.files {
        let bytes = std::fs::read(model.dir.join(&file.path)).unwrap();
        assert_eq!(bytes.len() as u64, file.bytes, "{}", file.path);
        assert_eq!(Some(digest(algorithm, &bytes).as_str()), file.digest(), "{}", file.path);
    }
    for t in &m.tensors {
        let data = model.tensor(&t.name).unwrap().bytes();
        assert_eq!(data.len() as u64, t.nbytes(), "{}", t.name);
        assert_eq!(Some(digest(algorithm, data).as_str()), t.digest(), "{}", t.name);
    }
}

/// A fresh copy of a committed fixture in cargo's scratch folder, to corrupt (`tag` keeps tests
/// running in parallel apart).
pub fn scratch_copy(fixture_name: &str, tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{fixture_name}-{tag}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(fixture_name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

/// XOR one byte of a file with `mask`.
pub fn flip_byte(path: &Path, at: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// `rmc verify DIR --json`: the exit code and the JSON report.
pub fn rmc_verify(dir: &Path) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_rmc")).arg("verify").arg(dir).arg("--json").output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), report)
}

/// The problems of a report that name `what`.
pub fn naming<'a>(problems: &'a [String], what: &str) -> Vec<&'a String> {
    problems.iter().filter(|p| p.contains(what)).collect()
}
