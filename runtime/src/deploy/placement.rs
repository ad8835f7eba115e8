//! Which partition a deployment runs in, from its `metadata.deviceId` (Margo gateway
//! rules): `DEVICE/PARTITION` is directed, `DEVICE/*` (or no device id, or the bare
//! device in local mode) lets the host choose by capacity.

use crate::sandbox::Partition;
use crate::types::PartitionId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Margo's reserved gateway error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// `101`: the deployment names a child device this gateway does not have.
    #[error("metadata.deviceId {device_id:?} names partition {partition:?}, which this device does not have (partitions: {known})")]
    UnknownChild {
        device_id: String,
        partition: String,
        known: String,
    },
    /// `103`: autonomous placement found no partition with room.
    #[error(
        "no partition can take this deployment: it needs {needs} and the partitions have {have}"
    )]
    NoFit { needs: String, have: String },
    #[error(
        "metadata.deviceId {device_id:?} targets another device; this device is {this_device:?}"
    )]
    OtherDevice {
        device_id: String,
        this_device: String,
    },
    /// The deployment's `deviceConstraints` rule the target out.
    #[error("target {target} is not eligible: {reason}")]
    Ineligible { target: String, reason: String },
}

impl PlacementError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownChild { .. } => "101",
            Self::NoFit { .. } => "103",
            Self::OtherDevice { .. } => "101",
            Self::Ineligible { .. } => "wasmgate.ineligible",
        }
    }
}

/// What a deployment needs from a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Requirement {
    /// Memory the deployment's instances may use together at most (sum of component
    /// limits); committed against the partition when placed autonomously.
    pub memory: u64,
    /// Margo `capacityRequirements.cpu.cores`, if given.
    pub cores: Option<f64>,
}

/// Chooses the partition for a deployment. `committed` is the memory already promised
/// to deployments in each partition (by partition id).
pub fn place(
    device_id: Option<&str>,
    this_device: &str,
    partitions: &[Arc<Partition>],
    requirement: Requirement,
    committed: &BTreeMap<PartitionId, u64>,
    eligible: &dyn Fn(&Partition) -> Result<(), String>,
) -> Result<Arc<Partition>, PlacementError> {
    place_keeping(
        None,
        device_id,
        this_device,
        partitions,
        requirement,
        committed,
        eligible,
    )
}

/// [`place`] for a deployment that runs in partition `current` now (an update, or
/// placing again after the partitions changed): when the host chooses, it keeps
/// `current` as long as it is eligible and has room, since a deployment's key-value
/// data and files belong to its partition and do not move with it.
pub fn place_keeping(
    current: Option<&PartitionId>,
    device_id: Option<&str>,
    this_device: &str,
    partitions: &[Arc<Partition>],
    requirement: Requirement,
    committed: &BTreeMap<PartitionId, u64>,
    eligible: &dyn Fn(&Partition) -> Result<(), String>,
) -> Result<Arc<Partition>, PlacementError> {
    let target = device_id.unwrap_or(this_device);
    let rest = if target == this_device {
        None
    } else if let Some(rest) = target
        .strip_prefix(this_device)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(rest)
    } else {
        return Err(PlacementError::OtherDevice {
            device_id: target.to_owned(),
            this_device: this_device.to_owned(),
        });
    };
    match rest {
        None | Some("*") => {
            let candidates: Vec<Arc<Partition>> = partitions
                .iter()
                .filter(|p| eligible(p).is_ok())
                .cloned()
                .collect();
            if candidates.is_empty() && !partitions.is_empty() {
                let reasons: Vec<String> = partitions
                    .iter()
                    .filter_map(|p| eligible(p).err().map(|r| format!("{}: {r}", p.id)))
                    .collect();
                return Err(PlacementError::NoFit {
                    needs: "a partition its deviceConstraints accept".into(),
                    have: reasons.join("; "),
                });
            }
            autonomous(&candidates, requirement, committed, current)
        }
        Some(child) => {
            let partition = partitions
                .iter()
                .find(|p| p.id == child)
                .cloned()
                .ok_or_else(|| PlacementError::UnknownChild {
                    device_id: target.to_owned(),
                    partition: child.to_owned(),
                    known: partitions
                        .iter()
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            eligible(&partition).map_err(|reason| PlacementError::Ineligible {
                target: partition.device_id.to_string(),
                reason,
            })?;
            Ok(partition)
        }
    }
}

fn autonomous(
    partitions: &[Arc<Partition>],
    requirement: Requirement,
    committed: &BTreeMap<PartitionId, u64>,
    current: Option<&PartitionId>,
) -> Result<Arc<Partition>, PlacementError> {
    let free = |p: &Partition| {
        p.config
            .memory
            .0
            .saturating_sub(committed.get(&p.id).copied().unwrap_or(0))
    };
    let fits = |p: &&Arc<Partition>| {
        free(p) >= requirement.memory && requirement.cores.is_none_or(|c| p.config.cpu >= c)
    };
    if let Some(kept) = partitions
        .iter()
        .filter(fits)
        .find(|p| Some(&p.id) == current)
    {
        return Ok(kept.clone());
    }
    partitions
        .iter()
        .filter(fits)
        .max_by_key(|p| free(p))
        .cloned()
        .ok_or_else(|| PlacementError::NoFit {
            needs: format!(
                "{} of memory{}",
                crate::units::ByteSize(requirement.memory),
                requirement
                    .cores
                    .map(|c| format!(" and {c} cores"))
                    .unwrap_or_default()
            ),
            have: partitions
                .iter()
                .map(|p| {
                    format!(
                        "{}: {} free, {} cores",
                        p.id,
                        crate::units::ByteSize(free(p)),
                        p.config.cpu
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::PartitionSettings;

    fn partitions(dir: &std::path::Path) -> Vec<Arc<Partition>> {
        [("a", 1.0, 256u64 << 20), ("b", 0.5, 128 << 20)]
            .into_iter()
            .map(|(id, cpu, memory)| {
                let id = crate::types::PartitionId::parse(id).unwrap();
                let config = PartitionSettings::new(id, cpu, memory, 1 << 20);
                Partition::open(
                    &crate::types::DeviceId::parse("edge").unwrap(),
                    &config,
                    dir,
                )
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn directed_autonomous_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ps = partitions(dir.path());
        let none = BTreeMap::new();
        let any = |_: &Partition| Ok(());
        let req = Requirement {
            memory: 64 << 20,
            cores: None,
        };
        assert_eq!(
            place(Some("edge/b"), "edge", &ps, req, &none, &any)
                .unwrap()
                .id,
            "b"
        );
        assert_eq!(
            place(Some("edge/*"), "edge", &ps, req, &none, &any)
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(place(None, "edge", &ps, req, &none, &any).unwrap().id, "a");
        let mut committed = BTreeMap::new();
        committed.insert(PartitionId::parse("a").unwrap(), 200u64 << 20);
        assert_eq!(
            place(Some("edge/*"), "edge", &ps, req, &committed, &any)
                .unwrap()
                .id,
            "b"
        );
        let err = place(Some("edge/zzz"), "edge", &ps, req, &none, &any).unwrap_err();
        assert_eq!(err.code(), "101");
        assert!(err.to_string().contains("a, b"));
        let huge = Requirement {
            memory: 1 << 30,
            cores: None,
        };
        assert_eq!(
            place(Some("edge/*"), "edge", &ps, huge, &none, &any)
                .unwrap_err()
                .code(),
            "103"
        );
        let cores = Requirement {
            memory: 0,
            cores: Some(2.0),
        };
        assert_eq!(
            place(None, "edge", &ps, cores, &none, &any)
                .unwrap_err()
                .code(),
            "103"
        );
        assert!(matches!(
            place(Some("other/a"), "edge", &ps, req, &none, &any),
            Err(PlacementError::OtherDevice { .. })
        ));
    }

    #[test]
    fn the_host_keeps_a_deployment_where_it_runs_while_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let ps = partitions(dir.path());
        let req = Requirement {
            memory: 1 << 20,
            cores: None,
        };
        let none = BTreeMap::new();
        let any = |_: &Partition| Ok(());
        let fresh = place(Some("edge/*"), "edge", &ps, req, &none, &any).unwrap();
        let other = ps.iter().find(|p| p.id != fresh.id).unwrap();
        let kept = place_keeping(
            Some(&other.id),
            Some("edge/*"),
            "edge",
            &ps,
            req,
            &none,
            &any,
        );
        assert_eq!(kept.unwrap().id, other.id);
        // Full: it goes where there is room.
        let full: BTreeMap<PartitionId, u64> = [(other.id.clone(), u64::MAX / 2)].into();
        let moved = place_keeping(
            Some(&other.id),
            Some("edge/*"),
            "edge",
            &ps,
            req,
            &full,
            &any,
        );
        assert_eq!(moved.unwrap().id, fresh.id);
        // A directed deployment goes where it is directed.
        let directed = place_keeping(
            Some(&other.id),
            Some(&format!("edge/{}", fresh.id)),
            "edge",
            &ps,
            req,
            &none,
            &any,
        );
        assert_eq!(directed.unwrap().id, fresh.id);
    }

    #[test]
    fn eligibility_filters_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let ps = partitions(dir.path());
        let none = BTreeMap::new();
        let req = Requirement::default();
        let only_b = |p: &Partition| {
            if p.id == "b" {
                Ok(())
            } else {
                Err("tier label does not match".to_string())
            }
        };
        assert_eq!(
            place(Some("edge/*"), "edge", &ps, req, &none, &only_b)
                .unwrap()
                .id,
            "b"
        );
        let err = place(Some("edge/a"), "edge", &ps, req, &none, &only_b).unwrap_err();
        assert_eq!(err.code(), "wasmgate.ineligible");
        assert!(err.to_string().contains("tier label"), "{err}");
        let nothing = |_: &Partition| Err("no".to_string());
        assert_eq!(
            place(None, "edge", &ps, req, &none, &nothing)
                .unwrap_err()
                .code(),
            "103"
        );
    }
}
