//! The layer scheduler: prima.cpp's Halda (arXiv 2504.08791v2, Sec. 3.3, Algorithm 1) with
//! device selection, then a local refinement against the direct token-latency model.
//!
//! For a fixed set assignment (cases M1–M4, which linearise the disk term, Appendix A.3) and a
//! fixed number of cycles `k`, choosing the windows `w` and GPU layers `n` is an integer linear
//! program (Eqs. 6–10), solved here with HiGHS through good_lp. Halda iterates: assign sets
//! from the current plan, solve the ILP for every `k` that divides `L`, keep the best, and
//! re-assign until the sets stop changing; a calibration step forces the overloaded device with
//! the slowest disk to stay within memory when a GPU is left with free VRAM.
//!
//! The ILP's objective is the case-split linear form (Eq. 20). The plan is then scored and
//! polished with the direct form ([`token_latency`], Eqs. 11–19, which keeps the `max(·)`):
//! single-layer moves between devices, single GPU-layer moves, and dropping a device, as long
//! as the predicted latency falls. A device is dropped when the paper's rule says so (it got a
//! single CPU layer) or when its removal lowers the predicted latency; the head is never dropped.
//! `docs/scheduler-notes.md` has the notation, the equations and the code-level details.

use good_lp::solvers::highs::highs;
use good_lp::{constraint, variable, Expression, ProblemVariables, Solution, SolverModel, Variable};

use crate::cost::{token_latency, total, DeviceCost, ModelCost, Os, Terms};

/// Knobs of the scheduler.
#[derive(Clone, Debug)]
pub struct Options {
    /// Drop devices that do not pay for themselves (v2 device selection). The head stays.
    pub select_devices: bool,
    /// Use exactly this many cycles (`k`) instead of trying every divisor of `L`.
    pub cycles: Option<usize>,
    /// Disks slower than this (bytes/s) are never overloaded (`s^disk_threshold`; the
    /// reference code's default is 0.1 GB/s, the paper gives no value).
    pub disk_threshold: f64,
    /// Polish the ILP's plan against the direct latency model.
    pub refine: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { select_devices: true, cycles: None, disk_threshold: 0.1e9, refine: true }
    }
}

/// A plan for the devices it was asked about, in their order (device 0 is the head).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Layer window of each device; 0 for a dropped device.
    pub w: Vec<usize>,
    /// GPU layers inside each window.
    pub n: Vec<usize>,
    /// Rounds of the ring per token (`k = L / Σw`).
    pub cycles: usize,
    /// Predicted per-device terms (zero for dropped devices), seconds per token.
    pub terms: Vec<Terms>,
    /// Predicted token latency `T` (Eq. 11), seconds.
    pub latency: f64,
    /// Integer programs solved on the way.
    pub ilp_solves: usize,
}

impl Schedule {
    /// Indices of the devices that hold layers.
    pub fn active(&self) -> Vec<usize> {
        (0..self.w.len()).filter(|&m| self.w[m] > 0).collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("no devices to schedule")]
    NoDevices,
    #[error("no feasible plan: {0}")]
    Infeasible(String),
}

/// Cases of Appendix A.3: which devices may overload their memory and pay for it from disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// macOS without Metal, RAM overloaded.
    M1,
    /// macOS with Metal, shared memory overloaded.
    M2,
    /// Linux or Android, RAM overloaded.
    M3,
    /// Fits in memory, or its disk is too slow to be overloaded (or forced there).
    M4,
}

/// Per-device quantities that do not depend on the plan.
struct Dev<'a> {
    d: &'a DeviceCost,
    head: bool,
    /// b' in memory: weights and the KV cache of one layer.
    b_ram: f64,
    /// b^cio (Eq. 33): the head's embedding row and output layer, plus compute buffers.
    b_cio: f64,
    alpha: f64,
    beta: f64,
    xi: f64,
}

fn secs(flops: &std::collections::BTreeMap<String, f64>, speed: &std::collections::BTreeMap<String, f64>) -> f64 {
    flops.iter().map(|(q, f)| speed.get(q).filter(|s| **s > 0.0).map_or(f64::INFINITY, |s| f / s)).sum()
}

impl<'a> Dev<'a> {
    fn new(model: &ModelCost, d: &'a DeviceCost, head: bool) -> Dev<'a> {
        let b_read = model.layer_bytes + model.layer_kv_read_bytes;
        let cpu = secs(&model.layer_flops, &d.cpu_flops);
        // α, β, ξ: the platform constants after Assumption 1.
        let alpha = cpu + d.t_kv_cpy_cpu + b_read / d.mem_bw_cpu;
        let beta = if d.has_gpu() {
            secs(&model.layer_flops, &d.gpu_flops) - cpu + d.t_kv_cpy_gpu - d.t_kv_cpy_cpu + b_read / d.mem_bw_gpu
                - b_read / d.mem_bw_cpu
        } else {
            0.0
        };
        let xi = d.t_comm + if d.has_gpu() && !d.uma { d.t_dev_copy } else { 0.0 };
        let io = if head { model.input_row_bytes + model.output_bytes } else { 0.0 };
        Dev { d, head, b_ram: model.layer_bytes + model.layer_kv_bytes, b_cio: io + d.c_cpu, alpha, beta, xi }
    }

    /// Memory for CPU layers (RAM, or Metal's working set), less what every device needs.
    fn ram_room(&self) -> f64 {
        match self.d.os {
            Os::MacOs { metal: true } => self.d.metal_avail - self.b_cio - self.d.c_gpu,
            _ => self.d.budget() - self.b_cio,
        }
    }

    /// GPU layers that fit per token (Eqs. 34–35 times L·b'/W): the cap on `k · n_m`.
    fn gpu_room_layers(&self, model: &ModelCost) -> f64 {
        if !self.d.has_gpu() {
            return 0.0;
        }
        let room = if self.d.metal() {
            self.d.metal_avail - self.d.c_gpu - if self.head { model.output_bytes } else { 0.0 }
        } else {
            self.d.vram_avail - self.d.c_gpu
        };
        (room / self.b_ram).max(0.0)
    }

    /// Layers whose memory counts against RAM (GPU layers on CUDA sit in VRAM).
    fn ram_layers(&self, l: f64, lg: f64) -> f64 {
        if self.d.metal() || matches!(self.d.os, Os::MacOs { .. }) {
            l
        } else {
            l - lg
        }
    }

    /// Whether `l` layers (`lg` on the GPU) per token overload the device's memory.
    fn overloaded(&self, l: f64, lg: f64) -> bool {
        self.ram_layers(l, lg) * self.b_ram > self.ram_room() + 1e-6
    }
}

/// Valid cycle counts: `k` divides `L` and leaves every device at least one layer.
fn cycle_choices(n_layer: usize, n_dev: usize, fixed: Option<usize>) -> Vec<usize> {
    (1..=n_layer)
        .filter(|&k| n_layer.is_multiple_of(k) && n_layer / k >= n_dev && fixed.is_none_or(|f| f == k))
        .collect()
}

/// Whether a plan for `devs` (all in the ring) respects every constraint of the ILP that holds
/// whatever the sets: windows of at least one layer, `n ≤ w`, whole cycles (`Σw` divides `L`,
/// Assumption 1), GPU layers within VRAM (Eqs. 34–36), and devices whose disk is slower than
/// the threshold kept within memory.
pub fn feasible(model: &ModelCost, devs: &[DeviceCost], w: &[usize], n: &[usize], opts: &Options) -> bool {
    let big_w: usize = w.iter().sum();
    if devs.is_empty() || w.len() != devs.len() || n.len() != devs.len() || big_w == 0 {
        return false;
    }
    if !model.n_layer.is_multiple_of(big_w) || opts.cycles.is_some_and(|c| c * big_w != model.n_layer) {
        return false;
    }
    let k = (model.n_layer / big_w) as f64;
    devs.iter().enumerate().all(|(m, d)| {
        let dev = Dev::new(model, d, m == 0);
        let (l, lg) = (k * w[m] as f64, k * n[m] as f64);
        w[m] >= 1
            && n[m] <= w[m]
            && lg <= dev.gpu_room_layers(model) + 1e-9
            && (d.disk > opts.disk_threshold || !dev.overloaded(l, lg))
    })
}

struct Halda<'a> {
    model: &'a ModelCost,
    devs: Vec<Dev<'a>>,
    opts: &'a Options,
    solves: usize,
}

/// One ILP solution: objective, windows, GPU layers.
type Solved = (f64, Vec<usize>, Vec<usize>);

impl<'a> Halda<'a> {
    fn assign(&self, w: &[usize], n: &[usize], k: usize, forced: &[bool]) -> Vec<Case> {
        self.devs
            .iter()
            .enumerate()
            .map(|(m, dev)| {
                let (l, lg) = ((k * w[m]) as f64, (k * n[m]) as f64);
                if forced[m] || dev.d.disk <= self.opts.disk_threshold || !dev.overloaded(l, lg) {
                    Case::M4
                } else {
                    match dev.d.os {
                        Os::MacOs { metal: false } => Case::M1,
                        Os::MacOs { metal: true } => Case::M2,
                        Os::Linux | Os::Android => Case::M3,
                    }
                }
            })
            .collect()
    }

    /// The fixed-`k` ILP (Eqs. 6–10) for `sets`; `None` when infeasible.
    fn solve(&mut self, k: usize, sets: &[Case]) -> Option<Solved> {
        self.solves += 1;
        let l = self.model.n_layer;
        let big_w = l / k;
        let kf = k as f64;
        let mut vars = ProblemVariables::new();
        let mut w: Vec<Variable> = Vec::new();
        let mut n: Vec<Variable> = Vec::new();
        for dev in &self.devs {
            w.push(vars.add(variable().integer().min(1).max(big_w as f64)));
            let cap =
                if dev.d.has_gpu() { (dev.gpu_room_layers(self.model) / kf).floor().min(big_w as f64) } else { 0.0 };
            n.push(vars.add(variable().integer().min(0).max(cap.max(0.0))));
        }
        let mut objective = Expression::from(0.0);
        let mut constant = 0.0;
        for (m, dev) in self.devs.iter().enumerate() {
            let disk = dev.d.disk;
            let b = self.model.layer_bytes;
            let (a, bc) = match sets[m] {
                Case::M1 => (dev.alpha + dev.b_ram / disk, 0.0),
                Case::M2 => (dev.alpha + b / disk, dev.beta),
                Case::M3 => (dev.alpha + dev.b_ram / disk, dev.beta - dev.b_ram / disk),
                Case::M4 => (dev.alpha, dev.beta),
            };
            objective += (kf * a) * w[m] + (kf * bc) * n[m];
            constant += kf * dev.xi;
        }
        let mut problem = vars.minimise(objective.clone()).using(highs);
        problem.set_verbose(false);
        let mut problem = problem.set_threads(1).set_time_limit(2.0);
        let sum: Expression = w.iter().copied().sum();
        problem = problem.with(constraint!(sum == big_w as f64));
        for (m, dev) in self.devs.iter().enumerate() {
            problem = problem.with(constraint!(n[m] - w[m] <= 0.0));
            // The RAM row of the device's set (Eqs. 27–32), in layers per window.
            let room = dev.ram_room() / (kf * dev.b_ram);
            let cpu_layers: Expression = if dev.d.has_gpu() && !matches!(dev.d.os, Os::MacOs { .. }) {
                w[m] - n[m]
            } else {
                Expression::from(w[m])
            };
            problem = match sets[m] {
                Case::M1 | Case::M2 | Case::M3 => problem.with(constraint!(cpu_layers >= room)),
                // A device that may not overload keeps its layers in memory.
                Case::M4 => problem.with(constraint!(cpu_layers <= room.max(0.0).floor())),
            };
        }
        let solution = problem.solve().ok()?;
        let wv: Vec<usize> = w.iter().map(|&v| solution.value(v).round().max(0.0) as usize).collect();
        let nv: Vec<usize> = n.iter().map(|&v| solution.value(v).round().max(0.0) as usize).collect();
        if wv.iter().sum::<usize>() != big_w {
            return None;
        }
        Some((solution.eval(&objective) + constant, wv, nv))
    }

    /// Algorithm 1 for a fixed set of devices (all get at least one layer).
    fn run(&mut self) -> Option<(Vec<usize>, Vec<usize>)> {
        let (l, m) = (self.model.n_layer, self.devs.len());
        let ks = cycle_choices(l, m, self.opts.cycles);
        if ks.is_empty() {
            return None;
        }
        // Line 1: windows proportional to the memory budgets (k = 1), at least one layer each.
        let budgets: Vec<f64> = self.devs.iter().map(|d| d.d.budget().max(1.0)).collect();
        let sum_b: f64 = budgets.iter().sum();
        let mut w: Vec<usize> = budgets.iter().map(|b| ((b / sum_b) * l as f64).round().max(1.0) as usize).collect();
        while w.iter().sum::<usize>() > l {
            let i = (0..m).max_by_key(|&i| w[i]).unwrap_or(0);
            w[i] -= 1;
        }
        let short = l - w.iter().sum::<usize>();
        let richest = (0..m).max_by(|&a, &b| budgets[a].total_cmp(&budgets[b])).unwrap_or(0);
        w[richest] += short;
        let mut n = vec![0; m];
        let mut forced = vec![false; m];
        let mut prev_sets: Option<Vec<Case>> = None;
        let mut last: Option<(Vec<usize>, Vec<usize>)> = None;
        let mut best_seen: Option<(Vec<usize>, Vec<usize>)> = None;
        for _ in 0..(4 * m + 8) {
            let k_cur = l / w.iter().sum::<usize>().max(1);
            let sets = self.assign(&w, &n, k_cur, &forced);
            if prev_sets.as_ref() == Some(&sets) {
                break;
            }
            prev_sets = Some(sets.clone());
            let mut best: Option<(usize, Solved)> = None;
            for &k in &ks {
                if let Some(s) = self.solve(k, &sets) {
                    if best.as_ref().is_none_or(|(_, b)| s.0 < b.0 - 1e-12) {
                        best = Some((k, s));
                    }
                }
            }
            let Some((k_best, (_, bw, bn))) = best else {
                return best_seen;
            };
            best_seen = Some((bw.clone(), bn.clone()));
            // Calibration (lines 13–15): a GPU with free VRAM while layers sit on an
            // overloaded CPU: keep the overloaded device with the slowest disk in memory.
            let weak = (0..m).any(|i| bw[i] == 1 && bn[i] == 0);
            let gpu = |i: usize| self.devs[i].d.has_gpu();
            let free_gpu = (0..m)
                .any(|i| gpu(i) && (bn[i] as f64) < (self.devs[i].gpu_room_layers(self.model) / k_best as f64).floor());
            let gpu_over = (0..m).any(|i| gpu(i) && bw[i] > bn[i]);
            let cpu_over = (0..m).any(|i| !gpu(i) && sets[i] != Case::M4);
            if !weak && free_gpu && (gpu_over || cpu_over) {
                let slowest = (0..m)
                    .filter(|&i| sets[i] != Case::M4 && !forced[i])
                    .min_by(|&a, &b| self.devs[a].d.disk.total_cmp(&self.devs[b].d.disk));
                if let Some(s) = slowest {
                    forced[s] = true;
                    prev_sets = None;
                    continue;
                }
            }
            w = bw;
            n = bn;
            if last.as_ref().is_some_and(|(lw, ln)| *lw == w && *ln == n) {
                break;
            }
            last = Some((w.clone(), n.clone()));
        }
        last.or(best_seen)
    }
}

/// The devices `idx` of `devs`, in that order (the ring a plan over a subset runs on).
fn subset(devs: &[DeviceCost], idx: &[usize]) -> Vec<DeviceCost> {
    idx.iter().map(|&i| devs[i].clone()).collect()
}

/// Steepest descent over single-layer and single-GPU-layer moves, keeping `Σw` (so `k`).
fn polish(model: &ModelCost, sub: &[DeviceCost], w: &mut [usize], n: &mut [usize], opts: &Options) {
    let score = |w: &[usize], n: &[usize]| total(&token_latency(model, sub, w, n));
    let mut cur = score(w, n);
    for _ in 0..10_000 {
        let mut best: Option<(f64, Vec<usize>, Vec<usize>)> = None;
        for cand in neighbours(w, n) {
            if feasible(model, sub, &cand.0, &cand.1, opts) {
                let t = score(&cand.0, &cand.1);
                if t < cur * (1.0 - 1e-9) && best.as_ref().is_none_or(|b| t < b.0) {
                    best = Some((t, cand.0, cand.1));
                }
            }
        }
        match best {
            Some((t, bw, bn)) => {
                cur = t;
                w.copy_from_slice(&bw);
                n.copy_from_slice(&bn);
            }
            None => break,
        }
    }
}

/// Every plan one move away: a layer from one device to another (a GPU layer leaving a full
/// window becomes a CPU layer), or one more or one less GPU layer on a device.
pub fn neighbours(w: &[usize], n: &[usize]) -> Vec<(Vec<usize>, Vec<usize>)> {
    let m = w.len();
    let mut out = Vec::new();
    for i in 0..m {
        for j in 0..m {
            if i != j && w[i] > 1 {
                let (mut w2, mut n2) = (w.to_vec(), n.to_vec());
                w2[i] -= 1;
                w2[j] += 1;
                n2[i] = n2[i].min(w2[i]);
                out.push((w2, n2));
            }
        }
        if n[i] < w[i] {
            let mut n2 = n.to_vec();
            n2[i] += 1;
            out.push((w.to_vec(), n2));
        }
        if n[i] > 0 {
            let mut n2 = n.to_vec();
            n2[i] -= 1;
            out.push((w.to_vec(), n2));
        }
    }
    out
}

/// A plan over a subset of the devices.
#[derive(Clone)]
struct Candidate {
    /// Indices into the devices given to [`schedule`]; the head first.
    idx: Vec<usize>,
    w: Vec<usize>,
    n: Vec<usize>,
    /// Predicted terms of each device of `idx`, and their sum.
    terms: Vec<Terms>,
    latency: f64,
}

/// Halda (and polishing) over the devices `idx` of `devs`, all kept; `idx[0]` must be the head.
fn solve_subset(
    model: &ModelCost,
    devs: &[DeviceCost],
    idx: &[usize],
    opts: &Options,
    solves: &mut usize,
) -> Option<Candidate> {
    let sub: Vec<Dev> = idx.iter().map(|&i| Dev::new(model, &devs[i], i == 0)).collect();
    let mut h = Halda { model, devs: sub, opts, solves: 0 };
    let found = h.run();
    *solves += h.solves;
    let (mut w, mut n) = found?;
    let sub = subset(devs, idx);
    if !feasible(model, &sub, &w, &n, opts) {
        return None;
    }
    if opts.refine {
        polish(model, &sub, &mut w, &mut n, opts);
    }
    let terms = token_latency(model, &sub, &w, &n);
    Some(Candidate { idx: idx.to_vec(), w, n, latency: total(&terms), terms })
}

/// Plans `model` over `devs` (device 0 is the head and always stays).
pub fn schedule(model: &ModelCost, devs: &[DeviceCost], opts: &Options) -> Result<Schedule, ScheduleError> {
    if devs.is_empty() {
        return Err(ScheduleError::NoDevices);
    }
    let mut solves = 0;
    let mut idx: Vec<usize> = (0..devs.len()).collect();
    // Paper's device selection: solve, drop devices left with one CPU layer, repeat. Devices
    // that make the plan infeasible (no room even for one layer, with a slow disk) go first.
    let mut plan = loop {
        match solve_subset(model, devs, &idx, opts, &mut solves) {
            Some(c) => {
                let weak: Vec<usize> =
                    (1..idx.len()).filter(|&p| opts.select_devices && c.w[p] == 1 && c.n[p] == 0).collect();
                if weak.is_empty() {
                    break c;
                }
                idx = (0..idx.len()).filter(|p| !weak.contains(p)).map(|p| idx[p]).collect();
            }
            None if idx.len() > 1 => {
                // Drop the non-head device with the least room.
                let p = (1..idx.len())
                    .min_by(|&a, &b| devs[idx[a]].budget().total_cmp(&devs[idx[b]].budget()))
                    .unwrap_or(1);
                idx.remove(p);
            }
            None => {
                return Err(ScheduleError::Infeasible(format!(
                    "{} layers of {:.0} MiB (with their KV cache) do not fit the devices given, and the head's disk \
                     ({:.2} GB/s) is too slow to stream the rest",
                    model.n_layer,
                    (model.layer_bytes + model.layer_kv_bytes) / 1048576.0,
                    devs[0].disk / 1e9
                )))
            }
        }
    };
    // Removal by prediction: drop the device whose removal lowers the latency most, repeat.
    while opts.select_devices && plan.idx.len() > 1 {
        let mut best: Option<Candidate> = None;
        for p in 1..plan.idx.len() {
            let rest: Vec<usize> = plan.idx.iter().enumerate().filter(|&(q, _)| q != p).map(|(_, &i)| i).collect();
            if let Some(c) = solve_subset(model, devs, &rest, opts, &mut solves) {
                let bar = best.as_ref().map_or(plan.latency, |b| b.latency);
                if c.latency < bar * (1.0 - 1e-9) {
                    best = Some(c);
                }
            }
        }
        match best {
            Some(b) => plan = b,
            None => break,
        }
    }
    let Candidate { idx, w, n, terms, latency } = plan;
    let mut out = Schedule {
        w: vec![0; devs.len()],
        n: vec![0; devs.len()],
        cycles: model.n_layer / w.iter().sum::<usize>().max(1),
        terms: vec![Terms::default(); devs.len()],
        latency,
        ilp_solves: solves,
    };
    for (p, (&i, t)) in idx.iter().zip(terms).enumerate() {
        out.w[i] = w[p];
        out.n[i] = n[p];
        out.terms[i] = t;
    }
    Ok(out)
}

/// The plan the latency model predicts for fixed windows (for `layer_window` given by hand, and
/// to compare): devices with a zero window are left out of the ring.
pub fn evaluate(model: &ModelCost, devs: &[DeviceCost], w: &[usize], n: &[usize]) -> Schedule {
    let idx: Vec<usize> = (0..devs.len()).filter(|&i| w.get(i).copied().unwrap_or(0) > 0).collect();
    let sub = subset(devs, &idx);
    let sw: Vec<usize> = idx.iter().map(|&i| w[i]).collect();
    let sn: Vec<usize> = idx.iter().map(|&i| n.get(i).copied().unwrap_or(0)).collect();
    let terms = token_latency(model, &sub, &sw, &sn);
    let mut out = Schedule {
        w: w.to_vec(),
        n: (0..devs.len()).map(|i| n.get(i).copied().unwrap_or(0)).collect(),
        cycles: model.n_layer.div_ceil(sw.iter().sum::<usize>().max(1)),
        terms: vec![Terms::default(); devs.len()],
        latency: total(&terms),
        ilp_solves: 0,
    };
    for (p, &i) in idx.iter().enumerate() {
        out.terms[i] = terms[p].clone();
    }
    out
}
