//! Planning, with no wasmtime and no I/O: which desired documents are wanted, which are
//! refused before anything is fetched, what leaves, which finished installs may commit
//! now without changing what the documented order decides, and when a failed pull is
//! tried again.

use super::report::Failure;
use super::DesiredDeployment;
use crate::deploy::model::{directed_target, Deployment, Outline};
use crate::deploy::placement::Requirement;
use crate::types::DeploymentId;
use crate::units::ByteSize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Valid deployments by the sha256 of their YAML, kept from one pass to the next so an
/// unchanged document is not parsed again (parsing was most of a pass over 1000
/// unchanged documents). Parsing reads only the bytes, so equal bytes parse equal.
#[derive(Debug, Default)]
pub struct Parsed(HashMap<[u8; 32], Deployment>);

impl Parsed {
    fn parse(
        &self,
        yaml: &[u8],
        next: &mut Self,
    ) -> Result<Deployment, crate::deploy::model::ModelError> {
        let key: [u8; 32] = Sha256::digest(yaml).into();
        let deployment = match self.0.get(&key) {
            Some(known) => known.clone(),
            None => Deployment::from_yaml(yaml)?,
        };
        next.0.insert(key, deployment.clone());
        Ok(deployment)
    }
}

/// A deployment that runs now, as planning sees it.
#[derive(Debug, Clone)]
pub struct Running {
    pub id: DeploymentId,
    pub source: String,
    pub outline: Outline,
    pub partition: String,
}

/// A document that failed before any install: reported as failed.
#[derive(Debug)]
pub struct Rejected {
    pub source: String,
    pub outline: Outline,
    /// The partition of the version that keeps serving, if one does.
    pub partition: Option<String>,
    pub failure: Failure,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// Valid documents, in source order (the documented commit order).
    pub wanted: Vec<(DesiredDeployment, Deployment)>,
    pub rejected: Vec<Rejected>,
    /// Running deployments whose document no longer parses: they keep serving.
    pub kept: BTreeSet<DeploymentId>,
    /// Every source of this pass, valid or not.
    pub sources: BTreeSet<String>,
}

impl Plan {
    /// Running deployments that leave: neither wanted nor kept.
    pub fn gone<'a>(
        &self,
        running: impl IntoIterator<Item = &'a DeploymentId>,
    ) -> Vec<DeploymentId> {
        let wanted: BTreeSet<&str> = self.wanted.iter().map(|(_, d)| d.id.as_str()).collect();
        running
            .into_iter()
            .filter(|id| !wanted.contains(id.as_str()) && !self.kept.contains(*id))
            .cloned()
            .collect()
    }
}

/// Parses and screens `desired` in source order: refused and invalid documents, ids
/// that differ from the listed one, and the later of two documents with the same id
/// fail here. `running` is what runs, for documents that break while they serve.
#[cfg(test)]
pub fn plan(desired: Vec<DesiredDeployment>, running: &[Running]) -> Plan {
    plan_with(desired, running, &mut Parsed::default())
}

/// [`plan`], taking valid documents from `parsed` and leaving there the ones of this
/// pass (only those: the table never outgrows the desired set).
pub fn plan_with(
    mut desired: Vec<DesiredDeployment>,
    running: &[Running],
    parsed: &mut Parsed,
) -> Plan {
    let mut next = Parsed::default();
    desired.sort_by(|a, b| a.source.cmp(&b.source));
    let mut plan = Plan::default();
    let mut ids: BTreeMap<DeploymentId, String> = BTreeMap::new();
    for item in desired {
        plan.sources.insert(item.source.clone());
        let parsed = match &item.refused {
            Some(refusal) => Err(Failure::new(refusal.code, refusal.message.clone())),
            None => parsed
                .parse(&item.yaml, &mut next)
                .map_err(|err| Failure::new(err.code(), err.to_string())),
        };
        let deployment = match parsed {
            Ok(deployment) => deployment,
            Err(mut failure) => {
                // A broken edit of a running deployment's file must not take it down.
                let rejected = match running.iter().find(|r| r.source == item.source) {
                    Some(r) => {
                        plan.kept.insert(r.id.clone());
                        failure
                            .message
                            .push_str(" (the previous version keeps serving)");
                        Rejected {
                            source: item.source,
                            outline: r.outline.clone(),
                            partition: Some(r.partition.clone()),
                            failure,
                        }
                    }
                    None => Rejected {
                        outline: Outline::of_yaml(&item.yaml),
                        source: item.source,
                        partition: None,
                        failure,
                    },
                };
                plan.rejected.push(rejected);
                continue;
            }
        };
        let refuse = |code, message| Rejected {
            source: item.source.clone(),
            outline: Outline::from(&deployment),
            partition: None,
            failure: Failure::new(code, message),
        };
        if let Some(expected) = item.expected_id.as_ref().filter(|e| **e != deployment.id) {
            let message = format!(
                "id: the document declares {}, but it is listed as deployment {expected}",
                deployment.id
            );
            plan.rejected.push(refuse("wasmgate.id-mismatch", message));
            continue;
        }
        if let Some(first) = ids.get(&deployment.id) {
            let message = format!("id {} is already used by {first}", deployment.id);
            plan.rejected.push(refuse("wasmgate.duplicate-id", message));
            continue;
        }
        ids.insert(deployment.id.clone(), item.source.clone());
        plan.wanted.push((item, deployment));
    }
    *parsed = next;
    plan
}

/// What a deployment needs from a partition: `deviceConstraints.capacityRequirements`
/// when given, else the sum of its components' memory limits.
pub fn requirement(deployment: &Deployment) -> Requirement {
    let constraints = deployment
        .device_constraints
        .as_ref()
        .and_then(|c| c.get("capacityRequirements"));
    let memory = constraints
        .and_then(|c| c.get("memory"))
        .and_then(|m| m.as_str())
        .and_then(|m| m.parse::<ByteSize>().ok())
        .map(|b| b.0)
        .unwrap_or_else(|| {
            deployment
                .components
                .iter()
                .filter_map(|c| c.extensions.memory)
                .sum()
        });
    let cores = constraints
        .and_then(|c| c.get("cpu"))
        .and_then(|c| c.get("cores"))
        .and_then(|c| c.as_f64());
    Requirement { memory, cores }
}

/// The HTTP routes (host, prefix) of a deployment.
pub fn routes(deployment: &Deployment) -> BTreeSet<(Option<String>, String)> {
    deployment
        .components
        .iter()
        .filter_map(|c| c.extensions.http.as_ref())
        .map(|h| (h.host.clone(), h.route.clone()))
        .collect()
}

/// What committing a deployment can change for the ones after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Footprint {
    pub routes: BTreeSet<(Option<String>, String)>,
    /// `DEVICE/PARTITION` when directed; `None` when the host chooses.
    pub target: Option<String>,
    /// Memory it commits, or gives back (its running version's), when it commits.
    pub memory: u64,
}

impl Footprint {
    pub fn of(deployment: &Deployment, running_memory: u64) -> Self {
        Self {
            routes: routes(deployment),
            target: directed_target(deployment.device_id.as_deref()),
            memory: requirement(deployment).memory.max(running_memory),
        }
    }

    /// Whether committing `self` first could change how `later` commits: a route
    /// both ask for, or memory in a partition both may be placed in.
    pub fn affects(&self, later: &Footprint) -> bool {
        if !self.routes.is_disjoint(&later.routes) {
            return true;
        }
        let same_partition = match (&self.target, &later.target) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.memory > 0 && same_partition
    }
}

/// Where a deployment of the pass stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Fetching or compiling.
    Installing,
    /// Install finished, not committed yet.
    Ready,
}

/// Which `Ready` entries (indices, in order) may commit now. `entries` are the pass's
/// uncommitted deployments in source order. An entry waits while an earlier
/// uncommitted one could change its outcome (see [`Footprint::affects`]), so the
/// result is the one a strictly sequential pass would reach, while unrelated
/// deployments never wait for a slow install.
pub fn committable(entries: &[(&Footprint, Stage)]) -> Vec<usize> {
    let mut waiting: Vec<&Footprint> = Vec::new();
    let mut now = Vec::new();
    for (i, (footprint, stage)) in entries.iter().enumerate() {
        let held = waiting.iter().any(|earlier| earlier.affects(footprint));
        if *stage == Stage::Ready && !held {
            now.push(i);
        } else {
            waiting.push(footprint);
        }
    }
    now
}

/// The identity of what is applied: the document and every component's digest.
pub fn fingerprint<'a>(yaml: &[u8], digests: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    h.update(yaml);
    for digest in digests {
        h.update(digest.as_bytes());
    }
    hex::encode(h.finalize())
}

pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(120);

/// Back-off for a document whose artifacts could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub yaml_digest: String,
    pub attempts: u32,
    pub next_at: Instant,
}

impl Retry {
    /// The retry after a failed attempt at `yaml_digest`: 2 s, doubling up to 2 min;
    /// a changed document starts over.
    pub fn after(previous: Option<&Retry>, yaml_digest: &str, now: Instant) -> Retry {
        let attempts = previous
            .filter(|r| r.yaml_digest == yaml_digest)
            .map_or(0, |r| r.attempts)
            + 1;
        let delay = RETRY_FIRST
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(RETRY_MAX);
        Retry {
            yaml_digest: yaml_digest.to_owned(),
            attempts,
            next_at: now + delay,
        }
    }

    /// Whether the same document must not be tried yet (its failed status stands).
    pub fn holds(&self, yaml_digest: &str, now: Instant) -> bool {
        self.yaml_digest == yaml_digest && self.next_at > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn yaml(id: &str, name: &str, device: &str, route: &str, memory: Option<&str>) -> String {
        let limits = memory
            .map(|m| format!(", limits: {{memory: {m}}}"))
            .unwrap_or_default();
        format!(
            "id: {id}\nmetadata:\n  name: {name}\n  deviceId: {device}\nspec:\n  applicationId: {name}\n  deploymentProfile:\n    type: custom\n    components:\n      - name: c\n        properties:\n          repository: c.wasm\n        x-wasmgate-extensions: {{trigger: {{http: {{route: {route}}}}}{limits}}}\n"
        )
    }

    fn doc(source: &str, yaml: &str) -> DesiredDeployment {
        DesiredDeployment {
            source: source.into(),
            base_dir: PathBuf::from("/"),
            yaml: yaml.as_bytes().to_vec(),
            expected_id: None,
            refused: None,
        }
    }

    const A: &str = "11111111-1111-4111-8111-111111111111";
    const B: &str = "22222222-2222-4222-8222-222222222222";

    fn did(id: &str) -> DeploymentId {
        DeploymentId::parse(id).unwrap()
    }

    fn running(id: &str, source: &str) -> Running {
        Running {
            id: did(id),
            source: source.into(),
            outline: Outline {
                id: Some(did(id)),
                ..Outline::default()
            },
            partition: "edge-01/apps".into(),
        }
    }

    #[test]
    fn unchanged_documents_are_taken_from_the_last_pass_and_only_those_kept() {
        let a = yaml(A, "a", "edge-01/apps", "/a", None);
        let b = yaml(B, "b", "edge-01/apps", "/b", None);
        let mut parsed = Parsed::default();
        let first = plan_with(vec![doc("a", &a), doc("b", &b)], &[], &mut parsed);
        assert_eq!(first.wanted.len(), 2);
        assert_eq!(parsed.0.len(), 2);
        // b left, a changed: the table holds what this pass used, nothing else.
        let changed = yaml(A, "a", "edge-01/apps", "/a2", None);
        let second = plan_with(vec![doc("a", &changed)], &[], &mut parsed);
        assert_eq!(parsed.0.len(), 1);
        let routes: Vec<_> = second.wanted[0].1.components[0]
            .extensions
            .http
            .iter()
            .map(|h| h.route.clone())
            .collect();
        assert_eq!(routes, ["/a2"]);
        // A cached parse equals a fresh one.
        let cached = plan_with(vec![doc("a", &changed)], &[], &mut parsed);
        let fresh = plan(vec![doc("a", &changed)], &[]);
        assert_eq!(cached.wanted[0].1, fresh.wanted[0].1);
        // An invalid document is never cached.
        plan_with(vec![doc("x", "id: [")], &[], &mut parsed);
        assert!(parsed.0.is_empty());
    }

    #[test]
    fn additions_come_in_source_order() {
        let plan = plan(
            vec![
                doc("b.yaml", &yaml(B, "b", "edge-01/apps", "/b", None)),
                doc("a.yaml", &yaml(A, "a", "edge-01/apps", "/a", None)),
            ],
            &[],
        );
        let sources: Vec<&str> = plan.wanted.iter().map(|(i, _)| i.source.as_str()).collect();
        assert_eq!(sources, ["a.yaml", "b.yaml"]);
        assert!(plan.rejected.is_empty());
        assert!(plan.gone([].iter()).is_empty());
    }

    #[test]
    fn removals_are_running_ids_no_longer_wanted() {
        let plan = plan(
            vec![doc("a.yaml", &yaml(A, "a", "edge-01/apps", "/a", None))],
            &[running(A, "a.yaml"), running(B, "b.yaml")],
        );
        let ids = [did(A), did(B)];
        assert_eq!(plan.gone(ids.iter()), [did(B)]);
    }

    #[test]
    fn a_broken_edit_keeps_the_running_version() {
        let plan = plan(
            vec![doc("a.yaml", "id: [not closed")],
            &[running(A, "a.yaml")],
        );
        assert!(plan.wanted.is_empty());
        assert!(plan.kept.contains(A));
        let ids = [did(A)];
        assert!(plan.gone(ids.iter()).is_empty());
        let rejected = &plan.rejected[0];
        assert_eq!(rejected.partition.as_deref(), Some("edge-01/apps"));
        assert!(rejected
            .failure
            .message
            .ends_with("(the previous version keeps serving)"));
        // Not running: just rejected, nothing kept.
        let plan = super::plan(vec![doc("a.yaml", "id: [not closed")], &[]);
        assert!(plan.kept.is_empty());
        assert_eq!(plan.rejected[0].failure.code, "wasmgate.invalid");
    }

    #[test]
    fn the_later_of_two_documents_with_one_id_fails() {
        let plan = plan(
            vec![
                doc("z.yaml", &yaml(A, "z", "edge-01/apps", "/z", None)),
                doc("a.yaml", &yaml(A, "a", "edge-01/apps", "/a", None)),
            ],
            &[],
        );
        assert_eq!(plan.wanted.len(), 1);
        assert_eq!(plan.wanted[0].0.source, "a.yaml");
        assert_eq!(plan.rejected[0].source, "z.yaml");
        assert_eq!(plan.rejected[0].failure.code, "wasmgate.duplicate-id");
        assert!(plan.rejected[0].failure.message.contains("a.yaml"));
    }

    #[test]
    fn a_listed_id_must_match() {
        let mut item = doc("wfm:x", &yaml(A, "a", "edge-01/apps", "/a", None));
        item.expected_id = Some(did(B));
        let plan = plan(vec![item], &[]);
        assert!(plan.wanted.is_empty());
        assert_eq!(plan.rejected[0].failure.code, "wasmgate.id-mismatch");
    }

    #[test]
    fn refused_documents_fail_with_their_code() {
        let mut item = doc("a.yaml", "");
        item.refused = Some(super::super::Refusal {
            code: "wasmgate.too-large",
            message: "too large".into(),
        });
        let plan = plan(vec![item], &[]);
        assert_eq!(plan.rejected[0].failure.code, "wasmgate.too-large");
    }

    #[test]
    fn updates_are_told_apart_by_digest() {
        let one = fingerprint(b"doc", ["sha256:aa"]);
        assert_eq!(one, fingerprint(b"doc", ["sha256:aa"]), "unchanged");
        assert_ne!(
            one,
            fingerprint(b"doc", ["sha256:bb"]),
            "new component bytes"
        );
        assert_ne!(one, fingerprint(b"doc2", ["sha256:aa"]), "new document");
    }

    fn footprint(device: &str, route: &str, memory: Option<&str>) -> Footprint {
        let d = Deployment::from_yaml(yaml(A, "a", device, route, memory).as_bytes()).unwrap();
        Footprint::of(&d, 0)
    }

    #[test]
    fn route_conflicts_keep_source_order() {
        let first = footprint("edge-01/apps", "/x", None);
        let second = footprint("edge-01/other", "/x", None);
        let other = footprint("edge-01/other", "/y", None);
        // The first still installs: the second waits for it, the unrelated one does not.
        let entries = [
            (&first, Stage::Installing),
            (&second, Stage::Ready),
            (&other, Stage::Ready),
        ];
        assert_eq!(committable(&entries), [2]);
        let entries = [(&first, Stage::Ready), (&second, Stage::Ready)];
        assert_eq!(committable(&entries), [0, 1]);
        // A waiting entry holds those after it that it affects, ready or not.
        let third = footprint("edge-01/apps", "/x", None);
        let entries = [
            (&first, Stage::Installing),
            (&second, Stage::Ready),
            (&third, Stage::Ready),
        ];
        assert!(committable(&entries).is_empty());
    }

    #[test]
    fn memory_orders_placement_only_where_it_can_meet() {
        let big = footprint("edge-01/*", "/a", Some("64Mi"));
        let directed = footprint("edge-01/apps", "/b", None);
        let elsewhere = footprint("edge-01/sensors", "/c", Some("8Mi"));
        assert!(
            big.affects(&directed),
            "autonomous memory may land anywhere"
        );
        let small = footprint("edge-01/apps", "/d", Some("8Mi"));
        assert!(small.affects(&directed));
        assert!(!small.affects(&elsewhere));
        assert!(
            !directed.affects(&small),
            "no memory, no effect on placement"
        );
        // An update giving memory back affects placement like one taking it.
        let d = Deployment::from_yaml(yaml(A, "a", "edge-01/apps", "/e", None).as_bytes()).unwrap();
        assert!(Footprint::of(&d, 1 << 20).affects(&directed));
    }

    #[test]
    fn requirement_prefers_capacity_requirements() {
        let d = Deployment::from_yaml(yaml(A, "a", "edge-01/*", "/a", Some("16Mi")).as_bytes())
            .unwrap();
        assert_eq!(requirement(&d).memory, 16 << 20);
        let mut d = d;
        d.device_constraints = Some(serde_json::json!({
            "capacityRequirements": {"memory": "1Gi", "cpu": {"cores": 0.5}}
        }));
        assert_eq!(requirement(&d).memory, 1 << 30);
        assert_eq!(requirement(&d).cores, Some(0.5));
    }

    #[test]
    fn retry_back_off_doubles_and_restarts_on_a_new_document() {
        let now = Instant::now();
        let first = Retry::after(None, "d1", now);
        assert_eq!(first.next_at - now, RETRY_FIRST);
        assert!(first.holds("d1", now), "not due yet");
        assert!(!first.holds("d1", now + RETRY_FIRST), "due");
        assert!(!first.holds("d2", now), "another document is tried at once");
        let second = Retry::after(Some(&first), "d1", now);
        assert_eq!(
            (second.attempts, second.next_at - now),
            (2, RETRY_FIRST * 2)
        );
        let mut r = second;
        for _ in 0..20 {
            r = Retry::after(Some(&r), "d1", now);
        }
        assert_eq!(r.next_at - now, RETRY_MAX);
        assert_eq!(Retry::after(Some(&r), "d2", now).attempts, 1);
    }
}
