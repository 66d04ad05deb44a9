//! SafeTensors outputs as `convert pth-to-safetensors` wrote them (tests/data, see
//! scripts/make_rust_fixtures.py): one f16 file with sha256 digests and a tied head, and the same
//! checkpoint in f32 shards with blake3 digests and the Hugging Face index. The crate must open and
//! verify them, give torch's values for every name (aliases re-tied), and name what a corruption hit.

mod common;

use std::collections::BTreeMap;

use common::{assert_digests_match, assert_values_match, fixture, flip_byte, naming, rmc_verify, scratch_copy};
use rmc_load::manifest::DigestAlgorithm;
use rmc_load::{Dtype, Error, Model};

const INDEX: &str = "model.safetensors.index.json";

/// Where a tensor's first byte is in its SafeTensors file: after the 8-byte length and the header.
fn data_start(model: &Model, name: &str) -> (std::path::PathBuf, u64) {
    let t = model.manifest.tensors.iter().find(|t| t.name == name).unwrap();
    let path = model.dir.join(&t.file);
    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    (path, 8 + header + t.data_offsets[0])
}

#[test]
fn single_file_opens_and_verifies() {
    let model = Model::open(fixture("safetensors")).unwrap();
    let m = &model.manifest;
    assert_eq!(m.digest_algorithm().unwrap(), DigestAlgorithm::Sha256);
    assert_eq!(m.files.len(), 1);
    assert!(m.index.is_none());
    assert!(m.tensors.iter().all(|t| t.dtype == Dtype::F16), "written with --dtype f16");
    assert_eq!(m.aliases, BTreeMap::from([("head.weight".to_string(), "emb.weight".to_string())]));
    assert_eq!(model.verify(), Vec::<String>::new());
    assert_digests_match(&model);
}

#[test]
fn shards_and_their_index_verify() {
    let model = Model::open(fixture("sharded")).unwrap();
    let m = &model.manifest;
    assert_eq!(m.digest_algorithm().unwrap(), DigestAlgorithm::Blake3);
    assert_eq!(m.index.as_deref(), Some(INDEX));
    let files: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture("sharded").join(INDEX)).unwrap()).unwrap();
    for t in &m.tensors {
        assert_eq!(index["weight_map"][&t.name], t.file.as_str(), "{}", t.name);
    }
    let total: u64 = m.tensors.iter().map(|t| t.nbytes()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(model.verify(), Vec::<String>::new());
    assert_digests_match(&model);
    let report = Model::verify_dir(fixture("sharded")).unwrap();
    assert!(report.ok() && report.files == 2 && report.tensors == 5, "{report:?}");
}

#[test]
fn every_name_gives_torchs_values() {
    for name in ["safetensors", "sharded"] {
        assert_values_match(&Model::open(fixture(name)).unwrap(), name);
    }
}

#[test]
fn modules_find_their_tensors_and_the_tied_head() {
    let model = Model::open(fixture("sharded")).unwrap();
    let fc = model.module("fc").unwrap();
    assert_eq!(fc.module.kind, "Linear");
    assert_eq!(fc.get("weight").unwrap().f32_with_shape(&[8, 8]).unwrap().len(), 64);
    assert_eq!(fc.get("bias").unwrap().shape(), [8]);
    let head = model.module("head").unwrap().get("weight").unwrap();
    assert_eq!(head.entry.name, "emb.weight", "the head is stored once, as the embedding");
    assert_eq!(head.to_f32().unwrap(), model.tensor("emb.weight").unwrap().to_f32().unwrap());
    assert!(matches!(model.module("missing"), Err(Error::NotFound(_))));
}

#[test]
fn a_flipped_byte_is_named_by_tensor_and_file() {
    let dir = scratch_copy("safetensors", "flipped");
    let model = Model::open(&dir).unwrap();
    let (path, at) = data_start(&model, "fc.weight");
    drop(model);
    flip_byte(&path, at, 0x01);
    let report = Model::verify_dir(&dir).unwrap();
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert_eq!(naming(&report.problems, "\"fc.weight\"").len(), 1, "{:?}", report.problems);
    assert_eq!(naming(&report.problems, "model.safetensors: sha256").len(), 1, "{:?}", report.problems);
    let (code, json) = rmc_verify(&dir);
    assert_eq!(code, 8);
    assert_eq!(json["ok"], false);
    assert!(json["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("fc.weight")), "{json}");
}

#[test]
fn a_truncated_shard_is_named_not_read() {
    let dir = scratch_copy("sharded", "truncated");
    let shard = dir.join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 5]).unwrap();
    let report = Model::verify_dir(&dir).unwrap();
    assert!(!report.ok());
    assert!(report.problems.iter().all(|p| p.contains("model-00002-of-00002.safetensors")), "{:?}", report.problems);
    match Model::open(&dir) {
        Err(e @ Error::Mismatch(_)) => assert_eq!(e.exit_code(), 8),
        other => panic!("a truncated shard opened: {:?}", other.map(|m| m.dir)),
    }
    let (code, _) = rmc_verify(&dir);
    assert_eq!(code, 8);
}

#[test]
fn an_index_that_lies_is_named() {
    let dir = scratch_copy("sharded", "index");
    let path = dir.join(INDEX);
    let text = std::fs::read_to_string(&path).unwrap();
    let lie = text.replacen("\"emb.weight\": \"model-00001-of-00002", "\"emb.weight\": \"model-00002-of-00002", 1);
    assert_ne!(lie, text, "the index no longer has the expected form");
    std::fs::write(&path, lie).unwrap();
    let report = Model::verify_dir(&dir).unwrap();
    assert_eq!(report.problems, [format!("{INDEX}: weight_map differs from the manifest")]);
}

#[test]
fn a_missing_folder_or_manifest_is_not_found() {
    let dir = scratch_copy("safetensors", "no-manifest");
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    for path in [dir.clone(), dir.join("absent")] {
        match Model::open(&path) {
            Err(e @ Error::NotFound(_)) => assert_eq!(e.exit_code(), 3),
            other => panic!("{}: {:?}", path.display(), other.map(|m| m.dir)),
        }
    }
}
