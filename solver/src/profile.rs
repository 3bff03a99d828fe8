//! `DeviceProfile`: CPU throughput per weight type (the model's types, plus F32 and F16 for
//! attention) at the configured thread count, memory bandwidth, disk read throughput
//! (sequential and random, O_DIRECT where the file system allows it), RAM and swap, and the OS.
//! All in seconds-derived rates, measured here; printed as TOML or JSON and cached per model
//! and device.

use std::collections::BTreeMap;
use std::fs::File;

use gguf::file::read_at;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use compute::matmul::{matmul, QMatrix, QuantizedActs};
use compute::quant::synthetic::random_matrix;
use gguf::{GgmlType, GgufFile};
use serde::{Deserialize, Serialize};

/// Bumped when the measurements change meaning (invalidates cached profiles).
pub const PROFILE_VERSION: u32 = 1;

/// Everything the scheduler knows about one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub version: u32,
    /// `linux`, `android`, `macos`, `windows`, …
    pub os: String,
    pub arch: String,
    pub cpu: String,
    pub cores: usize,
    pub threads: usize,
    /// Matrix × vector throughput per weight type at `threads`, in GFLOP/s (2 flops per weight).
    pub cpu_gflops: BTreeMap<String, f64>,
    /// Bytes read per second from memory (a parallel sum over a buffer much larger than cache).
    pub mem_bandwidth_gbs: f64,
    /// Sequential reads of 4 MiB blocks of the model file, GB/s.
    pub disk_seq_gbs: f64,
    /// Random 4 KiB reads of the model file, MB/s.
    pub disk_rand_mbs: f64,
    /// Whether the disk figures bypassed the page cache (O_DIRECT); `false` means they may be
    /// page-cache speeds.
    pub disk_direct: bool,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_free_bytes: u64,
    /// Whether the OS reclaims page cache under pressure (so mmap'd weights do not count as
    /// used memory): true on Linux and macOS; Android's low-memory killer acts first, so false.
    pub page_cache_reclaimable: bool,
    /// GPU name, memory and throughput when one is found (none without CUDA support).
    pub gpu: Option<GpuProfile>,
    /// Which model the throughputs were measured for (size and header hash).
    pub model_fingerprint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuProfile {
    pub name: String,
    pub vram_bytes: u64,
    pub gflops: f64,
    /// VRAM read throughput; a GPU without it is not scheduled.
    #[serde(default)]
    pub mem_bandwidth_gbs: f64,
}

/// What to measure and how long.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub threads: usize,
    /// Time spent per measurement.
    pub budget: Duration,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            budget: Duration::from_millis(300),
        }
    }
}

fn meminfo() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

fn os_name() -> String {
    if cfg!(target_os = "linux") && Path::new("/system/build.prop").exists() {
        "android".into()
    } else {
        std::env::consts::OS.into()
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `f` repeatedly for about `budget`; returns seconds per call (median of the timed runs).
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < budget || samples.len() < 3 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
        if samples.len() >= 1000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// GFLOP/s of a 4096 × 4096 matrix × vector product of `ty` on the current rayon pool.
fn matvec_gflops(ty: GgmlType, budget: Duration) -> Option<f64> {
    let (n_in, n_out) = (4096, 4096);
    let data = random_matrix(ty, n_in, n_out, 0x9E3779B97F4A7C15)?;
    let w = QMatrix::new("profile", ty, n_in, n_out, &data).ok()?;
    let x: Vec<f32> = (0..n_in).map(|i| (i % 17) as f32 / 17.0 - 0.5).collect();
    let mut out = vec![0.0; n_out];
    let mut acts = QuantizedActs::default();
    let mut tmp = Vec::new();
    let s = time_per_call(budget, || matmul(&w, &x, &mut out, &mut acts, &mut tmp));
    Some(2.0 * (n_in * n_out) as f64 / s / 1e9)
}

/// Parallel sum over a 256 MiB buffer on the current rayon pool: bytes read per second (GB/s),
/// the median of repeated passes within `budget`. The buffer asks for 2 MiB pages (fewer TLB
/// misses; 34–35 → 38–39 GB/s on the 2-core VM), so the figure is the most a streaming read
/// reaches, the stricter yardstick for a weight stream. 0 when the 256 MiB cannot be mapped.
pub fn mem_bandwidth(budget: Duration) -> f64 {
    use rayon::prelude::*;
    let len: usize = 256 << 20;
    let Ok(mut buf) = memmap2::MmapMut::map_anon(len) else { return 0.0 };
    #[cfg(target_os = "linux")]
    let _ = buf.advise(memmap2::Advice::HugePage); // advisory: 4 KiB pages otherwise
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).to_le_bytes());
    }
    // One contiguous share per thread, as a streaming read does. (This VM's own bandwidth jumps
    // between ~35 and ~65 GB/s from one minute to the next; a C streaming read sees the same.)
    let share = len.div_ceil(rayon::current_num_threads().max(1)).next_multiple_of(8);
    let s = time_per_call(budget, || {
        let sum: u64 = buf
            .par_chunks(share)
            .map(|c| {
                c.chunks_exact(8).fold(0u64, |a, w| {
                    a.wrapping_add(u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                })
            })
            .sum();
        std::hint::black_box(sum);
    });
    len as f64 / s / 1e9
}

/// Opens `path` for reads that bypass the page cache where the OS and file system allow it.
fn open_direct(path: &Path) -> (Option<File>, bool) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        if let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            return (Some(f), true);
        }
    }
    (File::open(path).ok(), false)
}

/// A page-aligned window of `len` bytes inside an over-allocated buffer (O_DIRECT needs it).
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + 4096, 0);
    let off = buf.as_ptr().align_offset(4096).min(4096);
    &mut buf[off..off + len]
}

/// (sequential GB/s, random 4 KiB MB/s, direct) over `path`.
fn disk(path: &Path, budget: Duration) -> (f64, f64, bool) {
    let (Some(f), direct) = open_direct(path) else { return (0.0, 0.0, false) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut store = Vec::new();
    // Sequential: 4 MiB blocks from the start until the budget or the file ends.
    let block = 4 << 20;
    let (mut bytes, mut off) = (0u64, 0u64);
    let t0 = Instant::now();
    while t0.elapsed() < budget && off + block as u64 <= len {
        match read_at(&f, aligned(&mut store, block), off) {
            Ok(n) if n > 0 => {
                bytes += n as u64;
                off += n as u64;
            }
            Ok(_) => break,
            // Some file systems accept O_DIRECT at open and refuse the read.
            Err(_) if direct => return disk_buffered(path, budget),
            Err(_) => break,
        }
    }
    let seq = bytes as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1e9;
    // Random: 4 KiB reads at page-aligned pseudo-random offsets.
    let pages = (len / 4096).max(1);
    let mut s = 0x2545F4914F6CDD1Du64;
    let (mut n, t0) = (0u64, Instant::now());
    while t0.elapsed() < budget {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if read_at(&f, aligned(&mut store, 4096), (s % pages) * 4096).is_err() {
            break;
        }
        n += 1;
    }
    let rand = n as f64 * 4096.0 / t0.elapsed().as_secs_f64().max(1e-9) / 1e6;
    (seq, rand, direct)
}

/// Sequential reads through the page cache (random reads are not measured this way: they
/// would report memory speed).
fn disk_buffered(path: &Path, budget: Duration) -> (f64, f64, bool) {
    let Ok(f) = File::open(path) else { return (0.0, 0.0, false) };
    let mut buf = vec![0u8; 4 << 20];
    let (mut bytes, mut off, t0) = (0u64, 0u64, Instant::now());
    while t0.elapsed() < budget {
        match read_at(&f, &mut buf, off) {
            Ok(n) if n > 0 => {
                bytes += n as u64;
                off += n as u64;
            }
            _ => break,
        }
    }
    (bytes as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1e9, 0.0, false)
}

/// File size and an FNV-1a hash of the header: identifies the model a profile was made for.
pub fn fingerprint(file: &GgufFile) -> String {
    let sum =
        file.header_bytes().iter().fold(0xcbf29ce484222325u64, |a, &b| (a ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{}-{sum:016x}", file.file_len())
}

/// Measures this device for the model in `file` (its weight types, and its bytes for the disk figures).
pub fn measure(file: &GgufFile, opts: &ProfileOptions) -> Result<DeviceProfile, String> {
    let fp = fingerprint(file);
    let mut types: Vec<GgmlType> = file.tensors().iter().filter(|t| t.dims.len() == 2).map(|t| t.ggml_type).collect();
    types.extend([GgmlType::F32, GgmlType::F16]);
    types.sort_by_key(|t| t.id());
    types.dedup();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.threads.max(1)).build().map_err(|e| e.to_string())?;
    let (cpu_gflops, mem_bandwidth_gbs) = pool.install(|| {
        let g: BTreeMap<String, f64> =
            types.iter().filter_map(|&t| matvec_gflops(t, opts.budget).map(|g| (t.to_string(), g))).collect();
        (g, mem_bandwidth(opts.budget))
    });
    let (disk_seq_gbs, disk_rand_mbs, disk_direct) = disk(file.path(), opts.budget);
    let mi = meminfo();
    let os = os_name();
    Ok(DeviceProfile {
        version: PROFILE_VERSION,
        page_cache_reclaimable: os != "android",
        os,
        arch: std::env::consts::ARCH.into(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        threads: opts.threads,
        cpu_gflops,
        mem_bandwidth_gbs,
        disk_seq_gbs,
        disk_rand_mbs,
        disk_direct,
        ram_total_bytes: mi.get("MemTotal").copied().unwrap_or(0),
        ram_available_bytes: mi.get("MemAvailable").copied().unwrap_or(0),
        swap_total_bytes: mi.get("SwapTotal").copied().unwrap_or(0),
        swap_free_bytes: mi.get("SwapFree").copied().unwrap_or(0),
        gpu: None,
        model_fingerprint: fp,
    })
}

/// Where a profile for `model` at `threads` is cached: `$XDG_CACHE_HOME/prima` or
/// `~/.cache/prima`.
pub fn cache_path(model_fingerprint: &str, threads: usize) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("prima").join(format!("profile-{model_fingerprint}-t{threads}.toml")))
}

fn read_cached(path: &Path, fp: &str) -> Option<DeviceProfile> {
    let prof = toml::from_str::<DeviceProfile>(&std::fs::read_to_string(path).ok()?).ok()?;
    (prof.version == PROFILE_VERSION && prof.model_fingerprint == fp).then_some(prof)
}

/// An exclusive lock on `path` for as long as the file stays open: nodes started together on
/// one machine measure one after the other (their kernels would otherwise share the cores and
/// each record a fraction of the machine), and the later ones find the cached result.
fn lock(path: &Path) -> Option<File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return None;
        }
    }
    Some(f)
}

/// The cached profile if it is current, else a fresh measurement (then cached).
pub fn load_or_measure(model: &Path, opts: &ProfileOptions, refresh: bool) -> Result<(DeviceProfile, bool), String> {
    let file = GgufFile::open(model).map_err(|e| format!("cannot load {}: {e}", model.display()))?;
    let fp = fingerprint(&file);
    let path = cache_path(&fp, opts.threads);
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
    let _guard = path.as_ref().and_then(|p| lock(&p.with_extension("lock")));
    if !refresh {
        if let Some(prof) = path.as_deref().and_then(|p| read_cached(p, &fp)) {
            return Ok((prof, true));
        }
    }
    let prof = measure(&file, opts)?;
    if let Some(p) = &path {
        // Write then rename, so a reader never sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let saved = toml::to_string(&prof)
            .map_err(|e| e.to_string())
            .and_then(|t| std::fs::write(&tmp, t).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::rename(&tmp, p).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!("cannot cache the profile at {}: {e}", p.display());
        }
    }
    Ok((prof, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_and_memory_give_positive_rates() {
        let b = Duration::from_millis(20);
        for t in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32] {
            let g = matvec_gflops(t, b).unwrap();
            assert!(g.is_finite() && g > 0.0, "{t}: {g}");
        }
        assert!(mem_bandwidth(b) > 0.1);
    }

    #[test]
    fn profiles_round_trip_through_toml() {
        let mut g = BTreeMap::new();
        g.insert("Q4_K".to_string(), 12.5);
        let p = DeviceProfile {
            version: PROFILE_VERSION,
            os: "linux".into(),
            arch: "x86_64".into(),
            cpu: "test".into(),
            cores: 2,
            threads: 2,
            cpu_gflops: g,
            mem_bandwidth_gbs: 40.0,
            disk_seq_gbs: 1.5,
            disk_rand_mbs: 75.0,
            disk_direct: true,
            ram_total_bytes: 1 << 34,
            ram_available_bytes: 1 << 33,
            swap_total_bytes: 0,
            swap_free_bytes: 0,
            page_cache_reclaimable: true,
            gpu: None,
            model_fingerprint: "1-0".into(),
        };
        let text = toml::to_string(&p).unwrap();
        assert_eq!(toml::from_str::<DeviceProfile>(&text).unwrap(), p);
    }

    #[test]
    fn the_disk_is_read() {
        let p = std::env::temp_dir().join(format!("prima-disk-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; 16 << 20]).unwrap();
        let (seq, rand, _) = disk(&p, Duration::from_millis(50));
        assert!(seq > 0.0 && rand > 0.0, "{seq} {rand}");
        std::fs::remove_file(&p).unwrap();
    }
}
