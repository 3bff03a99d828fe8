//! The layer scheduler and what it needs: device profiles (measured on the device itself with
//! the project's own kernels), prima.cpp's token-latency model, and Halda, the integer program
//! (good_lp + HiGHS) with device selection that picks each device's layer window.
//! `docs/scheduler-notes.md` summarises the paper's model and algorithm.

pub mod cost;
pub mod halda;
pub mod inputs;
pub mod profile;

pub use cost::{DeviceCost, ModelCost, Os, Terms};
pub use halda::{schedule, Options, Schedule, ScheduleError};
pub use inputs::{Participation, Shape};
pub use profile::{DeviceProfile, ProfileOptions};
