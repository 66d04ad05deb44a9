//! SafeTensors dtypes and their conversion to f32/f64 (little-endian, row-major).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A SafeTensors dtype code. Codes this crate does not know are kept as `Other`, so a manifest
/// naming a dtype added later still loads (its tensors give bytes, not numbers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    F16,
    Bf16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    F8E4M3,
    F8E5M2,
    F8E8M0,
    C64,
    Other(String),
}

const CODES: [(Dtype, &str); 17] = [
    (Dtype::Bool, "BOOL"),
    (Dtype::U8, "U8"),
    (Dtype::I8, "I8"),
    (Dtype::I16, "I16"),
    (Dtype::U16, "U16"),
    (Dtype::F16, "F16"),
    (Dtype::Bf16, "BF16"),
    (Dtype::I32, "I32"),
    (Dtype::U32, "U32"),
    (Dtype::F32, "F32"),
    (Dtype::F64, "F64"),
    (Dtype::I64, "I64"),
    (Dtype::U64, "U64"),
    (Dtype::F8E4M3, "F8_E4M3"),
    (Dtype::F8E5M2, "F8_E5M2"),
    (Dtype::F8E8M0, "F8_E8M0"),
    (Dtype::C64, "C64"),
];

impl Dtype {
    pub fn parse(code: &str) -> Dtype {
        CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(d, _)| d.clone())
            .unwrap_or_else(|| Dtype::Other(code.to_string()))
    }

    pub fn code(&self) -> &str {
        match self {
            Dtype::Other(code) => code,
            known => CODES.iter().find(|(d, _)| d == known).map(|(_, c)| *c).unwrap_or("?"),
        }
    }

    /// Bytes per element; None for codes this crate does not know (their size cannot be checked).
    pub fn itemsize(&self) -> Option<u64> {
        Some(match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E8M0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => 8,
            Dtype::Other(_) => return None,
        })
    }

    /// Every element as f64 (exact for all of these but I64/U64 beyond 2^53).
    pub fn to_f64(&self, bytes: &[u8]) -> Result<Vec<f64>> {
        macro_rules! each {
            ($n:expr, $f:expr) => {
                bytes.chunks_exact($n).map(|c| $f(c.try_into().unwrap())).collect()
            };
        }
        Ok(match self {
            Dtype::F64 => each!(8, f64::from_le_bytes),
            Dtype::F32 => each!(4, |b| f32::from_le_bytes(b) as f64),
            Dtype::F16 => each!(2, |b| half::f16::from_bits(u16::from_le_bytes(b)).to_f64()),
            Dtype::Bf16 => each!(2, |b| half::bf16::from_bits(u16::from_le_bytes(b)).to_f64()),
            Dtype::I64 => each!(8, |b| i64::from_le_bytes(b) as f64),
            Dtype::I32 => each!(4, |b| i32::from_le_bytes(b) as f64),
            Dtype::I16 => each!(2, |b| i16::from_le_bytes(b) as f64),
            Dtype::I8 => bytes.iter().map(|&b| b as i8 as f64).collect(),
            Dtype::U64 => each!(8, |b| u64::from_le_bytes(b) as f64),
            Dtype::U32 => each!(4, |b| u32::from_le_bytes(b) as f64),
            Dtype::U16 => each!(2, |b| u16::from_le_bytes(b) as f64),
            Dtype::U8 => bytes.iter().map(|&b| b as f64).collect(),
            Dtype::Bool => bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
            other => return Err(Error::Unsupported(format!("no numeric conversion for dtype {}", other.code()))),
        })
    }

    /// Every element as f32, rounded to nearest as torch's `.float()` does; a GGUF output's ggml
    /// block types (`Q8_0`, `Q4_K`, ...) dequantized as ggml does.
    pub fn to_f32(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        match self {
            Dtype::F32 => Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
            Dtype::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
                .collect()),
            Dtype::Bf16 => Ok(bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes(c.try_into().unwrap())).to_f32())
                .collect()),
            Dtype::I64 => Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect()),
            Dtype::U64 => Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()) as f32).collect()),
            Dtype::Other(code) => match crate::gguf::type_by_name(code) {
                Some(ty) => crate::gguf::dequantize(ty, bytes).map_err(Error::Corrupt),
                None => Err(Error::Unsupported(format!("no numeric conversion for dtype {code}"))),
            },
            _ => Ok(self.to_f64(bytes)?.into_iter().map(|v| v as f32).collect()),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Dtype {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Dtype {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Dtype::parse(&String::deserialize(d)?))
    }
}
