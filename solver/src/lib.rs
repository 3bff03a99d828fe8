//! Device profiles: what the layer scheduler needs to know about a device, measured on the
//! device itself with the project's own kernels. (The cost model and the integer program come
//! next; see issue 5.)

pub mod profile;

pub use profile::{DeviceProfile, ProfileOptions};
