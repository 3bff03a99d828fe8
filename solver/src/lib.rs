//! Device profiles (what the layer scheduler needs to know about a device, measured on the
//! device itself with the project's own kernels) and prima.cpp's token-latency model. The
//! integer program over it (good_lp + HiGHS) and device selection come next (issue 5);
//! `docs/scheduler-notes.md` summarises the paper's model and algorithm.

pub mod cost;
pub mod profile;

pub use profile::{DeviceProfile, ProfileOptions};
