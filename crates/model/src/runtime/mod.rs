//! Where a model's weights and files come from: finding and reading a checkpoint (a directory,
//! the Hugging Face hub cache, or the bundled default), and the made-up weight sources for real
//! configurations without their weights (name-seeded for the conformance suite, random for
//! benchmarks), LoRA adapters merged into the weights as they load, and a record of which
//! tensors a model read.

pub mod adapter;
pub mod checkpoint;
pub mod reads;
pub mod seeded;
