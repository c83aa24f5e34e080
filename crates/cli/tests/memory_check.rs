//! `rewarddance serve` refuses at start-up a model + batch budget that cannot fit the device.

use std::process::Command;

#[test]
fn serve_refuses_a_configuration_that_cannot_fit() {
    let out = Command::new(env!("CARGO_BIN_EXE_rewarddance"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--device-memory-gib", "0.01"])
        .env_remove("REWARDDANCE_MODEL")
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start: {stderr}");
    assert!(stderr.contains("does not fit on the device"), "{stderr}");
}
