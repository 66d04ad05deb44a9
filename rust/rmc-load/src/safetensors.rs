//! The SafeTensors header: 8-byte little-endian length N, N bytes of JSON, then the data buffer.
//! Every size and offset is checked against the bytes really there before it is used.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::dtype::Dtype;

pub const MAX_HEADER: u64 = 100_000_000;

#[derive(Debug, Clone)]
pub struct HeaderEntry {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data_offsets: [u64; 2],
}

#[derive(Debug, Clone)]
pub struct Header {
    /// Where the data buffer starts in the file (8 + N).
    pub data_start: u64,
    pub tensors: BTreeMap<String, HeaderEntry>,
    pub metadata: BTreeMap<String, String>,
}

/// Parse and check a whole file's header: offsets inside the buffer, each tensor's byte length equal
/// to its shape times its dtype's size, and the tensors covering the buffer exactly.
pub fn parse_header(file: &[u8]) -> Result<Header, String> {
    if file.len() < 8 {
        return Err(format!("{} bytes, shorter than the 8-byte header length", file.len()));
    }
    let n = u64::from_le_bytes(file[..8].try_into().unwrap());
    if n > MAX_HEADER || n > file.len() as u64 - 8 {
        return Err(format!("header length {n} is more than the file holds"));
    }
    let data_start = 8 + n;
    let doc: BTreeMap<String, Value> = serde_json::from_slice(&file[8..data_start as usize])
        .map_err(|e| format!("header is not a JSON object ({e})"))?;
    let data_len = file.len() as u64 - data_start;
    let mut header = Header { data_start, tensors: BTreeMap::new(), metadata: BTreeMap::new() };
    for (name, value) in doc {
        if name == "__metadata__" {
            header.metadata = serde_json::from_value(value).map_err(|_| "__metadata__ is not string to string".to_string())?;
            continue;
        }
        let entry = entry(&value).ok_or_else(|| format!("tensor {name:?}: malformed header entry"))?;
        let [begin, end] = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(format!("tensor {name:?}: offsets [{begin}, {end}] outside the {data_len}-byte data buffer"));
        }
        let numel = entry.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let expected = numel.zip(entry.dtype.itemsize()).and_then(|(n, s)| n.checked_mul(s));
        if expected.map_or(false, |bytes| bytes != end - begin) {
            return Err(format!("tensor {name:?}: {} bytes for shape {:?} of {}", end - begin, entry.shape, entry.dtype));
        }
        header.tensors.insert(name, entry);
    }
    let mut spans: Vec<(u64, u64, &str)> =
        header.tensors.iter().map(|(n, e)| (e.data_offsets[0], e.data_offsets[1], n.as_str())).collect();
    spans.sort();
    let mut pos = 0;
    for (begin, end, name) in spans {
        if begin != pos {
            return Err(format!("tensor {name:?}: data starts at {begin}, expected {pos} (a hole or an overlap)"));
        }
        pos = end;
    }
    if pos != data_len {
        return Err(format!("tensors cover {pos} of the {data_len}-byte data buffer"));
    }
    Ok(header)
}

fn entry(value: &Value) -> Option<HeaderEntry> {
    let dtype = Dtype::parse(value.get("dtype")?.as_str()?);
    let shape = value.get("shape")?.as_array()?.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>()?;
    let offsets = value.get("data_offsets")?.as_array()?;
    if offsets.len() != 2 {
        return None;
    }
    Some(HeaderEntry { dtype, shape, data_offsets: [offsets[0].as_u64()?, offsets[1].as_u64()?] })
}
