//! Security issue #9 on the device: hostile documents from the WFM (gzip bombs in the
//! bundle, a YAML alias bomb and deep nesting in a deployment, a manifest listing 100k
//! deployments), served by the strict mock WFM over mutual TLS on loopback to the real
//! binary. `hostile_wfm_input.rs` bounds the parse functions alone; here every case must
//! be refused (or fail alone) within a stated time while the process's memory stays
//! within a stated bound, the previous state keeps serving, and a clean manifest is
//! accepted afterwards.
//!
//! Every digest the mock advertises matches what it serves, so each document gets past
//! the digest checks to the parser or limit the case is about.

mod common;

use common::pki::Pki;
use common::wfm::{Fixture, MockOptions, MockWfm, Profile, BUNDLE_MEDIA_TYPE};
use common::*;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use serde_json::Value;
use std::io::Read;
use std::time::{Duration, Instant};
use tar::{EntryType, Header};
use wasmgate::deploy::model::Deployment;
use wasmgate::margo::bundle::MAX_MEMBER_BYTES;
use wasmgate::margo::settings::DEFAULT_MAX_BUNDLE;

const HELLO_ID: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const COUNTER_ID: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The client reads at most this much of a manifest or deployment YAML (`MAX_DOCUMENT`
/// in `margo/client.rs`); larger responses are cut off by the transport.
const MAX_DOCUMENT: u64 = MIB;
/// Growth of the wasmgate process's peak RSS over its RSS before a case. The most the
/// client's limits let it hold is in the bundle cases: the response body (at most
/// max-bundle-size, 16 MiB, the default here) and the members read before the expansion
/// limit stops the reader (at most 16 MiB again), 32 MiB at once; the other half is room
/// for the allocator and the copy the body collection makes. Documents are at most
/// 1 MiB. Expanding any of the bombs takes hundreds of MiB to GiB.
const RSS_BOUND: u64 = 64 * MIB;
/// From the device receiving the hostile manifest (the mock's answer to its poll) to the
/// refusal showing. The slowest refusal inflates 16 MiB and hashes the 4 MiB body in a
/// debug build, about a second on a busy core. A YAML that reached the YAML parser's
/// quadratic nesting cost would take minutes. (Measured from the poll, not from when
/// the test set the fixture: the mock takes seconds to generate the 100k manifest.)
const REFUSAL_TIME: Duration = Duration::from_secs(10);
/// From the clean manifest served to accepted (its ETag answered 304). The longest part
/// is the client's back-off after the oversized manifest: three failed polls, then
/// 300 ms * 2^3 before the next.
const RECOVERY_TIME: Duration = Duration::from_secs(20);
/// Installs and other waits that only have to end.
const WAIT: Duration = Duration::from_secs(60);

fn config(mock: &MockWfm, pki: &Pki, sandbox: &Sandbox) -> String {
    let files = pki.write_client_files(&sandbox.path().join("pki"));
    format!(
        r#"
[device]
id = "edge-01"
mode = "see-thru"
vendor = "Acme"
model = "EG-1"
serial = "SN-1"
labels = {{ site = "north" }}

[[partition]]
id = "apps"
cpu = 1.0
memory = "256Mi"
storage = "16Mi"
labels = {{ tier = "apps" }}

[wfm]
url = "{}"
poll-interval = "300ms"
{}
"#,
        mock.base_url(),
        files.rc3_credentials()
    )
}

fn hello_yaml(greeting: &str) -> String {
    deployment(
        HELLO_ID,
        "hello",
        Some("edge-01/apps"),
        &[(
            "hello",
            &format!("file://{}", wasmgate_examples::HELLO),
            "{trigger: {http: {route: /hello}}}",
        )],
        &[("greeting", greeting, "greeting", "hello")],
    )
}

fn counter_yaml() -> String {
    deployment(
        COUNTER_ID,
        "counter",
        Some("edge-01/apps"),
        &[(
            "counter",
            &format!("file://{}", wasmgate_examples::COUNTER),
            "{trigger: {http: {route: /counter}}}",
        )],
        &[],
    )
}

/// `yaml` with `deviceConstraints: value`: a field the model keeps (as a JSON value),
/// so that serde cannot skip what the value expands to.
fn with_constraints(yaml: &str, value: &str) -> String {
    let at = "    type: custom\n";
    assert!(yaml.contains(at), "template changed: {yaml}");
    yaml.replacen(at, &format!("{at}    deviceConstraints: {value}\n"), 1)
}

/// "Billion laughs" aimed at `deviceConstraints`: nine levels of ten aliases, 10^10
/// numbers once expanded, in under 1 KiB.
fn alias_bomb(yaml: &str) -> String {
    let mut anchors = String::from("x-a0: &a0 [1,1,1,1,1,1,1,1,1,1]\n");
    for level in 1..=9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        anchors.push_str(&format!("x-a{level}: &a{level} [{refs}]\n"));
    }
    format!("{anchors}{}", with_constraints(yaml, "*a9"))
}

/// 100,000 levels of flow sequences in `deviceConstraints` (200 KB): the YAML parser's
/// cost grows with the square of the depth, minutes for this.
fn deeply_nested(yaml: &str) -> String {
    let depth = 100_000;
    with_constraints(yaml, &format!("{}{}", "[".repeat(depth), "]".repeat(depth)))
}

// ---------------------------------------------------------------------------------------
// Gzip bombs, built in constant time per GiB

/// Deflates `input` and flushes with `flush` (`Full`: byte-aligned, dictionary reset).
fn deflate(z: &mut Compress, mut input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 256 + 4096);
    loop {
        if out.len() == out.capacity() {
            out.reserve(64 << 10);
        }
        let read = z.total_in();
        let status = z.compress_vec(input, &mut out, flush).expect("deflate");
        input = &input[(z.total_in() - read) as usize..];
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            // zlib's rule: a flush is complete once a call leaves output space unused.
            _ => input.is_empty() && out.len() < out.capacity(),
        };
        if done {
            return out;
        }
    }
}

/// Largest block of zeros deflated once and repeated: 2^20 bytes.
const BLOCK_LOG: usize = 20;

/// A gzip'd tar written piece by piece, every piece deflated from a reset dictionary (a
/// full flush). A piece then decodes the same wherever it stands, so a run of zeros of
/// any length is a concatenation of blocks of 2^k zeros deflated once, and its CRC a
/// combination of CRCs of 2^k zeros: gigabytes cost kilobytes of work. Compressing
/// them for real would take minutes in a debug build.
struct GzTar {
    z: Compress,
    deflated: Vec<u8>,
    crc: Crc,
    /// `zero_blocks[k]`: 2^k zeros deflated from a reset dictionary.
    zero_blocks: Vec<Vec<u8>>,
    /// `zero_crcs[k]`: the CRC-32 of 2^k zeros.
    zero_crcs: Vec<Crc>,
}

impl GzTar {
    fn new() -> Self {
        let mut z = Compress::new(Compression::best(), false);
        let zero_blocks: Vec<Vec<u8>> = (0..=BLOCK_LOG)
            .map(|k| deflate(&mut z, &vec![0; 1 << k], FlushCompress::Full))
            .collect();
        // What the repetition relies on: the same input after a full flush deflates to
        // the same bytes.
        assert_eq!(
            deflate(&mut z, &vec![0; 1 << BLOCK_LOG], FlushCompress::Full),
            zero_blocks[BLOCK_LOG]
        );
        let mut zero_crcs = vec![Crc::new()];
        zero_crcs[0].update(&[0]);
        for k in 1..64 {
            let mut doubled = Crc::new();
            doubled.combine(&zero_crcs[k - 1]);
            doubled.combine(&zero_crcs[k - 1]);
            zero_crcs.push(doubled);
        }
        GzTar {
            z,
            deflated: Vec::new(),
            crc: Crc::new(),
            zero_blocks,
            zero_crcs,
        }
    }

    fn bytes(&mut self, data: &[u8]) {
        let piece = deflate(&mut self.z, data, FlushCompress::Full);
        self.deflated.extend_from_slice(&piece);
        self.crc.update(data);
    }

    fn zeros(&mut self, n: u64) {
        for _ in 0..n >> BLOCK_LOG {
            self.deflated
                .extend_from_slice(&self.zero_blocks[BLOCK_LOG]);
        }
        for k in 0..BLOCK_LOG {
            if n >> k & 1 == 1 {
                self.deflated.extend_from_slice(&self.zero_blocks[k]);
            }
        }
        for k in 0..64 {
            if n >> k & 1 == 1 {
                self.crc.combine(&self.zero_crcs[k]);
            }
        }
    }

    /// A member of `size` bytes: `head`, then zeros. The name is written raw, as a
    /// hostile archive would.
    fn member(&mut self, name: &str, kind: EntryType, head: &[u8], size: u64) {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o600);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.bytes(header.as_bytes());
        self.bytes(head);
        let padding = (512 - size % 512) % 512;
        self.zeros(size - head.len() as u64 + padding);
    }

    /// Ends the archive (two zero blocks) and the gzip stream.
    fn finish(mut self) -> Vec<u8> {
        self.zeros(1024);
        let tail = deflate(&mut self.z, &[], FlushCompress::Finish);
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.extend_from_slice(&self.deflated);
        out.extend_from_slice(&tail);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32, which is what `amount` wraps to.
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        out
    }
}

/// One member of 4 GiB of zeros: refused on its declared size, before a byte of it is
/// inflated.
fn one_huge_member() -> Vec<u8> {
    let mut t = GzTar::new();
    t.member("a.yaml", EntryType::Regular, b"", 4 * GIB);
    t.finish()
}

/// 256 members of 1 MiB (the most a member may have), each different, 256 MiB in all:
/// every member passes the member checks, the expansion limit must stop the reader.
fn many_members() -> Vec<u8> {
    let mut t = GzTar::new();
    for i in 0..256 {
        let name = format!("m{i:03}.yaml");
        t.member(&name, EntryType::Regular, name.as_bytes(), MAX_MEMBER_BYTES);
    }
    t.finish()
}

/// A GNU long name of 1 GiB before a normal member: the tar reader buffers such a name
/// whole, whatever its size; only the expansion limit stands between it and memory.
fn long_name_bomb() -> Vec<u8> {
    let mut t = GzTar::new();
    t.member("././@LongLink", EntryType::GNULongName, b"", GIB);
    t.member("a.yaml", EntryType::Regular, b"x", 1);
    t.finish()
}

#[test]
fn the_bomb_builder_writes_valid_gzip_tar() {
    // Small sizes, decompressed in full: the same code paths as the bombs (blocks of
    // every size, repeated 1 MiB blocks, CRC combination), checked by a real reader.
    let mut t = GzTar::new();
    t.member("a.yaml", EntryType::Regular, b"head", 3 * MIB + 12_345);
    t.member("b.yaml", EntryType::Regular, b"x", 1);
    let gz = t.finish();
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .expect("valid gzip, CRC and length included");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut seen = vec![];
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        seen.push((name, data));
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "a.yaml");
    assert_eq!(seen[0].1.len() as u64, 3 * MIB + 12_345);
    assert!(seen[0].1.starts_with(b"head"));
    assert!(seen[0].1[4..].iter().all(|b| *b == 0));
    assert_eq!(seen[1], ("b.yaml".to_string(), b"x".to_vec()));
}

#[test]
fn the_hostile_yaml_templates_are_valid_without_the_bomb() {
    // Without this, the failures below could be the template's fault.
    for yaml in [hello_yaml("Bomb"), counter_yaml()] {
        Deployment::from_yaml(with_constraints(&yaml, "{a: [1]}").as_bytes()).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The device

/// Status reports the mock accepted for `id`, as (state, adoptedManifestVersion).
fn reports(mock: &MockWfm, id: &str) -> Vec<(String, u64)> {
    mock.reports(id)
}

fn wait_state(mock: &MockWfm, id: &str, state: &str, version: u64) {
    mock.wait_state(id, state, version, WAIT);
}

fn manifest_polls(mock: &MockWfm, since: usize) -> Vec<u16> {
    mock.requests()[since..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/deployments")
        .map(|r| r.status)
        .collect()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The memory of the wasmgate process over one case: its RSS before, and its peak
/// since. The peak is the kernel's high-water mark (reset through `clear_refs`), so a
/// short spike between two samples counts too; where that reset is not allowed, the
/// largest sample taken while waiting.
struct Memory {
    pid: u32,
    baseline_kib: u64,
    high_water_mark: bool,
    sampled_kib: u64,
}

impl Memory {
    fn start(pid: u32) -> Memory {
        let baseline_kib = rss_kib(pid);
        // "5" resets VmHWM to the current RSS (Linux >= 4.0).
        let high_water_mark = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        Memory {
            pid,
            baseline_kib,
            high_water_mark,
            sampled_kib: baseline_kib,
        }
    }

    fn sample(&mut self) {
        self.sampled_kib = self.sampled_kib.max(rss_kib(self.pid));
    }

    fn peak_kib(&mut self) -> u64 {
        self.sample();
        if self.high_water_mark {
            self.sampled_kib.max(status_kib(self.pid, "VmHWM:"))
        } else {
            self.sampled_kib
        }
    }

    /// Peak growth in KiB, asserted against [`RSS_BOUND`] (and the RSS now as well).
    #[track_caller]
    fn check(&mut self, what: &str) -> u64 {
        let grown = self.peak_kib().saturating_sub(self.baseline_kib);
        assert!(
            grown * 1024 <= RSS_BOUND,
            "{what}: wasmgate's peak RSS grew {grown} KiB over {} KiB, bound {} KiB",
            self.baseline_kib,
            RSS_BOUND / 1024
        );
        grown
    }
}

/// Polls `check` every 50 ms, sampling memory, until it yields; panics after `within`.
#[track_caller]
fn until<T>(
    what: &str,
    within: Duration,
    gate: &Wasmgate,
    memory: &mut Memory,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        memory.sample();
        if let Some(out) = check() {
            return out;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {within:?} waiting for {what}; last status: {:#}{}",
                gate.status()["wfm"],
                gate.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a case's refusal shows.
enum Refusal {
    /// The manifest as a whole is refused: `/status` `wfm.lastError` says why.
    LastError(String),
    /// The manifest is accepted and this deployment alone fails, reported to the WFM
    /// with every needle in its error message.
    Failed {
        id: &'static str,
        needles: Vec<&'static str>,
    },
}

struct Case {
    name: &'static str,
    fixture: Fixture,
    deployments: Vec<(&'static str, String)>,
    refusal: Refusal,
}

fn last_error(gate: &Wasmgate) -> Option<String> {
    gate.status()["wfm"]["lastError"]
        .as_str()
        .map(str::to_owned)
}

fn failed_report(mock: &MockWfm, id: &str, version: u64) -> Option<Value> {
    mock.statuses().into_iter().find(|s| {
        s["deploymentId"] == id
            && s["status"]["state"] == "failed"
            && s["adoptedManifestVersion"].as_u64() == Some(version)
    })
}

#[test]
fn hostile_wfm_documents_are_refused_in_bounds_while_the_previous_state_serves() {
    let sandbox = Sandbox::new();
    let pki = Pki::new("example.org", "wfm-1", "edge-01");
    let mock = MockWfm::start_with(Profile::Rc3, &pki, MockOptions::default());
    let gate = sandbox.up(&config(&mock, &pki, &sandbox));
    let pid = gate.pid();
    let stable = vec![(HELLO_ID, hello_yaml("Stable"))];
    mock.set_deployments(&stable);
    wait_state(&mock, HELLO_ID, "installed", mock.manifest_version());
    assert_eq!(gate.get("/hello"), (200, "Stable, world!\n".to_string()));
    // Steady state first: a few polls answered 304, so that the baseline is the
    // serving device, not its start.
    let since = mock.requests().len();
    mock.wait_until("steady polling", WAIT, |m| {
        manifest_polls(m, since)
            .iter()
            .filter(|s| **s == 304)
            .count()
            >= 3
    });
    let initial_kib = rss_kib(pid);

    // Two changed deployments: the client takes the bundle path.
    let via_bundle = |greeting: &str| {
        vec![
            (HELLO_ID, hello_yaml(greeting)),
            (COUNTER_ID, counter_yaml()),
        ]
    };
    let bundles = [
        ("one member of 4 GiB of zeros", one_huge_member(), {
            // Refused on the member's declared size.
            format!("bundle member \"a.yaml\" is larger than {MAX_MEMBER_BYTES} bytes")
        }),
        ("256 members of 1 MiB of zeros", many_members(), {
            format!("bundle expands to more than {DEFAULT_MAX_BUNDLE} bytes")
        }),
        ("a GNU long name of 1 GiB of zeros", long_name_bomb(), {
            format!("bundle expands to more than {DEFAULT_MAX_BUNDLE} bytes")
        }),
    ];
    let mut cases = Vec::new();
    for (name, bytes, refusal) in bundles {
        // Under max-bundle-size: the archive reader refuses it, not the transport.
        assert!(
            (bytes.len() as u64) < DEFAULT_MAX_BUNDLE,
            "{name}: {} bytes",
            bytes.len()
        );
        eprintln!(
            "bundle bomb, {name}: {} KiB on the wire",
            bytes.len() / 1024
        );
        cases.push(Case {
            name,
            fixture: Fixture::RawBundle(bytes),
            deployments: via_bundle("Bomb"),
            refusal: Refusal::LastError(refusal),
        });
    }
    // One changed deployment: the client fetches that YAML alone. The digest vouches for
    // the bytes, so the manifest is accepted and the deployment fails alone, in the
    // reconciler: a broken update of a running deployment keeps the running version.
    let yamls = [
        (
            "alias bomb in hello's deviceConstraints",
            HELLO_ID,
            alias_bomb(&hello_yaml("Bomb")),
            vec![
                "not a valid ApplicationDeployment YAML",
                "(the previous version keeps serving)",
            ],
        ),
        (
            "100k-deep nesting in hello's deviceConstraints",
            HELLO_ID,
            deeply_nested(&hello_yaml("Bomb")),
            vec!["nested deeper than", "(the previous version keeps serving)"],
        ),
        (
            // Nothing running to fall back on: the reconciler describes the failed
            // document from its own bytes.
            "100k-deep nesting in a new deployment",
            COUNTER_ID,
            deeply_nested(&counter_yaml()),
            vec!["nested deeper than"],
        ),
    ];
    for (name, id, yaml, needles) in yamls {
        // Under the client's document limit: the YAML parser refuses it, not the
        // transport.
        assert!((yaml.len() as u64) < MAX_DOCUMENT, "{name}: {}", yaml.len());
        cases.push(Case {
            name,
            fixture: Fixture::RawDeployment {
                id: id.to_string(),
                bytes: yaml.into_bytes(),
            },
            deployments: stable.clone(),
            refusal: Refusal::Failed { id, needles },
        });
    }
    // Over the client's document limit, with a digest that matches: refused unread
    // past the limit, the whole update with it (its digest cannot be checked).
    let mut oversized = hello_yaml("Bomb");
    while (oversized.len() as u64) <= 2 * MAX_DOCUMENT {
        oversized.push_str(&format!("# {}\n", "x".repeat(1000)));
    }
    cases.push(Case {
        name: "a 2 MiB deployment YAML",
        fixture: Fixture::RawDeployment {
            id: HELLO_ID.to_string(),
            bytes: oversized.into_bytes(),
        },
        deployments: stable.clone(),
        refusal: Refusal::LastError(format!(
            "deployment {HELLO_ID} YAML is larger than {MAX_DOCUMENT} bytes"
        )),
    });
    // 100k deployments do not fit in the 1 MiB the client reads of a manifest (290
    // bytes each as the mock lists them, 29 MB), so this is the size cap's case; the
    // parser's own bound on such a manifest is in hostile_wfm_input.rs.
    cases.push(Case {
        name: "a manifest of 100k deployments",
        fixture: Fixture::ManyDeployments(100_000),
        deployments: via_bundle("Bomb"),
        refusal: Refusal::LastError(format!(
            "the state manifest is larger than {MAX_DOCUMENT} bytes"
        )),
    });

    let mut summary = Vec::new();
    for case in cases {
        let name = case.name;
        let before = mock.requests().len();
        let many = matches!(case.fixture, Fixture::ManyDeployments(_));
        let mut memory = Memory::start(pid);
        mock.set_fixture(case.fixture);
        mock.set_deployments(&case.deployments);
        let bad = mock.manifest_version();
        let detail = match &case.refusal {
            Refusal::LastError(needle) => until(name, WAIT, &gate, &mut memory, || {
                last_error(&gate).filter(|e| e.contains(needle.as_str()))
            }),
            Refusal::Failed { id, needles } => {
                let report = until(name, WAIT, &gate, &mut memory, || {
                    failed_report(&mock, id, bad)
                });
                let message = report["status"]["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                for needle in needles {
                    assert!(message.contains(needle), "{name}: {report:#}");
                }
                // A deployment that fails alone does not fail the sync.
                assert_eq!(last_error(&gate), None, "{name}");
                message
            }
        };
        let refused = Instant::now();
        // The first manifest served after the change (possibly one with the fixture
        // and the old deployments, which only makes this longer).
        let received = mock.requests()[before..]
            .iter()
            .find(|r| r.method == "GET" && r.path == "/api/v1/deployments" && r.status == 200)
            .map(|r| r.at)
            .expect("the refused manifest was served");
        let refused_in = refused.saturating_duration_since(received);
        assert!(
            refused_in <= REFUSAL_TIME,
            "{name}: refused {refused_in:?} after the manifest arrived, bound {REFUSAL_TIME:?}"
        );
        if many {
            let size = serde_json::to_vec(&mock.current_manifest()).unwrap().len();
            assert!(size as u64 > MAX_DOCUMENT, "{name}: only {size} bytes");
        }
        // Three polls later, still the old state (the refused manifest is fetched again
        // on every poll, each one a new chance to leak or hang).
        until(
            &format!("{name}: three polls"),
            WAIT,
            &gate,
            &mut memory,
            || (manifest_polls(&mock, before).len() >= 3).then_some(()),
        );
        assert_eq!(
            gate.get("/hello"),
            (200, "Stable, world!\n".to_string()),
            "{name}"
        );
        assert_eq!(gate.get("/counter").0, 404, "{name} was applied");
        let grown_kib = memory.check(name);

        // Back to the running state in a fresh, higher version: accepted (its ETag is
        // answered 304 from then on), the sync clean again, hello installed.
        mock.set_deployments(&stable);
        mock.clear_fixture();
        let clean = Instant::now();
        let before = mock.requests().len();
        until(
            &format!("{name}: clean manifest accepted"),
            RECOVERY_TIME,
            &gate,
            &mut memory,
            || {
                (manifest_polls(&mock, before).contains(&304) && last_error(&gate).is_none())
                    .then_some(())
            },
        );
        let recovered_in = clean.elapsed();
        until(
            &format!("{name}: hello reported installed"),
            WAIT,
            &gate,
            &mut memory,
            || {
                let last = reports(&mock, HELLO_ID).pop();
                last.filter(|(state, _)| state == "installed").map(|_| ())
            },
        );
        assert_eq!(
            gate.get("/hello"),
            (200, "Stable, world!\n".to_string()),
            "{name}"
        );
        let grown_kib = grown_kib.max(memory.check(name));
        let line = format!(
            "{name}: refused in {refused_in:.2?}, peak RSS +{grown_kib} KiB over {} KiB, \
             recovered in {recovered_in:.2?}; {}",
            memory.baseline_kib,
            detail.chars().take(160).collect::<String>()
        );
        eprintln!("{line}");
        summary.push(line);
    }
    assert!(
        reports(&mock, COUNTER_ID)
            .iter()
            .all(|(state, _)| state != "installed"),
        "a refused desired state was installed"
    );
    // Nothing piled up over the cases.
    let now_kib = rss_kib(pid);
    assert!(
        now_kib.saturating_sub(initial_kib) * 1024 <= RSS_BOUND,
        "RSS {now_kib} KiB after the cases, {initial_kib} KiB before, bound +{} KiB",
        RSS_BOUND / 1024
    );
    eprintln!("RSS before the cases {initial_kib} KiB, after {now_kib} KiB");

    // The device still takes a real change, through the bundle path the bombs attacked.
    let before = mock.requests().len();
    mock.set_deployments(&via_bundle("Recovered"));
    let version = mock.manifest_version();
    assert_eq!(
        mock.current_manifest()["bundle"]["mediaType"],
        BUNDLE_MEDIA_TYPE
    );
    wait_state(&mock, COUNTER_ID, "installed", version);
    gate.wait_for("/hello", 200, "Recovered, world!");
    assert_eq!(gate.get("/counter").0, 200);
    let bundle_fetches = mock.requests()[before..]
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/bundles/") && r.status == 200)
        .count();
    assert!(bundle_fetches > 0, "the bundle path was never taken");
    let log = gate.stderr.lock().unwrap().join("\n");
    assert!(
        log.contains("desired state rejected"),
        "no security log line"
    );
    mock.assert_no_violations();
    eprintln!("{}", summary.join("\n"));
}
