//! `prima plan`: solves from a folder of saved profiles, predicts hand-made windows, and
//! explains bad input instead of panicking.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn model() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model.sh", p.display());
    p
}

fn profile(ram_gib: u64, gflops: f64, disk_gbs: f64) -> String {
    format!(
        "version = 1\nos = \"linux\"\narch = \"x86_64\"\ncpu = \"test\"\ncores = 4\nthreads = 4\n\
         mem_bandwidth_gbs = 20.0\ndisk_seq_gbs = {disk_gbs}\ndisk_rand_mbs = 50.0\ndisk_direct = true\n\
         ram_total_bytes = {0}\nram_available_bytes = {0}\nswap_total_bytes = 0\nswap_free_bytes = 0\n\
         page_cache_reclaimable = true\nmodel_fingerprint = \"other\"\n\n[cpu_gflops]\nQ4_1 = {gflops}\n\
         Q8_0 = {gflops}\nQ6_K = {gflops}\nF32 = 2.0\nF16 = 2.0\n",
        ram_gib << 30
    )
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("prima-plan-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn plan(profiles: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prima"))
        .arg("plan")
        .arg("--profiles")
        .arg(profiles)
        .arg("-m")
        .arg(model())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_slow_small_device_is_left_out_and_given_windows_are_predicted() {
    let d = dir("solve");
    std::fs::write(d.join("a-desktop.toml"), profile(16, 60.0, 2.0)).unwrap();
    std::fs::write(d.join("b-phone.toml"), profile(1, 3.0, 0.5)).unwrap();
    let out = plan(&d, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("layer_window = [30, 0]"), "{text}");
    assert!(text.contains("b-phone") && text.contains("left out"), "{text}");
    // Both kept when asked, and hand-made windows get their own prediction.
    let kept = plan(&d, &["--no-select"]);
    assert!(String::from_utf8_lossy(&kept.stdout).contains("layer_window = [29, 1]"));
    let given = plan(&d, &["--lw", "20,10", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&given.stdout).unwrap();
    assert_eq!(v["devices"][1]["window"], 10);
    assert!(v["predicted_ms"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_folders_and_profiles_are_explained() {
    let d = dir("bad");
    let empty = plan(&d, &[]);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no profiles"));
    std::fs::write(d.join("broken.toml"), "version = \"one\"\n").unwrap();
    let broken = plan(&d, &[]);
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success() && err.contains("broken.toml") && !err.contains("panicked"), "{err}");
    std::fs::write(d.join("broken.toml"), profile(4, 10.0, 1.0)).unwrap();
    let head = plan(&d, &["--head", "nobody"]);
    assert!(String::from_utf8_lossy(&head.stderr).contains("no such profile"));
    let lw = plan(&d, &["--lw", "10,10"]);
    assert!(String::from_utf8_lossy(&lw.stderr).contains("2 windows for 1 profiles"));
    std::fs::remove_dir_all(&d).unwrap();
}
