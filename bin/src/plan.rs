//! `prima plan`: the scheduler offline, from saved device profiles.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use solver::{DeviceCost, DeviceProfile, ModelCost, Participation};

use crate::PlanArgs;

/// The profiles of a folder, sorted by file name, the head first.
fn load_profiles(a: &PlanArgs) -> Result<Vec<(String, DeviceProfile)>> {
    let entries = std::fs::read_dir(&a.profiles).with_context(|| format!("cannot read {}", a.profiles.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "json")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let parsed: Result<DeviceProfile> = if f.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(anyhow::Error::from)
        } else {
            toml::from_str(&text).map_err(anyhow::Error::from)
        };
        let p = parsed
            .with_context(|| format!("{} is not a device profile (write one with `prima profile`)", f.display()))?;
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        out.push((name, p));
    }
    if out.is_empty() {
        bail!("no profiles (*.toml or *.json) in {}", a.profiles.display());
    }
    if let Some(head) = &a.head {
        let head = head.trim_end_matches(".toml").trim_end_matches(".json");
        let i = out.iter().position(|(n, _)| n == head).with_context(|| {
            let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
            format!("--head {head}: no such profile (have {names:?})")
        })?;
        let h = out.remove(i);
        out.insert(0, h);
    }
    Ok(out)
}

pub fn plan(a: PlanArgs) -> Result<()> {
    let file = gguf::GgufFile::open(&a.model).with_context(|| format!("cannot load model {}", a.model.display()))?;
    if a.ctx_size == 0 {
        bail!("--ctx-size must be positive");
    }
    if !(a.link_ms.is_finite() && a.link_ms >= 0.0) {
        bail!("--link-ms must be a non-negative number");
    }
    let model = ModelCost::from_gguf(&file, a.ctx_size, a.n_kv).map_err(anyhow::Error::msg)?;
    let profiles = load_profiles(&a)?;
    let fp = solver::profile::fingerprint(&file);
    let mut devices = Vec::new();
    for (i, (name, p)) in profiles.iter().enumerate() {
        if p.model_fingerprint != fp {
            eprintln!("note: {name} was profiled for another model file; its rates are used as they are");
        }
        let part = Participation { t_comm: a.link_ms / 1e3, head: i == 0 };
        let (d, missing) = DeviceCost::from_profile(p, &model, &part);
        if !missing.is_empty() {
            eprintln!("note: {name} has no rate for {missing:?}; its slowest measured rate stands in");
        }
        devices.push(d);
    }
    let t0 = Instant::now();
    let schedule = match &a.layer_window {
        Some(lw) => {
            let w = runtime::plan::parse_windows(lw).map_err(anyhow::Error::msg)?;
            if w.len() != devices.len() {
                bail!("--lw has {} windows for {} profiles", w.len(), devices.len());
            }
            if w[0] == 0 || w.iter().sum::<usize>() > model.n_layer {
                bail!("--lw: the head needs a window and the windows may hold at most {} layers", model.n_layer);
            }
            solver::halda::evaluate(&model, &devices, &w, &vec![0; w.len()])
        }
        None => {
            let opts = solver::Options { select_devices: !a.no_select, cycles: a.cycles, ..Default::default() };
            solver::schedule(&model, &devices, &opts)?
        }
    };
    let solve_ms = t0.elapsed().as_secs_f64() * 1e3;
    if a.json {
        let devs: Vec<serde_json::Value> = profiles
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let t = &schedule.terms[i];
                serde_json::json!({
                    "name": name, "window": schedule.w[i], "gpu_layers": schedule.n[i],
                    "compute_ms": t.compute * 1e3, "memory_ms": t.memory * 1e3,
                    "disk_ms": t.disk * 1e3, "link_ms": t.comm * 1e3, "total_ms": t.total() * 1e3,
                })
            })
            .collect();
        let out = serde_json::json!({
            "n_layer": model.n_layer, "cycles": schedule.cycles, "predicted_ms": schedule.latency * 1e3,
            "solve_ms": solve_ms, "ilp_solves": schedule.ilp_solves, "devices": devs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    const MIB: f64 = 1048576.0;
    println!(
        "model: {} layers of {:.1} MiB (+{:.1} MiB KV cache at {} tokens); the head adds {:.1} MiB",
        model.n_layer,
        model.layer_bytes / MIB,
        model.layer_kv_bytes / MIB,
        a.ctx_size,
        model.output_bytes / MIB
    );
    match &a.layer_window {
        Some(_) => println!("given windows: {} cycle(s)", schedule.cycles),
        None => println!(
            "solved in {solve_ms:.0} ms ({} integer programs): {} cycle(s)",
            schedule.ilp_solves, schedule.cycles
        ),
    }
    let width = profiles.iter().map(|(n, _)| n.len()).max().unwrap_or(6).max(6);
    println!(
        "{:width$}  {:>6} {:>4} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "device", "window", "gpu", "compute", "memory", "disk", "link", "total ms"
    );
    for (i, (name, p)) in profiles.iter().enumerate() {
        let t = &schedule.terms[i];
        if schedule.w[i] == 0 {
            println!("{name:width$}  {:>6}  (left out: it would not lower the predicted latency)", 0);
            continue;
        }
        println!(
            "{name:width$}  {:>6} {:>4} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}   {} threads, {:.1} GiB",
            schedule.w[i],
            schedule.n[i],
            t.compute * 1e3,
            t.memory * 1e3,
            t.disk * 1e3,
            t.comm * 1e3,
            t.total() * 1e3,
            p.threads,
            p.ram_available_bytes as f64 / (1u64 << 30) as f64,
        );
    }
    println!(
        "predicted: {:.2} ms/token ({:.1} tokens/s); windows for node.toml: layer_window = {:?}",
        schedule.latency * 1e3,
        1e3 / (schedule.latency * 1e3).max(1e-9),
        schedule.w
    );
    Ok(())
}
