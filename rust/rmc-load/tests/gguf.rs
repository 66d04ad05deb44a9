//! A GGUF output as `convert to-gguf --type q4_k` wrote it (tests/data/gguf, see
//! scripts/make_rust_fixtures.py), with one tensor each in Q4_K, Q8_0 (overridden), F16
//! (overridden) and F32 (1-D). The crate must read its header as the manifest records it, verify it,
//! dequantize every type to the `gguf` package's values bit for bit, and name a corrupted tensor.

mod common;

use std::collections::BTreeMap;

use common::{assert_digests_match, assert_values_match, fixture, flip_byte, naming, rmc_verify, scratch_copy};
use rmc_load::{gguf, Model};

fn header(dir: &std::path::Path) -> (Vec<u8>, gguf::Header) {
    let bytes = std::fs::read(dir.join("model.gguf")).unwrap();
    let header = gguf::parse(&bytes).unwrap();
    (bytes, header)
}

#[test]
fn the_header_is_what_the_manifest_records() {
    let model = Model::open(fixture("gguf")).unwrap();
    assert!(model.manifest.is_gguf());
    let (bytes, h) = header(&fixture("gguf"));
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, gguf::DEFAULT_ALIGNMENT);
    assert_eq!(h.data_start + h.data_size, bytes.len() as u64);
    let types: BTreeMap<&str, &str> = h.tensors.iter().map(|t| (t.name.as_str(), t.ggml_type.name)).collect();
    let want = [("half.weight", "F16"), ("norm.weight", "F32"), ("proj.weight", "Q4_K"), ("q8.weight", "Q8_0")];
    assert_eq!(types, BTreeMap::from(want));
    for t in &h.tensors {
        let entry = model.manifest.tensors.iter().find(|e| e.name == t.name).unwrap();
        assert_eq!(entry.dtype.code(), t.ggml_type.name, "{}", t.name);
        assert_eq!(entry.shape, t.shape(), "{}", t.name);
        assert_eq!(entry.data_offsets, [t.offset, t.offset + t.nbytes], "{}", t.name);
        let q = entry.quantization.as_ref().unwrap();
        assert_eq!((q.kind.as_str(), q.type_id, q.block_size), (t.ggml_type.name, t.ggml_type.id as u64, t.ggml_type.block));
    }
}

#[test]
fn it_verifies_and_every_digest_is_the_manifests() {
    let model = Model::open(fixture("gguf")).unwrap();
    assert_eq!(model.verify(), Vec::<String>::new());
    assert_digests_match(&model);
    let (code, json) = rmc_verify(&fixture("gguf"));
    assert_eq!(code, 0, "{json}");
    assert_eq!((json["ok"].as_bool(), json["files"].as_u64(), json["tensors"].as_u64()), (Some(true), Some(1), Some(4)));
}

#[test]
fn every_type_dequantizes_to_the_gguf_packages_values() {
    assert_values_match(&Model::open(fixture("gguf")).unwrap(), "gguf");
    // the same through the header alone, without the manifest
    let (bytes, h) = header(&fixture("gguf"));
    let want = common::expected("gguf");
    for t in &h.tensors {
        let start = (h.data_start + t.offset) as usize;
        let values = gguf::dequantize(t.ggml_type, &bytes[start..start + t.nbytes as usize]).unwrap();
        assert!(values.iter().map(|v| v.to_bits()).eq(want[&t.name].iter().copied()), "{}", t.name);
    }
}

#[test]
fn a_flipped_byte_in_a_quantized_block_is_named() {
    let dir = scratch_copy("gguf", "flipped");
    let (_, h) = header(&dir);
    let proj = h.tensors.iter().find(|t| t.name == "proj.weight").unwrap();
    flip_byte(&dir.join("model.gguf"), h.data_start + proj.offset + 20, 0x10); // a packed quant, not a scale
    let report = Model::verify_dir(&dir).unwrap();
    assert_eq!(naming(&report.problems, "\"proj.weight\"").len(), 1, "{:?}", report.problems);
    assert_eq!(naming(&report.problems, "model.gguf: blake3").len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let (code, json) = rmc_verify(&dir);
    assert_eq!(code, 8);
    assert!(json["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("proj.weight")), "{json}");
}

#[test]
fn a_truncated_file_is_named_not_read() {
    let dir = scratch_copy("gguf", "truncated");
    let path = dir.join("model.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert!(gguf::parse(&std::fs::read(&path).unwrap()).unwrap_err().contains("past the file"));
    let report = Model::verify_dir(&dir).unwrap();
    assert!(!report.ok());
    assert!(report.problems.iter().all(|p| p.contains("model.gguf")), "{:?}", report.problems);
    let (code, _) = rmc_verify(&dir);
    assert_eq!(code, 8);
}
