//! Element types as the files name them, and their bytes turned into checked f32s.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// Any other type, by the file's own name for it (`ComplexFloatStorage`, `F8_E4M3`, …).
    Other(String),
}

impl Dtype {
    /// What kdlab loads as a weight.
    pub fn is_float_weight(&self) -> bool {
        matches!(self, Self::F32 | Self::F16 | Self::BF16)
    }

    /// Bytes per element, where known.
    pub fn size(&self) -> Option<u64> {
        Some(match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
            Self::Other(_) => return None,
        })
    }

    /// A PyTorch storage class (`torch.FloatStorage`, …) as the dtype of its elements.
    pub(crate) fn of_torch_storage(name: &str) -> Self {
        match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" | "UntypedStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            other => Self::Other(format!("torch.{other}")),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::F64 => "f64",
            Self::I64 => "int64",
            Self::I32 => "int32",
            Self::I16 => "int16",
            Self::I8 => "int8",
            Self::U8 => "uint8",
            Self::Bool => "bool",
            Self::Other(name) => name,
        })
    }
}

/// Little-endian f32/f16/bf16 bytes as f32s, refused if any is NaN or infinite (a weight that is
/// not finite makes every feature after it NaN).
pub(crate) fn finite_f32(dtype: &Dtype, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let values: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => return Err(format!("is stored as {other}, not as f32, f16 or bf16")),
    };
    let mut bad = values.iter().enumerate().filter(|(_, v)| !v.is_finite());
    if let Some((first, value)) = bad.next() {
        let count = 1 + bad.count();
        return Err(format!(
            "holds {count} non-finite value(s) of {} (the first, {value}, at element {first}); \
             kdlab does not load weights that are not finite",
            values.len()
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_half_types_and_refuses_non_finite_values() {
        let f16 = [half::f16::from_f32(1.5), half::f16::from_f32(-2.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        assert_eq!(finite_f32(&Dtype::F16, &f16).unwrap(), vec![1.5, -2.0]);
        let bf16 = half::bf16::from_f32(0.25).to_le_bytes();
        assert_eq!(finite_f32(&Dtype::BF16, &bf16).unwrap(), vec![0.25]);
        let f32s: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e = finite_f32(&Dtype::F32, &f32s).unwrap_err();
        assert!(e.starts_with("holds 2 non-finite value(s) of 3 (the first, NaN, at element 1)"));
        let e = finite_f32(&Dtype::I64, &[0; 8]).unwrap_err();
        assert_eq!(e, "is stored as int64, not as f32, f16 or bf16");
    }
}
