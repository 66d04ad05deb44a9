//! GGUF v3 files as rust-model-convert writes them for candle, llama.cpp and realizar: the header
//! (key-value metadata, tensor infos), every count, length and offset checked against the bytes
//! really there (as ggml's `gguf.cpp` checks them), and each ggml type this tool writes
//! dequantized to f32 exactly as ggml's reference `dequantize_row_*` does.

use std::collections::BTreeMap;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_NAME: u64 = 63;
const MAX_DIMS: u32 = 4;
const MAX_STRING: u64 = 1 << 30;
const QK_K: usize = 256;

/// A metadata value (GGUF value types 0 to 12; arrays are flat).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            MetaValue::U8(v) => json!(v),
            MetaValue::I8(v) => json!(v),
            MetaValue::U16(v) => json!(v),
            MetaValue::I16(v) => json!(v),
            MetaValue::U32(v) => json!(v),
            MetaValue::I32(v) => json!(v),
            MetaValue::F32(v) => json!(v),
            MetaValue::Bool(v) => json!(v),
            MetaValue::Str(v) => json!(v),
            MetaValue::Array(v) => serde_json::Value::Array(v.iter().map(MetaValue::to_json).collect()),
            MetaValue::U64(v) => json!(v),
            MetaValue::I64(v) => json!(v),
            MetaValue::F64(v) => json!(v),
        }
    }
}

/// A ggml tensor type: its id in the file, the name the manifest uses, and its block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    pub block: u64,
    pub block_bytes: u64,
}

/// The types rust-model-convert writes (ggml's ids; candle reads all of them).
pub const TYPES: [GgmlType; 13] = [
    GgmlType { id: 0, name: "F32", block: 1, block_bytes: 4 },
    GgmlType { id: 1, name: "F16", block: 1, block_bytes: 2 },
    GgmlType { id: 30, name: "BF16", block: 1, block_bytes: 2 },
    GgmlType { id: 8, name: "Q8_0", block: 32, block_bytes: 34 },
    GgmlType { id: 2, name: "Q4_0", block: 32, block_bytes: 18 },
    GgmlType { id: 3, name: "Q4_1", block: 32, block_bytes: 20 },
    GgmlType { id: 6, name: "Q5_0", block: 32, block_bytes: 22 },
    GgmlType { id: 7, name: "Q5_1", block: 32, block_bytes: 24 },
    GgmlType { id: 10, name: "Q2_K", block: 256, block_bytes: 84 },
    GgmlType { id: 11, name: "Q3_K", block: 256, block_bytes: 110 },
    GgmlType { id: 12, name: "Q4_K", block: 256, block_bytes: 144 },
    GgmlType { id: 13, name: "Q5_K", block: 256, block_bytes: 176 },
    GgmlType { id: 14, name: "Q6_K", block: 256, block_bytes: 210 },
];

pub fn type_by_id(id: u32) -> Option<GgmlType> {
    TYPES.iter().copied().find(|t| t.id == id)
}

pub fn type_by_name(name: &str) -> Option<GgmlType> {
    TYPES.iter().copied().find(|t| t.name == name)
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// In ggml order (the row length first): the numpy shape reversed.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    /// The shape in numpy (row-major) order, as the manifest records it.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
    /// Every tensor's bytes, each padded to the alignment: where the file should end.
    pub data_size: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(format!("{what} at byte {} runs past the end of the file (truncated?)", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str, limit: u64) -> Result<String, String> {
        let n = self.u64(what)?;
        if n > limit {
            return Err(format!("{what} claims {n} bytes, over the limit of {limit}"));
        }
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn value(&mut self, vtype: u32, what: &str, in_array: bool) -> Result<MetaValue, String> {
        Ok(match vtype {
            0 => MetaValue::U8(self.take(1, what)?[0]),
            1 => MetaValue::I8(self.take(1, what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap())),
            3 => MetaValue::I16(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap())),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.u32(what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.take(1, what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("{what}: a bool of {b}")),
            },
            8 => MetaValue::Str(self.string(what, MAX_STRING)?),
            9 if !in_array => {
                let item = self.u32(what)?;
                let count = self.u64(what)?;
                let smallest = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4 | 5 | 6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    _ => return Err(format!("{what}: an array of type {item}, which GGUF arrays cannot hold")),
                };
                if count.saturating_mul(smallest) > self.remaining() {
                    return Err(format!("{what}: an array of {count} items, more than the file holds"));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item, what, true)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.u64(what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(format!("{what} has unknown value type {other}")),
        })
    }
}

fn padded(n: u64, alignment: u64) -> u64 {
    n + (alignment - n % alignment) % alignment
}

/// Does this file start like GGUF?
pub fn is_gguf(file: &[u8]) -> bool {
    file.len() >= 4 && &file[..4] == MAGIC
}

/// Parse and check a GGUF v2/v3 header against the whole file: counts, strings and arrays inside
/// it, unique names under 64 bytes, at most 4 dimensions, rows a whole number of blocks, known
/// types, offsets equal to the running padded sum, and every tensor inside the file.
pub fn parse(file: &[u8]) -> Result<Header, String> {
    let mut c = Cursor { buf: file, pos: 0 };
    if c.take(4, "magic").ok() != Some(&MAGIC[..]) {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = c.u32("version")?;
    if version != 2 && version != 3 {
        return Err(format!("GGUF version {version}; this reader takes versions 2 and 3"));
    }
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.u64("key-value count")?;
    if n_kv.saturating_mul(13) > c.remaining() || n_tensors.saturating_mul(24) > c.remaining() {
        return Err(format!("header claims {n_tensors} tensors and {n_kv} key-value pairs, more than the file holds"));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("key {i}"), MAX_STRING)?;
        if key.is_empty() {
            return Err(format!("key {i} is empty"));
        }
        let vtype = c.u32(&key)?;
        let value = c.value(vtype, &format!("value of {key:?}"), false)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("key {key:?} appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some(other) => return Err(format!("general.alignment must be a u32 power of two, not {other:?}")),
    };
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::BTreeSet::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor name {i}"), MAX_NAME)?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor name {name:?} appears twice"));
        }
        let n_dims = c.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(format!("tensor {name:?} has {n_dims} dimensions; GGUF holds at most {MAX_DIMS}"));
        }
        let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<u64>, String>>()?;
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        raw.push((name, dims, type_id, offset));
    }
    let data_start = if n_tensors > 0 { padded(c.pos as u64, alignment) } else { c.pos as u64 };
    let mut tensors = Vec::with_capacity(raw.len());
    let mut expected = 0u64;
    for (name, dims, type_id, offset) in raw {
        let ggml_type =
            type_by_id(type_id).ok_or_else(|| format!("tensor {name:?} has ggml type {type_id}, which this reader does not know"))?;
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d).filter(|n| *n < 1 << 62))
            .ok_or_else(|| format!("tensor {name:?} has dimensions {dims:?} too large to address"))?;
        if dims.first().map_or(false, |row| row % ggml_type.block != 0) {
            return Err(format!("tensor {name:?}: rows of {} are not a whole number of {}-element blocks", dims[0], ggml_type.block));
        }
        let nbytes = numel / ggml_type.block * ggml_type.block_bytes;
        if offset != expected {
            return Err(format!("tensor {name:?} has offset {offset}, expected {expected} (tensors must follow in order)"));
        }
        let end = data_start.saturating_add(offset).saturating_add(nbytes);
        if end > file.len() as u64 {
            return Err(format!("tensor {name:?} ends at byte {end}, past the file's {}", file.len()));
        }
        expected = offset + padded(nbytes, alignment);
        tensors.push(TensorInfo { name, dims, ggml_type, offset, nbytes });
    }
    Ok(Header { version, metadata, tensors, alignment, data_start, data_size: expected })
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Bytes of `ty` to f32, element for element as ggml's `dequantize_row_*` gives them. The length
/// must be a whole number of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Result<Vec<f32>, String> {
    if data.len() as u64 % ty.block_bytes != 0 {
        return Err(format!("{} bytes are not a whole number of {} blocks", data.len(), ty.name));
    }
    let blocks = data.chunks_exact(ty.block_bytes as usize);
    let mut y = Vec::with_capacity(data.len() / ty.block_bytes as usize * ty.block as usize);
    match ty.name {
        "F32" => y.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
        "F16" => y.extend(data.chunks_exact(2).map(f16)),
        "BF16" => y.extend(data.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))),
        "Q8_0" => blocks.for_each(|b| q8_0(b, &mut y)),
        "Q4_0" => blocks.for_each(|b| q4(b, &mut y, false)),
        "Q4_1" => blocks.for_each(|b| q4(b, &mut y, true)),
        "Q5_0" => blocks.for_each(|b| q5(b, &mut y, false)),
        "Q5_1" => blocks.for_each(|b| q5(b, &mut y, true)),
        "Q2_K" => blocks.for_each(|b| q2_k(b, &mut y)),
        "Q3_K" => blocks.for_each(|b| q3_k(b, &mut y)),
        "Q4_K" => blocks.for_each(|b| q45_k(b, &mut y, false)),
        "Q5_K" => blocks.for_each(|b| q45_k(b, &mut y, true)),
        "Q6_K" => blocks.for_each(|b| q6_k(b, &mut y)),
        other => return Err(format!("no dequantizer for {other}")),
    }
    Ok(y)
}

// Each block's layout is ggml's (`ggml-common.h`): an f16 scale `d` (and for the `_1` types a
// minimum `m`), then the packed quants.
fn q8_0(b: &[u8], y: &mut Vec<f32>) {
    let d = f16(b);
    y.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
}

fn q4(b: &[u8], y: &mut Vec<f32>, with_min: bool) {
    let d = f16(b);
    let (m, qs) = if with_min { (f16(&b[2..]), &b[4..20]) } else { (0.0, &b[2..18]) };
    let offset = if with_min { 0 } else { 8 };
    let value = |q: u8| if with_min { q as f32 * d + m } else { (q as i32 - offset) as f32 * d };
    y.extend(qs.iter().map(|&q| value(q & 0x0F)));
    y.extend(qs.iter().map(|&q| value(q >> 4)));
}

fn q5(b: &[u8], y: &mut Vec<f32>, with_min: bool) {
    let d = f16(b);
    let (m, rest) = if with_min { (f16(&b[2..]), &b[4..]) } else { (0.0, &b[2..]) };
    let qh = u32::from_le_bytes(rest[..4].try_into().unwrap());
    let qs = &rest[4..20];
    let value = |q: u32| if with_min { q as f32 * d + m } else { (q as i32 - 16) as f32 * d };
    y.extend((0..16).map(|j| value((qs[j] & 0x0F) as u32 | ((qh >> j) << 4 & 0x10))));
    y.extend((0..16).map(|j| value((qs[j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10))));
}

fn q2_k(b: &[u8], y: &mut Vec<f32>) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, min) = (f16(&b[80..]), f16(&b[82..]));
    let mut is = 0;
    for n in 0..QK_K / 128 {
        let q = &qs[n * 32..];
        for shift in [0, 2, 4, 6] {
            for half in [0, 16] {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                y.extend((0..16).map(|l| dl * ((q[l + half] >> shift) & 3) as f32 - ml));
            }
        }
    }
}

fn q3_k(b: &[u8], y: &mut Vec<f32>) {
    let (hm, qs, packed) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16(&b[108..]);
    // sixteen 6-bit scales: low 4 bits from bytes 0-7, high 2 bits from bytes 8-11
    let scales: Vec<i32> = (0..16)
        .map(|i| {
            let low = (packed[i % 8] >> (4 * (i / 8))) & 0xF;
            let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
            (low | high << 4) as i32 - 32
        })
        .collect();
    let mut is = 0;
    let mut m = 1u8;
    for n in 0..QK_K / 128 {
        let q = &qs[n * 32..];
        for shift in [0, 2, 4, 6] {
            for half in [0, 16] {
                let dl = d * scales[is] as f32;
                is += 1;
                y.extend((0..16).map(|l| {
                    let low = ((q[l + half] >> shift) & 3) as i32;
                    dl * (low - if hm[l + half] & m != 0 { 0 } else { 4 }) as f32
                }));
            }
            m <<= 1;
        }
    }
}

fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

fn q45_k(b: &[u8], y: &mut Vec<f32>, five: bool) {
    let (d, min, scales) = (f16(b), f16(&b[2..]), &b[4..16]);
    let (qh, ql) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
    let (mut u1, mut u2) = (1u8, 2u8);
    for (i, j) in (0..QK_K).step_by(64).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = &ql[j / 2..j / 2 + 32];
        let high = |l: usize, u: u8| if five && qh[l] & u != 0 { 16.0 } else { 0.0 };
        y.extend((0..32).map(|l| d1 * ((q[l] & 0xF) as f32 + high(l, u1)) - m1));
        y.extend((0..32).map(|l| d2 * ((q[l] >> 4) as f32 + high(l, u2)) - m2));
        u1 <<= 2;
        u2 <<= 2;
    }
}

fn q6_k(b: &[u8], y: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16(&b[208..]);
    for n in 0..QK_K / 128 {
        let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
        let mut out = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
        y.extend_from_slice(&out);
    }
}
