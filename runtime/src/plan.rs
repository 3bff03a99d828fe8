//! Cutting the layer sequence into windows round the ring (prima.cpp's piped ring).
//!
//! Device m holds `w[m]` consecutive layers per cycle; one token's forward pass goes round the
//! ring `k = ceil(L / Σw)` times. When `L` is not a multiple of `Σw` the last cycle stops where
//! the layers run out. A device whose window is 0 holds no layer and is left out of the ring;
//! the head (rank 0) always stays in it, because it embeds tokens and computes the output.

use std::ops::Range;

use crate::error::{Error, Result};

/// The layers of every rank and the ring order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub n_layer: usize,
    /// Layers per cycle, indexed by rank.
    pub window: Vec<usize>,
    /// Number of times a token goes round the ring.
    pub cycles: usize,
    /// Ranks in ring order: the head first, then every rank with layers, ascending.
    pub ring: Vec<u32>,
    /// Layer ranges held by each rank, in the order they run (indexed by rank).
    pub layers: Vec<Vec<Range<usize>>>,
}

/// What one node needs from the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub rank: u32,
    pub windows: Vec<Range<usize>>,
    /// Ring neighbours (the node itself when it is alone in the ring).
    pub prev: u32,
    pub next: u32,
}

impl Plan {
    /// A plan from explicit windows (one entry per rank).
    pub fn from_windows(n_layer: usize, window: &[usize]) -> Result<Plan> {
        if n_layer == 0 {
            return Err(Error::Plan("the model has no layers".into()));
        }
        if window.is_empty() {
            return Err(Error::Plan("no devices".into()));
        }
        let sum: usize = window.iter().sum();
        if sum == 0 {
            return Err(Error::Plan("every layer window is 0".into()));
        }
        if sum > n_layer {
            return Err(Error::Plan(format!(
                "the layer windows {window:?} sum to {sum}, more than the model's {n_layer} layers"
            )));
        }
        let cycles = n_layer.div_ceil(sum);
        let mut layers = vec![Vec::new(); window.len()];
        let mut next = 0;
        'outer: for _ in 0..cycles {
            for (m, &w) in window.iter().enumerate() {
                if next == n_layer {
                    break 'outer;
                }
                if w > 0 {
                    let end = (next + w).min(n_layer);
                    layers[m].push(next..end);
                    next = end;
                }
            }
        }
        let ring = (0..window.len()).filter(|&m| m == 0 || !layers[m].is_empty()).map(|m| m as u32).collect();
        Ok(Plan { n_layer, window: window.to_vec(), cycles, ring, layers })
    }

    /// Without explicit windows: the layers split as evenly as possible over `world` devices
    /// in one cycle (the scheduler replaces this with a cost-model plan).
    pub fn even(n_layer: usize, world: usize) -> Result<Plan> {
        if world == 0 {
            return Err(Error::Plan("no devices".into()));
        }
        let world = world.min(n_layer.max(1));
        let base = n_layer / world;
        let extra = n_layer % world;
        let w: Vec<usize> = (0..world).map(|m| base + usize::from(m < extra)).collect();
        Plan::from_windows(n_layer, &w)
    }

    /// The part of the plan for `rank`, or `None` when the rank is not in the ring.
    pub fn node(&self, rank: u32) -> Option<NodePlan> {
        let pos = self.ring.iter().position(|&r| r == rank)?;
        let n = self.ring.len();
        Some(NodePlan {
            rank,
            windows: self.layers[rank as usize].clone(),
            prev: self.ring[(pos + n - 1) % n],
            next: self.ring[(pos + 1) % n],
        })
    }

    /// `8,8,8,6`-style text.
    pub fn windows_text(&self) -> String {
        self.window.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Parses `-lw "8,8,8,6"`.
pub fn parse_windows(s: &str) -> std::result::Result<Vec<usize>, String> {
    s.split(',').map(|p| p.trim().parse::<usize>().map_err(|_| format!("bad layer window {p:?} in {s:?}"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_windows_cover_the_layers_in_ring_order() {
        let p = Plan::from_windows(30, &[8, 8, 8, 6]).unwrap();
        assert_eq!(p.cycles, 1);
        assert_eq!(p.layers, vec![vec![0..8], vec![8..16], vec![16..24], vec![24..30]]);
        assert_eq!(p.ring, vec![0, 1, 2, 3]);
        let n = p.node(3).unwrap();
        assert_eq!((n.prev, n.next), (2, 0));
    }

    #[test]
    fn small_windows_repeat_for_several_cycles_and_stop_at_the_last_layer() {
        let p = Plan::from_windows(30, &[4, 3, 5]).unwrap();
        assert_eq!(p.cycles, 3);
        assert_eq!(p.layers[0], vec![0..4, 12..16, 24..28]);
        assert_eq!(p.layers[1], vec![4..7, 16..19, 28..30]);
        assert_eq!(p.layers[2], vec![7..12, 19..24]);
        let mut all: Vec<usize> = p.layers.iter().flatten().flat_map(|r| r.clone()).collect();
        all.sort();
        assert_eq!(all, (0..30).collect::<Vec<_>>());
    }

    #[test]
    fn zero_windows_leave_the_ring_except_the_head() {
        let p = Plan::from_windows(30, &[0, 10, 0, 5]).unwrap();
        assert_eq!(p.ring, vec![0, 1, 3]);
        assert!(p.node(2).is_none());
        assert_eq!(p.node(0).unwrap().windows, vec![]);
        assert_eq!(p.layers[1], vec![0..10, 15..25]);
        let lone = Plan::from_windows(30, &[30, 0]).unwrap();
        let h = lone.node(0).unwrap();
        assert_eq!((h.prev, h.next, lone.ring.len()), (0, 0, 1));
    }

    #[test]
    fn bad_windows_are_refused() {
        assert!(Plan::from_windows(30, &[20, 20]).is_err());
        assert!(Plan::from_windows(30, &[0, 0]).is_err());
        assert!(Plan::from_windows(0, &[1]).is_err());
        assert!(parse_windows("8,x").is_err());
        assert_eq!(parse_windows("8, 8,6").unwrap(), vec![8, 8, 6]);
    }

    #[test]
    fn even_split() {
        let p = Plan::even(30, 4).unwrap();
        assert_eq!(p.window, vec![8, 8, 7, 7]);
        assert_eq!(Plan::even(2, 4).unwrap().window, vec![1, 1]);
    }
}
