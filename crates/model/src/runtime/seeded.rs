//! Seeded weights: every tensor is a pure function of its name and shape, so that the real-config
//! conformance suite (`tests/real_checkpoints.rs`) and its Python reference generator
//! (`tools/conformance/seeded.py`) build the *same* model at a published checkpoint's real widths
//! without shipping any weights.
//!
//! The spec (both implementations follow it bit for bit, in f32):
//! - `key = fnv1a64(name)` (64-bit FNV-1a over the UTF-8 bytes of the tensor name);
//! - element `i` (row-major) draws `z = mix(key + (i + 1) * 0x9E3779B97F4A7C15)`, where `mix` is
//!   the splitmix64 finaliser (wrapping u64 arithmetic), and `v = (z >> 40) * 2^-23 - 1` in
//!   `[-1, 1)`, exact in f32;
//! - the value is `offset + scale * v` (f32 multiply, then f32 add), with `(offset, scale)` from
//!   [`seeded_params`]: biases small, norm weights around 1, layer scales around 0.1,
//!   embeddings uniform in ±1, and every other tensor of rank ≥ 2 scaled by `sqrt(3 / fan_in)`
//!   (unit variance out for unit variance in), so activations stay sane at real widths.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `(offset, scale)` of the tensor `name` with `dims`, by kind (see the module docs).
pub fn seeded_params(name: &str, dims: &[usize]) -> (f32, f32) {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let embedding = matches!(
        leaf,
        "class_embedding" | "position_embedding" | "cls_token" | "position_embeddings"
    ) || name.ends_with("embed_tokens.weight")
        || name.ends_with("tok_embeddings.weight");
    if leaf == "bias" {
        (0.0, 0.02)
    } else if matches!(leaf, "ls1" | "ls2" | "lambda_1" | "lambda_2") {
        (0.1, 0.05)
    } else if embedding {
        (0.0, 1.0)
    } else if name.contains("norm") || name.starts_with("mlp1.0.") {
        (1.0, 0.1)
    } else if dims.len() >= 2 {
        let fan_in: usize = dims[1..].iter().product();
        (0.0, (3.0f64 / fan_in.max(1) as f64).sqrt() as f32)
    } else {
        (0.0, 0.02)
    }
}

/// The seeded values of tensor `name` with `dims`, row-major.
pub fn seeded_values(name: &str, dims: &[usize]) -> Vec<f32> {
    let key = fnv1a64(name.as_bytes());
    let (offset, scale) = seeded_params(name, dims);
    let n: usize = dims.iter().product();
    let unit = 1.0f32 / (1u32 << 23) as f32;
    (0..n as u64)
        .map(|i| {
            let z = mix(key.wrapping_add((i + 1).wrapping_mul(GOLDEN)));
            let v = (z >> 40) as f32 * unit - 1.0;
            offset + scale * v
        })
        .collect()
}

/// Tensor names and shapes of a checkpoint: what its safetensors files would hold.
pub type TensorInventory = BTreeMap<String, Vec<usize>>;

/// A [`SimpleBackend`] holding exactly the tensors of an inventory, each with
/// [`seeded_values`]: a missing name or a wrong shape fails as it would on the real files, and
/// `contains_tensor` (which picks layouts and heads at load) answers as the real files would.
pub struct SeededWeights {
    tensors: TensorInventory,
}

impl SeededWeights {
    /// The seeded tensors of `tensors`.
    pub fn new(tensors: TensorInventory) -> Self {
        SeededWeights { tensors }
    }
}

impl SimpleBackend for SeededWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, dev)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "shape mismatch for {name}, expected: {shape:?}, got: {:?}",
                tensor.shape()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let Some(dims) = self.tensors.get(name) else {
            candle_core::bail!("cannot find tensor {name}")
        };
        Tensor::from_vec(seeded_values(name, dims), dims.as_slice(), dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned bits, printed by `python tools/conformance/seeded.py` (the numpy twin).
    #[test]
    fn values_are_pinned() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let bits = |name: &str, dims: &[usize]| -> Vec<u32> {
            seeded_values(name, dims)
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(
            bits("mlp1.1.weight", &[2, 3]),
            [0xbf522e0e, 0xbed73a30, 0xbe32e5f0, 0xbebf8eb8, 0xbd01dfe0, 0xbec98550]
        );
        assert_eq!(
            bits("language_model.model.norm.weight", &[4]),
            [0x3f8833d2, 0x3f881f0b, 0x3f7b9af1, 0x3f72fb07]
        );
        assert_eq!(
            bits("vision_model.encoder.layers.0.attn.qkv.bias", &[3]),
            [0x3c11821c, 0x3ba884b8, 0x3aac25ae]
        );
    }

    #[test]
    fn only_the_inventory_exists() {
        let tensors = TensorInventory::from([("a.weight".to_string(), vec![2, 3])]);
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(SeededWeights::new(tensors)),
            DType::F32,
            Device::Cpu,
        );
        assert!(vb.contains_tensor("a.weight"));
        assert!(!vb.contains_tensor("b.weight"));
        let t = vb.get((2, 3), "a.weight").unwrap();
        let want = seeded_values("a.weight", &[2, 3]);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        let wrong = vb.get((3, 2), "a.weight").unwrap_err().to_string();
        assert!(wrong.contains("shape mismatch"), "{wrong}");
        assert!(vb.get(4, "b.weight").is_err());
    }
}
