//! Automatic planning at start-up: the head profiles itself, times each node's link and asks
//! for its profile, then solves the layer windows with the scheduler (`solver::schedule`) and
//! logs the plan with its predicted latency per term.

use std::collections::BTreeMap;
use std::time::Duration;

use gguf::GgufFile;
use runtime::wire::{decode, encode};
use runtime::{Control, Link, NodeConfig, Plan};
use solver::{DeviceCost, DeviceProfile, ModelCost, Participation, Schedule};

use crate::error::{NodeError, Result};

/// Round trips timed per link (the median counts).
const ECHOES: usize = 7;

/// This device's profile (cached per model and thread count), with the available RAM capped
/// by the node's memory budget: what the node offers the ring.
pub async fn local_profile(cfg: &NodeConfig, threads: usize) -> std::result::Result<DeviceProfile, String> {
    let model = cfg.model.clone();
    let budget = cfg.memory_budget_mb;
    let opts = solver::ProfileOptions { threads, ..Default::default() };
    let measured = tokio::task::spawn_blocking(move || solver::profile::load_or_measure(&model, &opts, false))
        .await
        .map_err(|e| format!("the profiler stopped: {e}"))??;
    let (mut p, cached) = measured;
    tracing::info!(
        "profile ({}): {} threads, {:.0} GB/s memory, disk {:.2} GB/s, {:.1} GiB available{}",
        if cached { "cached" } else { "measured" },
        p.threads,
        p.mem_bandwidth_gbs,
        p.disk_seq_gbs,
        p.ram_available_bytes as f64 / (1u64 << 30) as f64,
        budget.map(|b| format!(", budget {b} MiB")).unwrap_or_default()
    );
    if let Some(mb) = budget {
        p.ram_available_bytes = p.ram_available_bytes.min(mb << 20);
    }
    Ok(p)
}

/// Bytes of the echo that measures a link's bandwidth (a prefill chunk's hidden states are of
/// this order).
const BANDWIDTH_PROBE: usize = 1 << 20;

/// Seconds to send `bytes` one way over `link`: half the median round trip of `times` echoes.
async fn time_link(link: &mut Link, bytes: usize, times: usize, within: Duration) -> Result<f64> {
    let payload = vec![0x5a; bytes];
    let mut rtts = Vec::with_capacity(times);
    for _ in 0..times {
        let t = std::time::Instant::now();
        link.send(&encode(&Control::Echo { payload: payload.clone() })).await?;
        let reply = tokio::time::timeout(within, link.recv())
            .await
            .map_err(|_| NodeError::Join("no echo from the node".into()))??;
        match decode::<Control>(reply) {
            Ok(Control::Echo { payload: p }) if p.len() == bytes => {}
            other => return Err(NodeError::Protocol(format!("expected an echo, got {other:?}"))),
        }
        rtts.push(t.elapsed().as_secs_f64());
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts[rtts.len() / 2] / 2.0)
}

/// What the head learned about one member.
pub struct Member {
    pub profile: DeviceProfile,
    /// Seconds to send one hidden state (latency).
    pub t_comm: f64,
    /// Bytes per second for a large frame (bandwidth).
    pub bandwidth: f64,
}

/// Times the link to a member and fetches its profile.
pub async fn survey(link: &mut Link, hidden_bytes: usize, within: Duration) -> Result<Member> {
    let t_comm = time_link(link, hidden_bytes, ECHOES, Duration::from_secs(10)).await?;
    let big = time_link(link, BANDWIDTH_PROBE, 3, Duration::from_secs(30)).await?;
    let bandwidth = BANDWIDTH_PROBE as f64 / (big - t_comm).max(1e-9);
    link.send(&encode(&Control::ProfileRequest)).await?;
    let reply = tokio::time::timeout(within, link.recv())
        .await
        .map_err(|_| NodeError::Join(format!("no profile within {} s", within.as_secs())))??;
    match decode::<Control>(reply) {
        Ok(Control::Profile { error: Some(e), .. }) => Err(NodeError::Join(format!("could not profile itself: {e}"))),
        Ok(Control::Profile { json, .. }) => {
            let profile = serde_json::from_str(&json).map_err(|e| NodeError::Protocol(format!("bad profile: {e}")))?;
            Ok(Member { profile, t_comm, bandwidth })
        }
        other => Err(NodeError::Protocol(format!("expected a profile, got {other:?}"))),
    }
}

/// A member answers the head's planning messages (`ProfileRequest`, `Echo`); `false` for any
/// other message, which the caller handles.
pub async fn answer(link: &mut Link, msg: &Control, cfg: &NodeConfig, threads: usize) -> Result<bool> {
    let reply = match msg {
        Control::Echo { payload } => Control::Echo { payload: payload.clone() },
        Control::ProfileRequest => match local_profile(cfg, threads).await {
            Ok(p) => match serde_json::to_string(&p) {
                Ok(json) => Control::Profile { json, error: None },
                Err(e) => Control::Profile { json: String::new(), error: Some(e.to_string()) },
            },
            Err(e) => Control::Profile { json: String::new(), error: Some(e) },
        },
        _ => return Ok(false),
    };
    link.send(&encode(&reply)).await?;
    Ok(true)
}

/// The solved plan and what the cost model predicts for it.
pub struct AutoPlan {
    pub plan: Plan,
    pub schedule: Schedule,
}

/// Solves the windows for the devices of `profiles` (rank → profile, link time); the head is
/// rank 0. Ranks absent from `profiles` get no layers.
pub fn solve(file: &GgufFile, cfg: &NodeConfig, profiles: &BTreeMap<u32, (DeviceProfile, f64)>) -> Result<AutoPlan> {
    let model = ModelCost::from_gguf(file, cfg.n_ctx, solver::inputs::DEFAULT_N_KV.min(cfg.n_ctx))
        .map_err(|e| NodeError::Join(format!("cannot size the model for the scheduler: {e}")))?;
    let ranks: Vec<u32> = profiles.keys().copied().collect();
    if ranks.first() != Some(&0) {
        return Err(NodeError::Join("the head has no profile".into()));
    }
    let devices: Vec<DeviceCost> = ranks
        .iter()
        .map(|r| {
            let (p, t_comm) = &profiles[r];
            let part = Participation { t_comm: *t_comm, head: *r == 0 };
            let (d, missing) = DeviceCost::from_profile(p, &model, &part);
            if !missing.is_empty() {
                tracing::warn!("node {r}'s profile lacks {missing:?}; its slowest measured rate stands in");
            }
            d
        })
        .collect();
    let t0 = std::time::Instant::now();
    let schedule = solver::schedule(&model, &devices, &solver::Options::default())
        .map_err(|e| NodeError::Join(format!("the scheduler found no plan: {e}")))?;
    let mut window = vec![0; cfg.world as usize];
    for (p, r) in ranks.iter().enumerate() {
        window[*r as usize] = schedule.w[p];
    }
    let plan = Plan::from_windows(model.n_layer, &window)?;
    tracing::info!(
        "scheduler: predicted {:.2} ms/token with windows {} ({} cycle{}), {} ILPs in {:.0} ms",
        schedule.latency * 1e3,
        plan.windows_text(),
        schedule.cycles,
        if schedule.cycles == 1 { "" } else { "s" },
        schedule.ilp_solves,
        t0.elapsed().as_secs_f64() * 1e3
    );
    for (p, r) in ranks.iter().enumerate() {
        let t = &schedule.terms[p];
        if schedule.w[p] == 0 {
            tracing::info!("  node {r}: no layers (it would not lower the predicted latency)");
        } else {
            tracing::info!(
                "  node {r}: window {:>3}  compute {:.2} ms  memory {:.2} ms  disk {:.2} ms  link {:.2} ms",
                schedule.w[p],
                t.compute * 1e3,
                t.memory * 1e3,
                t.disk * 1e3,
                t.comm * 1e3
            );
        }
    }
    Ok(AutoPlan { plan, schedule })
}
