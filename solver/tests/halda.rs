//! The scheduler on prima.cpp's home cluster (the four devices of its Table 1) and on random
//! device sets. The paper publishes RAM, VRAM and disk speeds but no throughputs, so CPU/GPU
//! rates and memory bandwidths below are invented, in proportion to the hardware.

use std::collections::BTreeMap;
use std::time::Instant;

use solver::cost::{layers_per_device, token_latency, total};
use solver::halda::{feasible, neighbours};
use solver::{schedule, DeviceCost, ModelCost, Options, Os, Schedule, Shape};

const GIB: f64 = 1073741824.0;

fn rates(gflops: f64) -> BTreeMap<String, f64> {
    [("Q4_K".to_string(), gflops * 1e9)].into()
}

#[allow(clippy::too_many_arguments)]
fn device(
    os: Os,
    cpu: f64,
    mem_gbs: f64,
    ram_gib: f64,
    disk_gbs: f64,
    gpu: Option<(f64, f64, f64)>,
    model: &ModelCost,
    head: bool,
) -> DeviceCost {
    let (gpu_flops, mem_bw_gpu, vram) = match gpu {
        Some((g, bw, vram)) => (rates(g), bw * 1e9, vram * GIB),
        None => (BTreeMap::new(), 0.0, 0.0),
    };
    let metal = matches!(os, Os::MacOs { metal: true });
    DeviceCost {
        os,
        uma: metal,
        cpu_flops: rates(cpu),
        t_kv_cpy_gpu: if gpu_flops.is_empty() { 0.0 } else { model.kv_token_bytes / mem_bw_gpu },
        gpu_flops,
        mem_bw_cpu: mem_gbs * 1e9,
        mem_bw_gpu,
        t_kv_cpy_cpu: model.kv_token_bytes / (mem_gbs * 1e9),
        t_dev_copy: 4e-5,
        disk: disk_gbs * 1e9,
        t_comm: 5e-3, // Wi-Fi, 3–7 ms in the paper's testbed
        ram_avail: ram_gib * GIB,
        metal_avail: if metal { ram_gib * GIB } else { 0.0 },
        swappable: 0.0,
        c_cpu: model.compute_buffer_bytes(head),
        c_gpu: if gpu.is_some() { 300.0 * 1048576.0 } else { 0.0 },
        vram_avail: vram,
    }
}

/// D1 Mac M1 (Metal, UMA, 2.4 GiB, 0.72 GB/s), D2 laptop i9 + RTX 3070 (4.1 GiB + 8 GiB VRAM,
/// 2.98 GB/s), D3 desktop i9 + RTX 2080 Ti (9.7 GiB + 11 GiB VRAM, 3.17 GB/s), D4 Mate40Pro
/// (1.9 GiB, 1.37 GB/s), listed in the order given (the first one is the head).
fn table1(model: &ModelCost, order: [usize; 4]) -> Vec<DeviceCost> {
    order
        .iter()
        .enumerate()
        .map(|(pos, &d)| {
            let head = pos == 0;
            match d {
                1 => device(Os::MacOs { metal: true }, 60.0, 60.0, 2.4, 0.72, Some((300.0, 60.0, 0.0)), model, head),
                2 => device(Os::Linux, 90.0, 40.0, 4.1, 2.98, Some((1400.0, 400.0, 8.0)), model, head),
                3 => device(Os::Linux, 120.0, 50.0, 9.7, 3.17, Some((1700.0, 550.0, 11.0)), model, head),
                _ => device(Os::Android, 30.0, 20.0, 1.9, 1.37, None, model, head),
            }
        })
        .collect()
}

fn q4k(shape: &Shape) -> ModelCost {
    ModelCost::dense(shape, "Q4_K", 4.85, 4096, 512)
}

/// Every constraint, checked independently of the scheduler's own `feasible`.
fn check_constraints(model: &ModelCost, devs: &[DeviceCost], s: &Schedule, opts: &Options) {
    let big_w: usize = s.w.iter().sum();
    assert!(s.w[0] >= 1, "the head keeps layers: {:?}", s.w);
    assert!(big_w > 0 && model.n_layer.is_multiple_of(big_w), "Σw = {big_w} must divide L = {}", model.n_layer);
    assert_eq!(s.cycles * big_w, model.n_layer);
    let per = layers_per_device(model.n_layer, &s.w, &s.n);
    let placed: usize = per.iter().map(|p| p.0).sum();
    assert_eq!(placed, model.n_layer, "every layer is placed once");
    for (m, d) in devs.iter().enumerate() {
        assert!(s.n[m] <= s.w[m], "device {m}: n {} > w {}", s.n[m], s.w[m]);
        let b_ram = model.layer_bytes + model.layer_kv_bytes;
        let (l, lg) = (per[m].0 as f64, per[m].1 as f64);
        if d.gpu_flops.is_empty() {
            assert_eq!(s.n[m], 0, "device {m} has no GPU");
        } else if d.metal() {
            let head_out = if m == 0 { model.output_bytes } else { 0.0 };
            assert!(lg * b_ram + d.c_gpu + head_out <= d.metal_avail + 1.0, "device {m}: Metal memory");
        } else {
            assert!(lg * b_ram + d.c_gpu <= d.vram_avail + 1.0, "device {m}: {lg} GPU layers overflow VRAM");
        }
        if s.w[m] > 0 && d.disk <= opts.disk_threshold {
            let io = if m == 0 { model.input_row_bytes + model.output_bytes } else { 0.0 };
            let on_cpu = if d.metal() { l } else { l - lg };
            assert!(on_cpu * b_ram + io + d.c_cpu <= d.budget() + 1.0, "device {m}: a slow disk overloaded");
        }
    }
    let active: Vec<usize> = s.active();
    let sub: Vec<DeviceCost> = active.iter().map(|&i| devs[i].clone()).collect();
    let sw: Vec<usize> = active.iter().map(|&i| s.w[i]).collect();
    let sn: Vec<usize> = active.iter().map(|&i| s.n[i]).collect();
    assert!(feasible(model, &sub, &sw, &sn, opts));
    assert!((total(&token_latency(model, &sub, &sw, &sn)) - s.latency).abs() < 1e-12);
}

fn plan(model: &ModelCost, devs: &[DeviceCost], opts: &Options) -> Schedule {
    let t0 = Instant::now();
    let s = schedule(model, devs, opts).unwrap_or_else(|e| panic!("no plan: {e}"));
    eprintln!(
        "L={} w={:?} n={:?} k={} T={:.1} ms  ({} ILPs, {:.1} ms to solve)",
        model.n_layer,
        s.w,
        s.n,
        s.cycles,
        s.latency * 1e3,
        s.ilp_solves,
        t0.elapsed().as_secs_f64() * 1e3
    );
    s
}

#[test]
fn small_models_land_on_the_desktop_gpu_alone() {
    let opts = Options::default();
    for shape in [Shape::QWEN25_7B, Shape::LLAMA3_8B, Shape::QWEN25_14B] {
        let model = q4k(&shape);
        let devs = table1(&model, [3, 1, 2, 4]);
        let s = plan(&model, &devs, &opts);
        check_constraints(&model, &devs, &s, &opts);
        // prima.cpp's "32:0:0:0": one device, every layer on its GPU.
        assert_eq!(s.w, vec![shape.n_layer, 0, 0, 0], "{shape:?}");
        assert_eq!(s.n[0], shape.n_layer);
        assert_eq!(s.cycles, 1);
    }
}

#[test]
fn large_models_spread_over_the_cluster() {
    let opts = Options::default();
    for (shape, min_devices) in [(Shape::QWEN25_32B, 2), (Shape::LLAMA3_70B, 3)] {
        let model = q4k(&shape);
        for order in [[3, 1, 2, 4], [1, 2, 3, 4]] {
            let devs = table1(&model, order);
            let s = plan(&model, &devs, &opts);
            check_constraints(&model, &devs, &s, &opts);
            let active = s.active().len();
            assert!(active >= min_devices, "{shape:?} order {order:?}: only {active} device(s): {:?}", s.w);
            // Both NVIDIA GPUs are used.
            for (pos, &d) in order.iter().enumerate() {
                if d == 2 || d == 3 {
                    assert!(s.n[pos] > 0, "{shape:?}: D{d}'s GPU is idle: n = {:?}", s.n);
                }
            }
            // Better than the even split over all four (what a memory-blind split gets).
            let even = solver::halda::evaluate(&model, &devs, &even_split(shape.n_layer, 4), &[0; 4]);
            assert!(s.latency < even.latency, "{} vs even {}", s.latency, even.latency);
        }
    }
}

fn even_split(l: usize, m: usize) -> Vec<usize> {
    (0..m).map(|i| l / m + usize::from(i < l % m)).collect()
}

#[test]
fn a_window_fixed_by_hand_gives_its_own_prediction() {
    let model = q4k(&Shape::LLAMA3_8B);
    let devs = table1(&model, [3, 1, 2, 4]);
    let hand = solver::halda::evaluate(&model, &devs, &[8, 8, 8, 8], &[8, 0, 8, 0]);
    let best = plan(&model, &devs, &Options::default());
    assert!(best.latency < hand.latency);
    assert_eq!(hand.terms.len(), 4);
    assert!(hand.terms.iter().all(|t| t.comm > 0.0));
}

#[test]
fn without_selection_every_device_keeps_a_layer() {
    let opts = Options { select_devices: false, ..Options::default() };
    let model = q4k(&Shape::LLAMA3_8B);
    let devs = table1(&model, [1, 2, 3, 4]);
    let s = plan(&model, &devs, &opts);
    check_constraints(&model, &devs, &s, &opts);
    assert!(s.w.iter().all(|&w| w >= 1), "{:?}", s.w);
}

#[test]
fn a_model_too_big_for_slow_disks_is_refused_with_a_reason() {
    let model = q4k(&Shape::LLAMA3_70B);
    let mut devs = table1(&model, [4, 1, 2, 3]);
    devs.truncate(1);
    devs[0].disk = 0.05e9; // below the threshold: may not stream weights
    let e = schedule(&model, &devs, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}

/// xorshift64*: reproducible random device sets without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

#[test]
fn random_clusters_get_feasible_locally_optimal_plans() {
    let opts = Options::default();
    let shapes = [Shape::QWEN25_7B, Shape::LLAMA3_8B, Shape::QWEN25_14B, Shape::QWEN25_32B, Shape::LLAMA3_70B];
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let (mut planned, mut refused) = (0, 0);
    for case in 0..40 {
        let shape = shapes[case % shapes.len()];
        let model = q4k(&shape);
        let n_dev = 2 + (rng.next() * 4.0) as usize;
        let devs: Vec<DeviceCost> = (0..n_dev)
            .map(|m| {
                let os = match (rng.next() * 3.0) as usize {
                    0 => Os::Android,
                    1 => Os::MacOs { metal: false },
                    _ => Os::Linux,
                };
                let gpu = (rng.next() < 0.3 && os == Os::Linux)
                    .then(|| (rng.range(300.0, 2000.0), rng.range(150.0, 600.0), rng.range(2.0, 16.0)));
                let mut d = device(
                    os,
                    rng.range(10.0, 200.0),
                    rng.range(10.0, 80.0),
                    rng.range(1.0, 24.0),
                    rng.range(0.05, 3.5),
                    gpu,
                    &model,
                    m == 0,
                );
                d.t_comm = rng.range(0.2e-3, 8e-3);
                if os == Os::Android {
                    d.swappable = rng.range(0.0, 2.0) * GIB;
                }
                d
            })
            .collect();
        let s = match schedule(&model, &devs, &opts) {
            Ok(s) => s,
            Err(e) => {
                refused += 1;
                eprintln!("case {case}: {e}");
                continue;
            }
        };
        planned += 1;
        check_constraints(&model, &devs, &s, &opts);
        let active = s.active();
        let sub: Vec<DeviceCost> = active.iter().map(|&i| devs[i].clone()).collect();
        let sw: Vec<usize> = active.iter().map(|&i| s.w[i]).collect();
        let sn: Vec<usize> = active.iter().map(|&i| s.n[i]).collect();
        // No single-layer (or single GPU-layer) move predicts lower latency.
        for (w2, n2) in neighbours(&sw, &sn) {
            if feasible(&model, &sub, &w2, &n2, &opts) {
                let t = total(&token_latency(&model, &sub, &w2, &n2));
                assert!(t >= s.latency * (1.0 - 1e-9), "case {case}: {w2:?}/{n2:?} gives {t} < {}", s.latency);
            }
        }
        // No single-device removal predicts lower latency.
        let keep_all = Options { select_devices: false, ..opts.clone() };
        for drop in 1..active.len() {
            let rest: Vec<DeviceCost> =
                active.iter().enumerate().filter(|&(p, _)| p != drop).map(|(_, &i)| devs[i].clone()).collect();
            if let Ok(r) = schedule(&model, &rest, &keep_all) {
                if r.active().len() == rest.len() {
                    assert!(
                        r.latency >= s.latency * (1.0 - 1e-9),
                        "case {case}: dropping device {} gives {} < {}",
                        active[drop],
                        r.latency,
                        s.latency
                    );
                }
            }
        }
    }
    eprintln!("{planned} planned, {refused} refused");
    assert!(planned >= 30, "only {planned} of 40 random clusters got a plan");
}
