//! The model dtype (vLLM's `--dtype`): the element type of activations, weights and KV cache on
//! a GPU backend. The CPU backend computes in f32 whatever is asked.

use std::fmt;

/// A 16-bit floating-point element type a GPU backend computes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ModelDtype {
    /// bfloat16 (the default).
    #[default]
    Bf16,
    /// IEEE half precision (float16).
    F16,
}

/// What a user asked for with `--dtype` / `dtype=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeRequest {
    /// The checkpoint's `torch_dtype` (bf16 when absent, for GGUF files, or for float32).
    Auto,
    /// float32: the CPU backend's precision; GPU backends have no f32 model path.
    F32,
    Exact(ModelDtype),
}

impl DtypeRequest {
    /// Parses vLLM's dtype names: `auto`, `bfloat16`, `float16` / `half`, `float32` / `float`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(DtypeRequest::Auto),
            "bfloat16" => Ok(DtypeRequest::Exact(ModelDtype::Bf16)),
            "float16" | "half" => Ok(DtypeRequest::Exact(ModelDtype::F16)),
            "float32" | "float" => Ok(DtypeRequest::F32),
            other => Err(format!(
                "unknown dtype `{other}` (expected auto, bfloat16, float16, half, float32 or float)"
            )),
        }
    }

    /// The dtype a GPU model runs in, given the checkpoint config's `torch_dtype` (None for GGUF
    /// files and configs without one). `auto` follows vLLM: the checkpoint's 16-bit dtype, and
    /// bfloat16 for float32 checkpoints and when nothing is known. float32 is an error.
    pub fn resolve_gpu(self, torch_dtype: Option<&str>) -> Result<ModelDtype, String> {
        match self {
            DtypeRequest::Exact(d) => Ok(d),
            DtypeRequest::Auto => Ok(match torch_dtype.map(str::trim) {
                Some("float16") | Some("half") => ModelDtype::F16,
                _ => ModelDtype::Bf16,
            }),
            DtypeRequest::F32 => Err(
                "dtype float32 is not supported on the CUDA backend (it computes in bfloat16 or \
                 float16): use dtype auto, bfloat16 or float16, or the cpu device"
                    .into(),
            ),
        }
    }
}

impl ModelDtype {
    /// vLLM's (and torch's) name.
    pub fn name(self) -> &'static str {
        match self {
            ModelDtype::Bf16 => "bfloat16",
            ModelDtype::F16 => "float16",
        }
    }

    /// The weight dtype a checkpoint tensor has when it is already in this element type (loaded
    /// without conversion).
    pub fn weight_dtype(self) -> crate::WeightDtype {
        match self {
            ModelDtype::Bf16 => crate::WeightDtype::BF16,
            ModelDtype::F16 => crate::WeightDtype::F16,
        }
    }

    /// `v` rounded to this type (nearest even), as f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            ModelDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
            ModelDtype::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// The bits of `v` rounded to this type.
    pub fn to_bits(self, v: f32) -> u16 {
        match self {
            ModelDtype::Bf16 => half::bf16::from_f32(v).to_bits(),
            ModelDtype::F16 => half::f16::from_f32(v).to_bits(),
        }
    }

    /// The value of bits `b` of this type.
    pub fn from_bits(self, b: u16) -> f32 {
        match self {
            ModelDtype::Bf16 => half::bf16::from_bits(b).to_f32(),
            ModelDtype::F16 => half::f16::from_bits(b).to_f32(),
        }
    }
}

impl fmt::Display for ModelDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_resolve() {
        let p = |s| DtypeRequest::parse(s).unwrap();
        assert_eq!(p("half"), DtypeRequest::Exact(ModelDtype::F16));
        assert_eq!(p("float16"), DtypeRequest::Exact(ModelDtype::F16));
        assert_eq!(p("bfloat16"), DtypeRequest::Exact(ModelDtype::Bf16));
        assert_eq!(p("float"), DtypeRequest::F32);
        assert!(DtypeRequest::parse("int3").is_err());
        let auto = p("auto");
        assert_eq!(auto.resolve_gpu(None), Ok(ModelDtype::Bf16));
        assert_eq!(auto.resolve_gpu(Some("float16")), Ok(ModelDtype::F16));
        assert_eq!(auto.resolve_gpu(Some("bfloat16")), Ok(ModelDtype::Bf16));
        assert_eq!(auto.resolve_gpu(Some("float32")), Ok(ModelDtype::Bf16));
        assert_eq!(
            p("float16").resolve_gpu(Some("bfloat16")),
            Ok(ModelDtype::F16)
        );
        assert!(p("float32").resolve_gpu(None).is_err());
    }

    #[test]
    fn bits_round_trip() {
        for d in [ModelDtype::Bf16, ModelDtype::F16] {
            for v in [0.0f32, 1.0, -2.5, 1e-3, 65504.0] {
                assert_eq!(d.from_bits(d.to_bits(v)), d.round(v));
            }
        }
        // bf16 keeps 8 significant bits, f16 11.
        assert_eq!(ModelDtype::Bf16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(ModelDtype::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
    }
}
