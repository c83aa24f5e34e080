//! Neural-network code shared by every family: normalisation and activation layers, the fused
//! varlen attention kernel (CPU and CUDA), and the packed Qwen2 / InternLM2 decoder with its
//! key/value cache, and unmerged LoRA updates of its linear layers.

pub mod fused_attention;
pub mod grad;
pub mod language;
pub mod layers;
pub mod lora;
