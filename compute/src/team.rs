//! A team of threads for the matrix products of one forward call: the caller plus `n - 1`
//! helpers that spin between products instead of sleeping.
//!
//! A decode step of a small model is ~200 products of 10–100 µs each, separated by short serial
//! work (norms, RoPE, attention). A thread pool whose idle threads go to sleep pays a wake-up on
//! nearly every product; here the helpers busy-wait on an epoch counter for a while between
//! products, as llama.cpp's threads do, and park only when idle for longer. Helpers live for one
//! call (scoped threads, so everything they touch is borrowed safely; spawning costs ~20 µs).
//!
//! Work split: each thread owns one contiguous run of rows ("home") and claims it front to back
//! in chunks of [`ROWS_PER_TASK`], so it streams its weights sequentially, which the hardware
//! prefetcher follows (interleaved short runs measured at half the speed). A thread that runs
//! out takes half of what is left of another's home, from the back, as one run, so a preempted
//! thread (another process, parallel tests) costs at most one chunk of waiting.
//!
//! Attention runs on the team too ([`Team::attention`]): its (row, head) items are claimed one
//! at a time by whichever thread is free, from a copy of the queries and shared handles on the
//! caches' layer, so the serial stretch between a step's products shrinks instead of leaving
//! the helpers spinning.
//!
//! Every output value is computed by exactly one thread with the same kernel: results do not
//! depend on the team size or on which thread took which chunk.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::matmul::{
    compute_rows, takes_interleaved_rows, transpose_rows, vec_dot_type, QMatrix, QuantizedActs, ROWS_PER_TASK,
};
use crate::ops::{self, Attn, AttnInput, AttnScratch};
use crate::quant::simd::Kernels;

/// Buffers a team works in, kept between forward calls so decoding does not allocate.
#[derive(Default)]
pub struct TeamBuffers {
    acts: RwLock<QuantizedActs>,
    attn: RwLock<AttnInput>,
    helper_out: Vec<Mutex<HelperOut>>,
    helper_attn: Vec<Mutex<AttnScratch>>,
    /// Per helper: its thread, once started, and whether it is parked (or about to park).
    helper_threads: Vec<Mutex<Option<Thread>>>,
    helper_parked: Vec<AtomicBool>,
    /// The caller's rows, weight row by weight row (`[r][t]`).
    own: Vec<f32>,
    /// The last product's progress, reused when no helper still holds it.
    spare: Option<Arc<Progress>>,
    /// The same for attention.
    attn_spare: Option<Arc<AttnProgress>>,
}

/// What one helper computed for task `epoch`: chunks `(first row, rows)` of a product, or
/// `(first item, items)` of an attention, and their values.
#[derive(Default)]
struct HelperOut {
    epoch: usize,
    chunks: Vec<(usize, usize)>,
    values: Vec<f32>,
}

/// Most matrices one product takes (Q, K and V).
pub const MAX_GROUP: usize = 3;

/// One product: up to [`MAX_GROUP`] matrices of the same input, their rows numbered one after
/// another (matrix `i`'s row `r` is row `starts[i] + r`).
#[derive(Clone)]
struct Job<'m> {
    ws: [Option<QMatrix<'m>>; MAX_GROUP],
    starts: [usize; MAX_GROUP],
    k: Kernels,
    progress: Arc<Progress>,
}

impl Job<'_> {
    /// Rows `r0..r0 + n` of the group (`out`: their values, weight row by weight row), matrix
    /// by matrix; each row is computed exactly as a product of its matrix alone computes it.
    fn compute(&self, acts: &QuantizedActs, r0: usize, n: usize, out: &mut [f32], scratch: &mut Vec<f32>) {
        let n_rows = acts.n_rows();
        for (w, &start) in self.ws.iter().zip(&self.starts) {
            let Some(w) = w else { break };
            let (lo, hi) = (r0.max(start), (r0 + n).min(start + w.n_out));
            if lo < hi {
                let at = (lo - r0) * n_rows;
                compute_rows(self.k, w, acts, lo - start, &mut out[at..at + (hi - lo) * n_rows], scratch);
            }
        }
    }
}

/// Who has claimed and finished which rows of one product. A fresh (or reused) value per
/// product: a helper that wakes late holds an old one, whose rows are all claimed, so it cannot
/// take part in the wrong product.
struct Progress {
    epoch: usize,
    /// Per thread (caller first): its home's unclaimed rows, `front << 32 | back`, each on its
    /// own cache lines (side by side, every claim by one thread evicted the other's).
    homes: Vec<Home>,
    rows_done: AtomicUsize,
}

/// Who has claimed and finished which items of one attention, as [`Progress`] for a product.
/// Items are claimed one at a time: there are few (rows × heads) and their work varies.
struct AttnProgress {
    epoch: usize,
    n_items: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

impl AttnProgress {
    /// The next unclaimed item, if any.
    fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.n_items).then_some(i)
    }
}

/// What the helpers are asked to do: the current epoch's task.
#[derive(Clone)]
enum Task<'m> {
    Product(Job<'m>),
    Attention(Arc<AttnProgress>),
}

/// One thread's home, alone on its cache lines (128 bytes: the adjacent-line prefetcher pairs
/// 64-byte lines).
#[repr(align(128))]
struct Home(AtomicU64);

struct Shared<'m, 'b> {
    epoch: AtomicUsize,
    stop: AtomicBool,
    job: Mutex<Option<Task<'m>>>,
    acts: &'b RwLock<QuantizedActs>,
    attn: &'b RwLock<AttnInput>,
    helper_out: &'b [Mutex<HelperOut>],
    helper_attn: &'b [Mutex<AttnScratch>],
    helper_threads: &'b [Mutex<Option<Thread>>],
    helper_parked: &'b [AtomicBool],
    caller: Thread,
    caller_parked: AtomicBool,
}

/// The caller's handle on a running team.
pub struct Team<'m, 'b> {
    shared: &'b Shared<'m, 'b>,
    own: &'b mut Vec<f32>,
    spare: &'b mut Option<Arc<Progress>>,
    attn_spare: &'b mut Option<Arc<AttnProgress>>,
}

/// A poisoned lock only means another team thread panicked; the scope re-raises that panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` with a team of `n_threads` threads (the caller included).
pub fn with_team<'m, R>(n_threads: usize, bufs: &mut TeamBuffers, f: impl FnOnce(&mut Team<'m, '_>) -> R) -> R {
    let n_helpers = n_threads.max(1) - 1;
    bufs.helper_out.resize_with(n_helpers, Default::default);
    bufs.helper_attn.resize_with(n_helpers, Default::default);
    // Epochs restart with every team; results left from an earlier team must not match one.
    for o in &mut bufs.helper_out {
        o.get_mut().unwrap_or_else(PoisonError::into_inner).epoch = 0;
    }
    bufs.helper_threads.resize_with(n_helpers, Default::default);
    bufs.helper_parked.resize_with(n_helpers, Default::default);
    for (t, p) in bufs.helper_threads.iter_mut().zip(&mut bufs.helper_parked) {
        *t.get_mut().unwrap_or_else(PoisonError::into_inner) = None;
        *p.get_mut() = false;
    }
    let shared = Shared {
        epoch: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        job: Mutex::new(None),
        acts: &bufs.acts,
        attn: &bufs.attn,
        helper_out: &bufs.helper_out,
        helper_attn: &bufs.helper_attn,
        helper_threads: &bufs.helper_threads,
        helper_parked: &bufs.helper_parked,
        caller: std::thread::current(),
        caller_parked: AtomicBool::new(false),
    };
    /// Releases the helpers however `f` ends (a panic included), or the scope would wait forever.
    struct Stop<'a, 'm, 'b>(&'a Shared<'m, 'b>);
    impl Drop for Stop<'_, '_, '_> {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Release);
            self.0.publish();
        }
    }
    std::thread::scope(|s| {
        for h in 0..n_helpers {
            let shared = &shared;
            s.spawn(move || helper(shared, h));
        }
        let _stop = Stop(&shared);
        f(&mut Team { shared: &shared, own: &mut bufs.own, spare: &mut bufs.spare, attn_spare: &mut bufs.attn_spare })
    })
}

/// How long an idle helper spins for the next product before it parks: longer than the serial
/// work between two products of a step, short enough not to starve other processes.
const HELPER_SPIN: Duration = Duration::from_micros(200);
/// Key × head products of an attention below which the caller computes it alone (the hand-off
/// costs about as much as this many products).
const TEAM_ATTENTION_MIN_WORK: usize = 256;
/// How long the caller spins for the helpers' last chunks before it parks.
const CALLER_SPIN: Duration = Duration::from_micros(50);

/// Spins until `ready()` or `max` has passed; whether `ready()` came true.
fn spin_until(max: Duration, ready: impl Fn() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if t0.elapsed() > max {
            return false;
        }
    }
}

/// Waits until `ready()`: spins for `max`, then parks, announcing it in `parked` first. The
/// waker sets the condition, then checks `parked` (both `SeqCst`), so no wake-up is lost.
fn wait_until(max: Duration, parked: &AtomicBool, ready: impl Fn() -> bool) {
    if spin_until(max, &ready) {
        return;
    }
    loop {
        parked.store(true, Ordering::SeqCst);
        if ready() {
            break;
        }
        // Returns at once if an unpark came in between; spurious returns just re-check.
        std::thread::park();
    }
    parked.store(false, Ordering::Relaxed);
}

fn helper(s: &Shared<'_, '_>, h: usize) {
    *lock(&s.helper_threads[h]) = Some(std::thread::current());
    let mut seen = 0;
    loop {
        wait_until(HELPER_SPIN, &s.helper_parked[h], || s.epoch.load(Ordering::SeqCst) != seen);
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let job = match lock(&s.job).clone() {
            Some(Task::Product(job)) => job,
            Some(Task::Attention(p)) => {
                attention_share(s, &p, h);
                continue;
            }
            None => continue,
        };
        let mut out: Option<MutexGuard<'_, HelperOut>> = None;
        work(s, &job.progress, h + 1, |r0, n, acts| {
            let o = out.get_or_insert_with(|| {
                let mut o = lock(&s.helper_out[h]);
                o.epoch = job.progress.epoch;
                o.chunks.clear();
                o.values.clear();
                o
            });
            o.chunks.push((r0, n));
            let at = o.values.len();
            o.values.resize(at + n * acts.n_rows(), 0.0);
            let mut scratch = Vec::new();
            job.compute(acts, r0, n, &mut o.values[at..], &mut scratch);
        });
    }
}

/// Helper `h`'s share of an attention: items claimed one at a time until none is left, their
/// outputs kept in its [`HelperOut`] for the caller to collect.
fn attention_share(s: &Shared<'_, '_>, p: &AttnProgress, h: usize) {
    let mut done = 0;
    {
        // As for a product: the caller's next write of the inputs waits for this guard.
        let input = s.attn.read().unwrap_or_else(PoisonError::into_inner);
        let hd = input.head_dim();
        let mut scratch: Option<MutexGuard<'_, AttnScratch>> = None;
        let mut out: Option<MutexGuard<'_, HelperOut>> = None;
        while let Some(i) = p.claim() {
            let o = out.get_or_insert_with(|| {
                let mut o = lock(&s.helper_out[h]);
                o.epoch = p.epoch;
                o.chunks.clear();
                o.values.clear();
                o
            });
            match o.chunks.last_mut() {
                Some((first, n)) if *first + *n == i => *n += 1,
                _ => o.chunks.push((i, 1)),
            }
            let at = o.values.len();
            o.values.resize(at + hd, 0.0);
            let scratch = scratch.get_or_insert_with(|| lock(&s.helper_attn[h]));
            input.compute(i..i + 1, &mut o.values[at..], scratch);
            done += 1;
        }
    }
    if done > 0 {
        p.done.fetch_add(done, Ordering::SeqCst);
        if s.caller_parked.load(Ordering::SeqCst) {
            s.caller.unpark();
        }
    }
}

const FRONT: u32 = 32;

fn unpack(v: u64) -> (usize, usize) {
    ((v >> FRONT) as usize, (v & u32::MAX as u64) as usize)
}

fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << FRONT) | back as u64
}

/// Claims the next chunk of `home`: from the front for its owner, from the back for others.
fn claim(home: &AtomicU64, from_front: bool) -> Option<(usize, usize)> {
    let mut v = home.load(Ordering::Relaxed);
    loop {
        let (front, back) = unpack(v);
        if front >= back {
            return None;
        }
        let (r0, n, new) = if from_front {
            let n = ROWS_PER_TASK.min(back - front);
            (front, n, pack(front + n, back))
        } else {
            // Half of what is left, as one run the thief streams sequentially (16-row steals
            // from the back ran at half the speed); on the owner's 16-row grid.
            let r0 = front.max((back - (back - front) / 2) / ROWS_PER_TASK * ROWS_PER_TASK);
            (r0, back - r0, pack(front, r0))
        };
        match home.compare_exchange_weak(v, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((r0, n)),
            Err(cur) => v = cur,
        }
    }
}

/// Thread `me`'s share of `job`: its own home, then what is left of the others'. `compute(r0,
/// n, acts)` computes rows `r0..r0 + n`; the rows are counted as done once, at the end.
///
/// Shared state is touched as little as possible: with a lock and a counter updated per chunk,
/// the two cores of a small model's products spent a third of their time passing those cache
/// lines back and forth.
fn work(s: &Shared<'_, '_>, job: &Progress, me: usize, mut compute: impl FnMut(usize, usize, &QuantizedActs)) {
    let n_homes = job.homes.len();
    let mut done = 0;
    {
        // Claimed rows keep the caller waiting, so the activations stay as they are meanwhile;
        // the caller's next write waits for this guard.
        let acts = s.acts.read().unwrap_or_else(PoisonError::into_inner);
        for i in 0..n_homes {
            let home = (me + i) % n_homes;
            while let Some((r0, n)) = claim(&job.homes[home].0, i == 0) {
                compute(r0, n, &acts);
                done += n;
            }
        }
    }
    if done > 0 {
        job.rows_done.fetch_add(done, Ordering::SeqCst);
        if s.caller_parked.load(Ordering::SeqCst) {
            s.caller.unpark();
        }
    }
}

impl Shared<'_, '_> {
    /// Copies what the helpers computed for task `epoch` into `out`, where unit `i` (a weight row
    /// of a product, an item of an attention) holds `width` values from `i · width`.
    fn collect(&self, epoch: usize, width: usize, out: &mut [f32]) {
        for out_h in self.helper_out {
            let out_h = lock(out_h);
            if out_h.epoch != epoch {
                continue;
            }
            let mut at = 0;
            for &(i0, n) in &out_h.chunks {
                let len = n * width;
                out[i0 * width..i0 * width + len].copy_from_slice(&out_h.values[at..at + len]);
                at += len;
            }
        }
    }

    /// Starts the next epoch (a product, or the stop) and wakes parked helpers.
    fn publish(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for (p, t) in self.helper_parked.iter().zip(self.helper_threads) {
            if p.load(Ordering::SeqCst) {
                if let Some(t) = &*lock(t) {
                    t.unpark();
                }
            }
        }
    }
}

impl<'m> Team<'m, '_> {
    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.helper_out.len() + 1
    }

    /// [`ops::attention_batch`] on the team: its (row, head) items are shared out among the
    /// threads when there is enough work (else the caller computes them all). The values are the
    /// same either way, bit for bit.
    pub fn attention(&mut self, a: Attn<'_>, out: &mut [f32], scratch: &mut AttnScratch) {
        let n_items = a.n_items();
        if self.threads() == 1 || n_items < 2 || a.work() < TEAM_ATTENTION_MIN_WORK {
            ops::attention_batch(a, out, scratch);
            return;
        }
        let s = self.shared;
        assert_eq!(std::thread::current().id(), s.caller.id(), "a team is driven by the thread that made it");
        s.attn.write().unwrap_or_else(PoisonError::into_inner).set(a);
        let epoch = s.epoch.load(Ordering::Relaxed) + 1;
        let p = self.next_attn_progress(epoch, n_items);
        *lock(&s.job) = Some(Task::Attention(p.clone()));
        s.publish();

        let hd = a.hp.head_dim;
        let mut done = 0;
        {
            let input = s.attn.read().unwrap_or_else(PoisonError::into_inner);
            while let Some(i) = p.claim() {
                input.compute(i..i + 1, &mut out[i * hd..(i + 1) * hd], scratch);
                done += 1;
            }
        }
        p.done.fetch_add(done, Ordering::SeqCst);
        wait_until(CALLER_SPIN, &s.caller_parked, || p.done.load(Ordering::SeqCst) == n_items);
        s.collect(epoch, hd, out);
        drop(p);
        *self.attn_spare = match lock(&s.job).take() {
            Some(Task::Attention(p)) => Some(p),
            _ => None,
        };
    }

    /// [`QuantizedActs::set_runs`] for the team's next products (empty: the batch is one run).
    pub fn set_runs(&mut self, lengths: impl IntoIterator<Item = usize>) {
        self.shared.acts.write().unwrap_or_else(PoisonError::into_inner).set_runs(lengths);
    }

    /// `out[t][r] = Σ_k w[r][k] · x[t][k]`, as [`crate::matmul::matmul`], on the team.
    pub fn matmul(&mut self, w: &QMatrix<'m>, x: &[f32], out: &mut [f32]) {
        self.product(&[*w], x, &mut [out]);
    }

    /// [`Team::matmul`] of each matrix of `ws` with the same `x` into the `outs` in order, as
    /// one product when they take the same activation format (one quantization, one hand-off
    /// to the helpers and one wait instead of one per matrix), else one by one. The results
    /// are those of separate calls, bit for bit.
    pub fn matmuls(&mut self, ws: &[QMatrix<'m>], x: &[f32], outs: &mut [&mut [f32]]) {
        assert_eq!(ws.len(), outs.len(), "one output per matrix");
        let same = ws.windows(2).all(|p| p[0].n_in == p[1].n_in && vec_dot_type(p[0].ty) == vec_dot_type(p[1].ty));
        if same {
            for (ws, outs) in ws.chunks(MAX_GROUP).zip(outs.chunks_mut(MAX_GROUP)) {
                self.product(ws, x, outs);
            }
        } else {
            for (w, out) in ws.iter().zip(outs) {
                self.product(std::slice::from_ref(w), x, std::slice::from_mut(out));
            }
        }
    }

    /// One product of 1..=[`MAX_GROUP`] matrices with the same input length and activation
    /// format.
    fn product(&mut self, ws: &[QMatrix<'m>], x: &[f32], outs: &mut [&mut [f32]]) {
        let s = self.shared;
        let (Some(w0), true) = (ws.first(), ws.len() <= MAX_GROUP) else {
            panic!("a product takes 1 to {MAX_GROUP} matrices, not {}", ws.len())
        };
        let n_rows = x.len() / w0.n_in;
        assert_eq!(x.len(), n_rows * w0.n_in, "activation length is not a multiple of the row length");
        let mut group = [None; MAX_GROUP];
        let mut starts = [0; MAX_GROUP];
        let mut n_out = 0;
        for (i, (w, out)) in ws.iter().zip(outs.iter()).enumerate() {
            assert_eq!(out.len(), n_rows * w.n_out, "output has the wrong length");
            (group[i], starts[i]) = (Some(*w), n_out);
            n_out += w.n_out;
        }
        assert!(n_out < 1 << FRONT, "too many rows for the work split");
        // Helpers wake the thread that made the team; only it may wait here.
        assert_eq!(std::thread::current().id(), s.caller.id(), "a team is driven by the thread that made it");
        let k = Kernels::active();
        let interleave = ws.iter().any(|w| takes_interleaved_rows(w.ty));
        s.acts.write().unwrap_or_else(PoisonError::into_inner).quantize(k, vec_dot_type(w0.ty), x, w0.n_in, interleave);
        let epoch = s.epoch.load(Ordering::Relaxed) + 1;
        let job = Job { ws: group, starts, k, progress: self.next_progress(epoch, n_out) };
        *lock(&s.job) = Some(Task::Product(job.clone()));
        s.publish();

        self.own.resize(n_rows * n_out, 0.0);
        let own = &mut *self.own;
        let mut scratch = Vec::new();
        work(s, &job.progress, 0, |r0, n, acts| {
            job.compute(acts, r0, n, &mut own[r0 * n_rows..(r0 + n) * n_rows], &mut scratch);
        });
        wait_until(CALLER_SPIN, &s.caller_parked, || job.progress.rows_done.load(Ordering::SeqCst) == n_out);
        s.collect(epoch, n_rows, own);
        for ((w, &start), out) in ws.iter().zip(&starts).zip(outs.iter_mut()) {
            let mine = &own[start * n_rows..(start + w.n_out) * n_rows];
            if n_rows == 1 {
                out.copy_from_slice(mine);
            } else {
                transpose_rows(mine, n_rows, out);
            }
        }
        drop(job);
        *self.spare = match lock(&s.job).take() {
            Some(Task::Product(j)) => Some(j.progress),
            _ => None,
        };
    }

    /// The progress record of product `epoch`, reusing the last one's allocation when no
    /// helper still holds it (always, once helpers have caught up).
    fn next_progress(&mut self, epoch: usize, n_out: usize) -> Arc<Progress> {
        let n_threads = self.shared.helper_out.len() + 1;
        let home = n_out.div_ceil(n_threads).div_ceil(ROWS_PER_TASK) * ROWS_PER_TASK;
        let bounds = |i: usize| pack((i * home).min(n_out), ((i + 1) * home).min(n_out));
        if let Some(p) = self.spare.as_mut().and_then(Arc::get_mut) {
            if p.homes.len() == n_threads {
                p.epoch = epoch;
                for (i, h) in p.homes.iter_mut().enumerate() {
                    *h.0.get_mut() = bounds(i);
                }
                *p.rows_done.get_mut() = 0;
                if let Some(p) = self.spare.take() {
                    return p;
                }
            }
        }
        Arc::new(Progress {
            epoch,
            homes: (0..n_threads).map(|i| Home(AtomicU64::new(bounds(i)))).collect(),
            rows_done: AtomicUsize::new(0),
        })
    }

    /// The progress record of attention `epoch`, reusing the last one's allocation as
    /// [`Team::next_progress`] does.
    fn next_attn_progress(&mut self, epoch: usize, n_items: usize) -> Arc<AttnProgress> {
        if let Some(p) = self.attn_spare.as_mut().and_then(Arc::get_mut) {
            (p.epoch, p.n_items) = (epoch, n_items);
            (*p.next.get_mut(), *p.done.get_mut()) = (0, 0);
            if let Some(p) = self.attn_spare.take() {
                return p;
            }
        }
        Arc::new(AttnProgress { epoch, n_items, next: AtomicUsize::new(0), done: AtomicUsize::new(0) })
    }
}

#[cfg(test)]
mod tests {
    use gguf::GgmlType;

    use super::*;
    use crate::matmul::matmul;
    use crate::quant::synthetic::{random_blocks_varied, xorshift_bytes as bytes};

    #[test]
    fn grouped_products_equal_separate_products_bit_for_bit() {
        // Goal: `matmuls` gives every matrix exactly the rayon product's bits, whether the group
        // runs as one product (same activation format) or falls back to one by one, and its
        // rows crossing matrix edges land in the right outputs; method: groups of 1–4 matrices
        // with ragged row counts (Q4_0 and IQ4_NL share Q8_0 activations, Q4_1 does not),
        // 1–3 threads, 1–3 activation rows.
        use GgmlType::*;
        let n_in = 64;
        let groups: [&[(GgmlType, usize)]; 4] = [
            &[(Q4_0, 37), (IQ4_NL, 8), (Q8_0, 21)],
            &[(IQ4_NL, 5), (Q4_0, 64)],
            &[(Q4_0, 9), (Q4_1, 18), (Q8_0, 3)],
            &[(Q8_0, 16), (Q8_0, 7), (Q4_0, 30), (IQ4_NL, 17)],
        ];
        let mut bufs = TeamBuffers::default();
        for (g, group) in groups.into_iter().enumerate() {
            let datas: Vec<Vec<u8>> = group
                .iter()
                .enumerate()
                .map(|(i, &(ty, n))| random_blocks_varied(ty, n_in * n, 31 * g as u64 + i as u64))
                .collect();
            let ws: Vec<QMatrix> =
                group.iter().zip(&datas).map(|(&(ty, n), d)| QMatrix::new("w", ty, n_in, n, d).unwrap()).collect();
            for n_rows in 1..=3 {
                for n_threads in 1..=3 {
                    let x: Vec<f32> =
                        bytes(n_rows * n_in, 5 + g as u64).iter().map(|&b| (b as f32 - 128.0) / 23.0).collect();
                    let want: Vec<Vec<f32>> = ws
                        .iter()
                        .map(|w| {
                            let mut out = vec![0.0; n_rows * w.n_out];
                            matmul(w, &x, &mut out, &mut QuantizedActs::default(), &mut Vec::new());
                            out
                        })
                        .collect();
                    let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n_rows * w.n_out]).collect();
                    with_team(n_threads, &mut bufs, |team| {
                        let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
                        team.matmuls(&ws, &x, &mut outs);
                    });
                    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
                        let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "group {g} matrix {i}: {n_rows} rows, {n_threads} threads");
                    }
                }
            }
        }
    }

    #[test]
    fn team_matmul_equals_pool_matmul_bit_for_bit() {
        // Goal: the team's product is the rayon matmul's, bit for bit, for any team size and
        // batch; method: Q8_0 and Q4_1 matrices with ragged row counts, 1–4 threads, 1–5 rows.
        for (ty, n_out) in [(GgmlType::Q8_0, 100), (GgmlType::Q4_1, 37), (GgmlType::Q4_1, 3)] {
            let n_in = 64;
            let mut data = bytes(ty.row_bytes(n_in as u64).unwrap() as usize * n_out, 3);
            // Small finite f16 scales at the start of every block.
            for blk in data.chunks_exact_mut(ty.type_size()) {
                blk[1] &= 0x3b;
                if ty == GgmlType::Q4_1 {
                    blk[3] &= 0x3b;
                }
            }
            let w = QMatrix::new("w", ty, n_in, n_out, &data).unwrap();
            for n_rows in 1..=5 {
                // One set of buffers for every team, as a session keeps them between steps.
                let mut bufs = TeamBuffers::default();
                for (i, n_threads) in [1, 2, 3, 4, 2, 2, 3].into_iter().enumerate() {
                    // Different activations for every team, so stale results cannot pass.
                    let x: Vec<f32> =
                        bytes(n_rows * n_in, 9 + i as u64).iter().map(|&b| (b as f32 - 128.0) / 17.0).collect();
                    let mut want = vec![0.0; n_rows * n_out];
                    matmul(&w, &x, &mut want, &mut QuantizedActs::default(), &mut Vec::new());
                    let mut got = vec![0.0; n_rows * n_out];
                    // Between other products on the same team: no product may see another's
                    // state (a 1-row product of a small matrix runs before and after).
                    let mut small = vec![0.0; n_out.min(8)];
                    let w_small =
                        QMatrix::new("s", ty, n_in, small.len(), &data[..w.row_bytes() * small.len()]).unwrap();
                    with_team(n_threads, &mut bufs, |team| {
                        team.matmul(&w_small, &x[..n_in], &mut small);
                        team.matmul(&w, &x, &mut got);
                        team.matmul(&w_small, &x[..n_in], &mut small);
                        team.matmul(&w, &x, &mut got);
                    });
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{ty} n_out {n_out}, {n_rows} rows, {n_threads} threads (team {i})");
                }
            }
        }
    }

    #[test]
    fn results_left_by_an_earlier_team_are_ignored() {
        // Goal: a session's buffers outlive its teams, and epochs restart with each team, so a
        // helper's output from an earlier team must never be taken for a current product;
        // method: buffers pre-filled with garbage results tagged with every early epoch.
        let ty = GgmlType::Q8_0;
        let (n_in, n_out) = (64, 40);
        let mut data = bytes(ty.row_bytes(n_in as u64).unwrap() as usize * n_out, 5);
        data.chunks_exact_mut(ty.type_size()).for_each(|b| b[1] &= 0x3b);
        let w = QMatrix::new("w", ty, n_in, n_out, &data).unwrap();
        let x: Vec<f32> = bytes(n_in, 6).iter().map(|&b| (b as f32 - 128.0) / 17.0).collect();
        let mut want = vec![0.0; n_out];
        matmul(&w, &x, &mut want, &mut QuantizedActs::default(), &mut Vec::new());
        for stale_epoch in 1..4 {
            let mut bufs = TeamBuffers::default();
            bufs.helper_out.push(Mutex::new(HelperOut {
                epoch: stale_epoch,
                chunks: vec![(0, n_out)],
                values: vec![f32::NAN; n_out],
            }));
            let mut got = vec![0.0; n_out];
            with_team(2, &mut bufs, |team| {
                for _ in 0..3 {
                    team.matmul(&w, &x, &mut got);
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "epoch {stale_epoch}");
                }
            });
        }
    }

    #[test]
    fn owner_and_thieves_claim_every_row_once() {
        // Goal: front claims (16 rows) and back claims (half of what is left) partition a home
        // exactly, on the 16-row grid; method: every interleaving pattern of 8 claims, repeated.
        for (start, end) in [(0, 1), (0, 16), (32, 200), (48, 49), (0, 577)] {
            for pattern in 0u32..256 {
                let home = AtomicU64::new(pack(start, end));
                let mut got = Vec::new();
                for i in 0.. {
                    let from_front = pattern >> (i % 8) & 1 == 1;
                    match claim(&home, from_front) {
                        Some((r0, n)) => {
                            assert!(n > 0 && (r0 % ROWS_PER_TASK == 0 || r0 == start), "{r0} {n}");
                            got.push((r0, n));
                        }
                        None => break,
                    }
                }
                got.sort();
                let mut at = start;
                for (r0, n) in got {
                    assert_eq!(r0, at, "home {start}..{end}, pattern {pattern:b}");
                    at += n;
                }
                assert_eq!(at, end, "home {start}..{end}, pattern {pattern:b}");
            }
        }
    }
}

#[cfg(test)]
mod attention_tests {
    use gguf::GgmlType;

    use super::*;
    use crate::matmul::matmul;
    use crate::quant::synthetic::random_blocks_varied;

    #[test]
    fn team_attention_equals_one_thread_bit_for_bit() {
        // Goal: attention shared out on a team gives every (row, head) item the bits of one
        // thread, and a product between two attentions of the same team (helpers switching task
        // kinds) disturbs neither; method: a long prefill run (tiled kernel) and three decode
        // rows of other sequences, layers 0 and 1 of two, 1–3 threads, buffers kept across teams.
        let hp = ops::fixtures::hparams(4, 2, 16);
        let nq = hp.n_embd_q();
        let (kvs, mut rnd) = ops::fixtures::random_caches(&hp, 4, 512, 0x2545_F491_4F6C_DD1D);
        let mut positions: Vec<usize> = (30..100).collect();
        let mut slots = vec![2; positions.len()];
        positions.extend([400, 17, 250]);
        slots.extend([0, 3, 1]);
        let q: Vec<f32> = (0..positions.len() * nq).map(|_| rnd()).collect();
        let attn = |li: usize| Attn { hp: &hp, kvs: &kvs, slots: Some(&slots), li, q: &q, positions: &positions };
        assert!(attn(0).work() >= TEAM_ATTENTION_MIN_WORK);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let want: Vec<Vec<u32>> = (0..2)
            .map(|li| {
                let mut out = vec![0.0; q.len()];
                ops::attention_batch(attn(li), &mut out, &mut AttnScratch::default());
                bits(&out)
            })
            .collect();
        assert_ne!(want[0], want[1], "the two layers must differ for the test to see a wrong one");
        let w_data = random_blocks_varied(GgmlType::Q4_0, 64 * 40, 9);
        let w = QMatrix::new("w", GgmlType::Q4_0, 64, 40, &w_data).unwrap();
        let x: Vec<f32> = (0..3 * 64).map(|_| rnd()).collect();
        let mut want_p = vec![0.0; 3 * 40];
        matmul(&w, &x, &mut want_p, &mut QuantizedActs::default(), &mut Vec::new());
        let mut bufs = TeamBuffers::default();
        let mut scratch = AttnScratch::default();
        for n_threads in [1, 2, 3, 2] {
            with_team(n_threads, &mut bufs, |team| {
                for li in [0, 1, 0] {
                    let mut out = vec![f32::NAN; q.len()];
                    team.attention(attn(li), &mut out, &mut scratch);
                    assert_eq!(bits(&out), want[li], "layer {li}, {n_threads} threads");
                    let mut got_p = vec![f32::NAN; 3 * 40];
                    team.matmul(&w, &x, &mut got_p);
                    assert_eq!(bits(&got_p), bits(&want_p), "product after attention, {n_threads} threads");
                }
                // Decode rows alone: few items, the hand-off still taken.
                let tail = positions.len() - 3;
                let mut out = vec![f32::NAN; 3 * nq];
                let a = attn(1);
                let decode =
                    Attn { slots: Some(&slots[tail..]), q: &q[tail * nq..], positions: &positions[tail..], ..a };
                team.attention(decode, &mut out, &mut scratch);
                assert_eq!(bits(&out), want[1][tail * nq..], "decode rows, {n_threads} threads");
            });
        }
    }
}
