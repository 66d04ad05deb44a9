//! `dequantize FILE.gguf`: every tensor of a GGUF file dequantized by the crate, as JSON
//! {name: {"type", "shape", "f32_bits"}} (bit patterns: exact, NaN included).

use std::collections::BTreeMap;

use rmc_load::gguf;
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: dequantize FILE.gguf");
        std::process::exit(2);
    };
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        eprintln!("dequantize: error: {path}: {e}");
        std::process::exit(3);
    });
    let header = gguf::parse(&bytes).unwrap_or_else(|why| {
        eprintln!("dequantize: error: {path}: {why}");
        std::process::exit(6);
    });
    let mut out = BTreeMap::new();
    for t in &header.tensors {
        let start = (header.data_start + t.offset) as usize;
        let values = gguf::dequantize(t.ggml_type, &bytes[start..start + t.nbytes as usize]).expect("whole blocks");
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        out.insert(t.name.clone(), json!({"type": t.ggml_type.name, "shape": t.shape(), "f32_bits": bits}));
    }
    println!("{}", serde_json::Value::Object(out.into_iter().collect()));
}
