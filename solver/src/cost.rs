//! The token-latency model of prima.cpp (arXiv 2504.08791v2, Appendix A.3, Eqs. 11–19): the
//! time one token takes round the ring for given layer windows `w` and GPU layers `n`, as a
//! sum of per-device compute, memory-access, disk-loading and communication terms.
//!
//! This is the direct form, with the `max(·)` of the disk terms kept, valid for any windows
//! (the last round may be partial: `L mod W ≠ 0`). The scheduler's integer program uses the
//! case-split linear form derived from it (Eq. 20); `docs/scheduler-notes.md` has the
//! notation and derivation. Units: bytes, seconds, FLOP and FLOP/s.

use std::collections::BTreeMap;

/// The operating system, as far as page-cache behaviour goes (Eqs. 15–17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Os {
    Linux,
    /// macOS; `metal` says whether the GPU backend (and its all-or-nothing eviction) is on.
    MacOs {
        metal: bool,
    },
    Android,
}

/// What the model costs per layer (the model profile).
#[derive(Clone, Debug)]
pub struct ModelCost {
    /// Decoder layers L.
    pub n_layer: usize,
    /// FLOPs of one decoder layer per weight format (f^q).
    pub layer_flops: BTreeMap<String, f64>,
    /// FLOPs of the output layer per weight format (f_out^q).
    pub out_flops: BTreeMap<String, f64>,
    /// Weight bytes of one decoder layer (b).
    pub layer_bytes: f64,
    /// KV-cache bytes of one layer at the context length (2(h_k e_k + h_v e_v)·n_kv): what the
    /// cache takes in memory (the RAM terms and constraints).
    pub layer_kv_bytes: f64,
    /// KV-cache bytes one token reads per layer at the context the plan is made for (the memory
    /// access term, Eq. 14). The paper uses one n_kv for both; this runtime allocates the cache
    /// at `n_ctx` but a token reads only the filled part, so the two differ.
    pub layer_kv_read_bytes: f64,
    /// K and V bytes one token adds to one layer (what `t^kv_cpy` copies).
    pub kv_token_bytes: f64,
    /// Bytes of one hidden state on the wire (`4e` in the paper for f32).
    pub hidden_bytes: f64,
    /// One row of the input embedding (b_i / V).
    pub input_row_bytes: f64,
    /// Output norm and head (b_o).
    pub output_bytes: f64,
}

/// What a device offers (the device profile, in the model's terms).
#[derive(Clone, Debug)]
pub struct DeviceCost {
    pub os: Os,
    /// Unified memory (no RAM↔VRAM copies).
    pub uma: bool,
    pub cpu_flops: BTreeMap<String, f64>,
    /// Empty when the device has no usable GPU.
    pub gpu_flops: BTreeMap<String, f64>,
    /// Measured read throughput of RAM and VRAM (T^cpu, T^gpu), bytes/s.
    pub mem_bw_cpu: f64,
    pub mem_bw_gpu: f64,
    /// Time to store one token's K and V of one layer, on CPU and GPU.
    pub t_kv_cpy_cpu: f64,
    pub t_kv_cpy_gpu: f64,
    /// Time to copy one hidden state RAM→VRAM plus VRAM→RAM.
    pub t_dev_copy: f64,
    /// Disk read throughput (random on macOS, sequential elsewhere), bytes/s.
    pub disk: f64,
    /// Time to send one hidden state to the next device.
    pub t_comm: f64,
    /// Available RAM (d^avail), and for macOS with Metal its working-set limit.
    pub ram_avail: f64,
    pub metal_avail: f64,
    /// Android: bytes the OS can swap out to make room (min of swappable and free swap).
    pub swappable: f64,
    /// Compute buffers on the CPU and GPU side.
    pub c_cpu: f64,
    pub c_gpu: f64,
    /// Free VRAM for CUDA (`d^avail,cuda`); unused without a GPU and on Metal.
    pub vram_avail: f64,
}

impl DeviceCost {
    /// Whether the device runs layers on a GPU (CUDA, or Metal on macOS).
    pub fn has_gpu(&self) -> bool {
        !self.gpu_flops.is_empty()
    }

    pub fn metal(&self) -> bool {
        matches!(self.os, Os::MacOs { metal: true })
    }

    /// The memory budget Halda starts from and the RAM constraints use (footnote 6 of the
    /// paper): available RAM, plus what Android can swap out, or Metal's working set.
    pub fn budget(&self) -> f64 {
        match self.os {
            Os::Linux | Os::MacOs { metal: false } => self.ram_avail,
            Os::Android => self.ram_avail + self.swappable,
            Os::MacOs { metal: true } => self.metal_avail,
        }
    }
}

/// Per-device latency terms, seconds per token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Terms {
    pub compute: f64,
    pub memory: f64,
    pub disk: f64,
    pub comm: f64,
}

impl Terms {
    pub fn total(&self) -> f64 {
        self.compute + self.memory + self.disk + self.comm
    }
}

/// Layers (`l_m`), GPU layers (`l_m^gpu`) and windows visited (`W_m`) of each device per token,
/// including a partial last round (the text before Eq. 12).
pub fn layers_per_device(n_layer: usize, w: &[usize], n: &[usize]) -> Vec<(usize, usize, usize)> {
    let big_w: usize = w.iter().sum();
    if big_w == 0 {
        return vec![(0, 0, 0); w.len()];
    }
    let (k, r) = (n_layer / big_w, n_layer % big_w);
    let mut before = 0;
    w.iter()
        .zip(n)
        .map(|(&wm, &nm)| {
            let left = r.saturating_sub(before);
            before += wm.min(r);
            (k * wm + wm.min(left), k * nm + nm.min(left), k + usize::from(left > 0).min(1))
        })
        .collect()
}

fn seconds(flops: &BTreeMap<String, f64>, speed: &BTreeMap<String, f64>) -> f64 {
    flops
        .iter()
        .map(|(q, f)| match speed.get(q) {
            Some(&s) if s > 0.0 => f / s,
            _ => f64::INFINITY,
        })
        .sum()
}

/// The latency terms of every device (device 0 is the head) for windows `w` and GPU layers `n`.
/// Every device listed is in the ring (`w_m ≥ 1`, as the paper's Eq. 22 requires): devices the
/// plan drops are left out of `devices` rather than given a zero window.
pub fn token_latency(model: &ModelCost, devices: &[DeviceCost], w: &[usize], n: &[usize]) -> Vec<Terms> {
    let per = layers_per_device(model.n_layer, w, n);
    let b = model.layer_bytes;
    let b_kv = model.layer_bytes + model.layer_kv_read_bytes; // b', as read per token
    let head_io = model.input_row_bytes + model.output_bytes;
    devices
        .iter()
        .zip(&per)
        .enumerate()
        .map(|(m, (d, &(l, lg, visits)))| {
            let head = m == 0;
            let (l, lg) = (l as f64, lg as f64);
            let lc = l - lg;
            // Eq. 12: CPU layers, GPU layers, and the output layer on the head's CPU.
            let mut compute = lc * seconds(&model.layer_flops, &d.cpu_flops);
            if lg > 0.0 {
                compute += lg * seconds(&model.layer_flops, &d.gpu_flops);
            }
            if head {
                compute += seconds(&model.out_flops, &d.cpu_flops);
            }
            // Eqs. 13–14: KV stores, hidden-state copies per window, reading weights and KV.
            let mut memory = lc * d.t_kv_cpy_cpu + lg * d.t_kv_cpy_gpu;
            if lg > 0.0 && !d.uma {
                memory += visits as f64 * d.t_dev_copy;
            }
            memory += lc * b_kv / d.mem_bw_cpu;
            if lg > 0.0 {
                memory += lg * b_kv / d.mem_bw_gpu;
            }
            if head {
                memory += head_io / d.mem_bw_cpu;
            }
            // Eqs. 15–17: what must come from disk again each token.
            let io = if head { head_io } else { 0.0 };
            let b_lio = lc * b + io;
            let cpu_demand = b_lio + model.layer_kv_bytes * lc + d.c_cpu;
            let reread = match d.os {
                Os::Linux | Os::MacOs { metal: false } => (cpu_demand - d.ram_avail).max(model.input_row_bytes),
                Os::Android => {
                    let over = (cpu_demand - d.ram_avail).max(0.0);
                    (cpu_demand - d.ram_avail - over.min(d.swappable)).max(model.input_row_bytes)
                }
                Os::MacOs { metal: true } => {
                    let mapped = l * b + io;
                    let demand = mapped + model.layer_kv_bytes * l + d.c_cpu + d.c_gpu;
                    if demand > d.metal_avail {
                        mapped.max(model.input_row_bytes)
                    } else {
                        model.input_row_bytes
                    }
                }
            };
            let disk = reread / d.disk;
            // Eq. 19: one hidden state sent per window visited (none when the device is alone).
            let comm = if devices.len() > 1 { visits as f64 * d.t_comm } else { 0.0 };
            Terms { compute, memory, disk, comm }
        })
        .collect()
}

/// T (Eq. 11): the sum of every device's terms.
pub fn total(terms: &[Terms]) -> f64 {
    terms.iter().map(Terms::total).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: f64 = 1073741824.0;

    fn model() -> ModelCost {
        // A 7B-like model: 28 layers of ~150 MiB Q4_K, 2 GFLOP per layer per token.
        ModelCost {
            n_layer: 28,
            layer_flops: [("Q4_K".to_string(), 2e9)].into(),
            out_flops: [("Q6_K".to_string(), 1.1e9)].into(),
            layer_bytes: 150.0 * 1048576.0,
            layer_kv_bytes: 4.0 * 1048576.0,
            layer_kv_read_bytes: 4.0 * 1048576.0,
            kv_token_bytes: 1024.0,
            hidden_bytes: 4.0 * 3584.0,
            input_row_bytes: 3584.0 * 0.6,
            output_bytes: 430.0 * 1048576.0,
        }
    }

    fn cpu_device(ram_gib: f64, disk_gbs: f64) -> DeviceCost {
        DeviceCost {
            os: Os::Linux,
            uma: false,
            cpu_flops: [("Q4_K".to_string(), 100e9), ("Q6_K".to_string(), 90e9)].into(),
            gpu_flops: BTreeMap::new(),
            mem_bw_cpu: 40e9,
            mem_bw_gpu: 0.0,
            t_kv_cpy_cpu: 5e-6,
            t_kv_cpy_gpu: 0.0,
            t_dev_copy: 0.0,
            disk: disk_gbs * 1e9,
            t_comm: 5e-3,
            ram_avail: ram_gib * GIB,
            metal_avail: 0.0,
            swappable: 0.0,
            c_cpu: 200e6,
            c_gpu: 0.0,
            vram_avail: 0.0,
        }
    }

    #[test]
    fn a_partial_last_round_goes_to_devices_in_ring_order() {
        // 30 layers, windows 4+3+5 = 12: two full rounds, then 6 layers: 4 to device 0, 2 to device 1.
        let p = layers_per_device(30, &[4, 3, 5], &[0, 1, 0]);
        assert_eq!(p, vec![(12, 0, 3), (8, 3, 3), (10, 0, 2)]);
        assert_eq!(p.iter().map(|x| x.0).sum::<usize>(), 30);
    }

    #[test]
    fn enough_ram_reads_only_the_embedding_row_from_disk() {
        let t = token_latency(&model(), &[cpu_device(16.0, 2.0)], &[28], &[0]);
        assert!((t[0].disk - model().input_row_bytes / 2e9).abs() < 1e-12);
        // Compute: 28 layers × 2 GFLOP at 100 GFLOP/s + the output layer at 90.
        assert!((t[0].compute - (28.0 * 0.02 + 1.1 / 90.0)).abs() < 1e-9);
        assert_eq!(t[0].comm, 0.0, "one device sends nothing");
        let two = token_latency(&model(), &[cpu_device(16.0, 2.0), cpu_device(16.0, 2.0)], &[14, 14], &[0, 0]);
        assert_eq!(two[0].comm, 5e-3);
    }

    #[test]
    fn too_little_ram_pays_for_the_overflow_from_disk() {
        let m = model();
        let small = token_latency(&m, &[cpu_device(2.0, 1.0)], &[28], &[0]);
        let demand = 28.0 * m.layer_bytes + m.input_row_bytes + m.output_bytes + 28.0 * m.layer_kv_bytes + 200e6;
        assert!((small[0].disk - (demand - 2.0 * GIB) / 1e9).abs() < 1e-9);
        assert!(total(&small) > 2.0 * total(&token_latency(&m, &[cpu_device(16.0, 1.0)], &[28], &[0])));
    }

    #[test]
    fn more_rounds_cost_more_hops() {
        let m = model();
        let devs = [cpu_device(16.0, 2.0), cpu_device(16.0, 2.0)];
        let one = token_latency(&m, &devs, &[14, 14], &[0, 0]);
        let two = token_latency(&m, &devs, &[7, 7], &[0, 0]);
        assert_eq!(one[1].comm * 2.0, two[1].comm);
        assert!((one[1].compute - two[1].compute).abs() < 1e-12);
    }

    #[test]
    fn a_faster_gpu_lowers_compute_and_adds_copies() {
        let m = model();
        let mut d = cpu_device(16.0, 2.0);
        d.gpu_flops = [("Q4_K".to_string(), 1000e9)].into();
        d.mem_bw_gpu = 400e9;
        d.t_dev_copy = 1e-4;
        let cpu = token_latency(&m, std::slice::from_ref(&d), &[28], &[0]);
        let gpu = token_latency(&m, &[d], &[28], &[28]);
        assert!(gpu[0].compute < cpu[0].compute / 3.0);
        assert!(gpu[0].memory < cpu[0].memory);
    }

    #[test]
    fn metal_evicts_all_or_nothing_and_android_swaps_first() {
        let m = model();
        let mut mac = cpu_device(2.0, 1.0);
        mac.os = Os::MacOs { metal: true };
        mac.metal_avail = 2.0 * GIB;
        let t = token_latency(&m, &[mac.clone()], &[28], &[0]);
        let mapped = 28.0 * m.layer_bytes + m.input_row_bytes + m.output_bytes;
        assert!((t[0].disk - mapped / 1e9).abs() < 1e-9, "everything is reloaded");
        mac.metal_avail = 64.0 * GIB;
        let fits = token_latency(&m, &[mac], &[28], &[0])[0].disk;
        assert!((fits - m.input_row_bytes / 1e9).abs() < 1e-12, "only the embedding row");

        let mut phone = cpu_device(2.0, 1.0);
        let linux = token_latency(&m, std::slice::from_ref(&phone), &[28], &[0])[0].disk;
        phone.os = Os::Android;
        phone.swappable = 1.0 * GIB;
        let android = token_latency(&m, &[phone], &[28], &[0])[0].disk;
        assert!((linux - android - GIB / 1e9).abs() < 1e-9);
    }
}
