//! From desired ApplicationDeployments to running workloads: document model,
//! placement into partitions, artifact loading, the reconcile loop and its status.

pub mod artifact;
pub mod eligibility;
pub mod local;
pub mod model;
pub mod oci;
pub mod placement;
mod reconciler;
mod settings;
pub mod status;
pub mod store;

pub use reconciler::{DesiredDeployment, Reconciler, Reconfiguration, Refusal, INSTALL_PATIENCE};
pub use settings::{
    validate_registries, ArtifactsSettings, Registries, RegistryProtocol, RegistrySettings,
};
pub use status::{DeploymentState, StatusBoard};
