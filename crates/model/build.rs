//! Compiles `kernels/fused_attention.cu` to PTX when the `cuda` feature is on (the CPU-only
//! build needs no CUDA toolkit). Uses `nvcc` from `PATH` (or `$NVCC`) and
//! `CUDA_COMPUTE_CAP` (default 90, i.e. `-arch=sm_90`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/fused_attention.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out_dir.join("fused_attention.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let status = Command::new(&nvcc)
        .arg("--ptx")
        .arg(format!("-arch=sm_{cap}"))
        .args(["-O3", "-std=c++17", "-o"])
        .arg(&ptx)
        .arg("kernels/fused_attention.cu")
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (needed by the `cuda` feature): {e}"));
    assert!(
        status.success(),
        "{nvcc} failed to compile kernels/fused_attention.cu ({status})"
    );
}
