//! The Margo WFM client: transport profiles (rc.3 mTLS, rc.2 signed), capabilities of
//! the host and its partitions, desired-state sync with digest verification, and a
//! durable status outbox. It feeds the same reconciler as local mode and never touches
//! wasmtime.

pub mod bundle;
pub mod capabilities;
pub mod client;
pub mod device;
pub mod http;
pub mod outbox;
pub mod settings;
pub mod signing;
pub mod state;
pub mod tls;
pub mod transport;
pub mod types;

pub use client::{Reconfigured, WfmClient};
pub use device::{DeviceProfile, DeviceSettings, GatewayMode};
pub use settings::{Profile, WfmSettings};
