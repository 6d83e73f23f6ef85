//! The Go client through the router, for real: a plain franz-go producer
//! (tests/go, built with the Go toolchain) writes delayed records as a Go
//! application would, the absolute `delay-deliver-at` with the README's Go
//! example, and this test reads the target: every record not cancelled
//! arrives once, not before its due time and at most [`MAX_LATE_MS`] after
//! it, with key, value and headers unchanged (the one extra header being
//! `delay-original-timestamp`, the send timestamp), in the partition the Java
//! producer picks for its key; the cancelled one never arrives; franz-go put
//! every keyed record, the cancellation included, where the Java producer
//! would (murmur2), as docs/cancellation.md asks of the cancel topic.
//!
//! The router runs in process on a topic set of the test's own (tiers of 1, 2
//! and 4 s, a cancel topic, a 3-partition target), the target's reader
//! started before anything is produced ([`Setup`]). The Go program prints one
//! JSON line per record it sent; it checks nothing itself.
//!
//! Go 1.26 or newer is required (`go` on the PATH, or /usr/local/go/bin/go);
//! the test fails, never skips, without it. The build uses the user's Go
//! caches (`GOCACHE`, `GOMODCACHE`, by default under `$HOME`), fetches the
//! modules go.sum pins through the Go module proxy on a fresh machine, never
//! changes go.mod or go.sum, and never downloads a Go toolchain unless
//! `GOTOOLCHAIN` says so.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kafka_delay_router::headers;
use kafka_delay_router::kafka::now_ms;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde::Deserialize;

use common::*;

const TIERS_MS: [u64; 3] = [1_000, 2_000, 4_000];
const TIER_PARTITIONS: i32 = 2;
/// How late a record may arrive, in ms: the router is usually within tens of
/// ms; this leaves room for a loaded 2-core machine (as tests/java_client.rs).
const MAX_LATE_MS: i64 = 1_000;
/// How long `go build` may take: on a fresh machine it downloads and compiles
/// franz-go.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the Go program may take to produce everything.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One record the Go program sent, as it printed it.
#[derive(Debug, Deserialize)]
struct Sent {
    /// fixed, deliver-at, cancelled, id-kept or cancellation.
    kind: String,
    /// Where it was produced: a tier or the cancel topic.
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<SentHeader>,
    timestamp_ms: i64,
    #[serde(default)]
    target: String,
    #[serde(default)]
    due_ms: i64,
    /// For the cancellation: when the broker acknowledged it.
    #[serde(default)]
    acked_ms: i64,
}

#[derive(Debug, Deserialize)]
struct SentHeader {
    key: String,
    value: Option<String>,
}

impl Sent {
    fn headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers
            .iter()
            .map(|h| {
                (
                    h.key.clone(),
                    h.value.as_ref().map(|v| v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    fn key_bytes(&self) -> Option<&[u8]> {
        self.key.as_deref().map(str::as_bytes)
    }

    fn describe(&self) -> String {
        format!(
            "{} (key {:?}, via {} p{}@{})",
            self.kind, self.key, self.topic, self.partition, self.offset
        )
    }
}

fn go_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go")
}

/// The `go` command: on the PATH, or where Go's own archive installs it.
/// Fails (never skips) when there is none.
fn find_go() -> PathBuf {
    for go in ["go", "/usr/local/go/bin/go"] {
        match Command::new(go).arg("version").output() {
            Ok(out) if out.status.success() => {
                println!("{}", String::from_utf8_lossy(&out.stdout).trim());
                return PathBuf::from(go);
            }
            Ok(out) => panic!(
                "`{go} version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("running `{go} version`: {e}"),
        }
    }
    panic!(
        "`go` is not installed (not on the PATH, no /usr/local/go/bin/go): the Go client test \
         (tests/go_client.rs) needs Go 1.26 or newer. Install it from https://go.dev/dl/: \
         `tar -C /usr/local -xzf go1.26.*.linux-amd64.tar.gz` and put /usr/local/go/bin on the PATH"
    )
}

/// Go's environment for the build: the module as go.sum pins it, no VCS
/// stamping, no go.work from above, no toolchain download unless the user
/// set `GOTOOLCHAIN`; without `$HOME` (where Go keeps its caches by
/// default), caches under `scratch`.
fn go_env(cmd: &mut Command, scratch: &Path) {
    cmd.env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOWORK", "off");
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if !set("GOTOOLCHAIN") {
        cmd.env("GOTOOLCHAIN", "local");
    }
    if !set("HOME") {
        if !set("GOCACHE") {
            cmd.env("GOCACHE", scratch.join("cache"));
        }
        if !set("GOMODCACHE") && !set("GOPATH") {
            cmd.env("GOMODCACHE", scratch.join("mod"));
        }
    }
}

/// Builds tests/go into the target directory; returns the program's path.
fn build_go(go: &Path) -> PathBuf {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-client");
    let bin = scratch.join("delayinterop");
    let mut cmd = Command::new(go);
    cmd.current_dir(go_dir())
        .args(["build", "-trimpath", "-o"])
        .arg(&bin)
        .arg(".");
    go_env(&mut cmd, &scratch);
    let (status, _) = run(cmd, BUILD_TIMEOUT, "go build");
    assert!(
        status.success(),
        "`go build` in tests/go failed ({status}; its output above says why; it needs Go 1.26 \
         or newer and, on a fresh machine, the Go module proxy)"
    );
    bin
}

/// Runs `cmd`, printing its output as it comes (`tag| ` for standard output,
/// `tag! ` for standard error); returns its exit status and its standard
/// output lines. Killed after `timeout`.
fn run(mut cmd: Command, timeout: Duration, tag: &str) -> (ExitStatus, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tag}: {e}"));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((false, line)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx2.send((true, line)).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((true, line)) => eprintln!("{tag}! {line}"),
            Ok((false, line)) => {
                println!("{tag}| {line}");
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{tag} ran over {timeout:?} and was killed");
        }
    }
    (child.wait().unwrap(), lines)
}

/// A topic's partition count, from the broker's metadata.
fn partition_count(topic: &str) -> i32 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    md.topics()[0].partitions().len() as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_producer_through_the_router() {
    let go = find_go();
    println!("building tests/go (with empty Go caches it downloads and compiles franz-go: a minute or so)");
    let started = Instant::now();
    let bin = tokio::task::spawn_blocking(move || build_go(&go))
        .await
        .unwrap();
    let built = started.elapsed();
    println!("built tests/go in {:.1} s", built.as_secs_f64());

    // The topics, the target's reader (from the beginning, before anything is
    // produced), then the router, waited for until it owns every tier partition.
    let mut rig = Setup::new("go", &TIERS_MS, TIER_PARTITIONS)
        .cancel_topic()
        .start()
        .await;
    let cancel = rig.env.config.cancel.clone().expect("a cancel topic");
    let target = rig.target.clone();
    let target_partitions = partition_count(&target);
    let tiers: Vec<String> = TIERS_MS
        .iter()
        .enumerate()
        .map(|(i, ms)| format!("{}={ms}", rig.env.tier(i)))
        .collect();

    let mut cmd = Command::new(&bin);
    cmd.args(["-bootstrap-servers", &bootstrap()])
        .args(["-tiers", &tiers.join(",")])
        .args(["-target", &target])
        .args(["-cancel-topic", &cancel.topic])
        .args(["-run", &unique("run")]);
    println!("{cmd:?}");
    let ran = Instant::now();
    let (status, lines) = tokio::task::spawn_blocking(move || run(cmd, RUN_TIMEOUT, "go"))
        .await
        .unwrap();
    assert!(
        status.success(),
        "the Go program failed ({status}): its output above says why"
    );
    let produced = ran.elapsed();
    let sent: Vec<Sent> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (cancellations, delayed): (Vec<&Sent>, Vec<&Sent>) =
        sent.iter().partition(|s| s.kind == "cancellation");
    for kind in ["fixed", "deliver-at", "cancelled", "id-kept"] {
        assert!(
            delayed.iter().any(|s| s.kind == kind),
            "the Go program sent no {kind} record"
        );
    }
    assert_eq!(cancellations.len(), 1, "one cancellation");
    let values: HashSet<_> = delayed.iter().map(|s| s.value.clone()).collect();
    assert_eq!(values.len(), delayed.len(), "every value is distinct");

    // Everything not cancelled, then until the cancelled record is well past due.
    let expected = delayed.iter().filter(|s| s.kind != "cancelled").count();
    let last_due = delayed.iter().map(|s| s.due_ms).max().unwrap();
    let got = tokio::task::block_in_place(|| {
        rig.col.wait_for(expected, Duration::from_secs(30));
        let left = (last_due + MAX_LATE_MS + 1_000 - now_ms()).max(0) as u64;
        rig.col.settle(Duration::from_millis(left + 500)).to_vec()
    });

    let mut failures = Vec::new();
    let mut by_value: HashMap<Option<String>, Vec<&Received>> = HashMap::new();
    for r in &got {
        let value = r
            .value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if values.contains(&value) {
            by_value.entry(value).or_default().push(r);
        } else {
            failures.push(format!(
                "a record nobody sent arrived on {target} p{}@{}",
                r.partition, r.offset
            ));
        }
    }

    // franz-go's partitioner is the Java producer's: the tiers (keyed
    // records) and the cancel topic, where a withdrawal must land beside
    // the cancellation it withdraws.
    for s in &sent {
        let Some(key) = s.key_bytes() else { continue };
        let n = if s.topic == cancel.topic {
            cancel.partitions
        } else {
            TIER_PARTITIONS
        };
        let java = java_partition(key, n);
        if s.partition != java {
            failures.push(format!(
                "franz-go put {} in p{} of {n}, the Java producer's partitioner picks p{java}",
                s.describe(),
                s.partition
            ));
        }
    }
    let c = cancellations[0];
    let cancelled = delayed.iter().find(|s| s.kind == "cancelled").unwrap();
    println!(
        "cancellation of {:?} on {} p{}@{} acknowledged {} ms before the record's due time",
        c.key,
        c.topic,
        c.partition,
        c.offset,
        cancelled.due_ms - c.acked_ms
    );
    if c.acked_ms >= cancelled.due_ms {
        failures.push(format!(
            "the cancellation was acknowledged {} ms after the record's due time: the guarantee \
             does not cover it (machine too slow?)",
            c.acked_ms - cancelled.due_ms
        ));
    }

    let mut lateness = Vec::new();
    for s in &delayed {
        let arrivals = by_value.get(&s.value).map(Vec::as_slice).unwrap_or(&[]);
        let what = s.describe();
        if s.kind == "cancelled" {
            match arrivals.first() {
                None => println!("  {what} cancelled: never arrived (as it should)"),
                Some(a) => failures.push(format!(
                    "{what} was cancelled before its due time but arrived on {target} p{}@{}, \
                     {} ms after due",
                    a.partition,
                    a.offset,
                    a.arrived_ms - s.due_ms
                )),
            }
            continue;
        }
        let Some(a) = arrivals.first() else {
            failures.push(format!("{what} never arrived on {target}"));
            continue;
        };
        if arrivals.len() > 1 {
            failures.push(format!("{what} arrived {} times", arrivals.len()));
        }
        assert_eq!(s.target, target, "{what}");
        let late = a.arrived_ms - s.due_ms;
        lateness.push(late);
        if a.arrived_ms < s.due_ms || a.timestamp < s.due_ms {
            failures.push(format!(
                "{what} arrived early: due {}, arrived {}, timestamp {}",
                s.due_ms, a.arrived_ms, a.timestamp
            ));
        } else if late > MAX_LATE_MS {
            failures.push(format!("{what} arrived {late} ms late (> {MAX_LATE_MS})"));
        }
        let mut diffs = Vec::new();
        if a.key.as_deref() != s.key_bytes() {
            diffs.push(format!("key {:?} arrived as {:?}", s.key, a.key));
        }
        if a.value.as_deref() != s.value.as_deref().map(str::as_bytes) {
            diffs.push(format!("value {:?} arrived as {:?}", s.value, a.value));
        }
        let kept: Vec<_> = a
            .headers
            .iter()
            .filter(|(k, _)| k != headers::ORIGINAL_TIMESTAMP)
            .cloned()
            .collect();
        if kept != s.headers() {
            diffs.push(format!("headers {:?} arrived as {:?}", s.headers(), kept));
        }
        let original: Vec<_> = a
            .headers
            .iter()
            .filter(|(k, _)| k == headers::ORIGINAL_TIMESTAMP)
            .map(|(_, v)| v.clone())
            .collect();
        if original != [Some(s.timestamp_ms.to_string().into_bytes())] {
            diffs.push(format!(
                "{} should be once {}, is {original:?}",
                headers::ORIGINAL_TIMESTAMP,
                s.timestamp_ms
            ));
        }
        if !diffs.is_empty() {
            failures.push(format!("{what} arrived altered: {}", diffs.join("; ")));
        }
        let place = match s.key_bytes() {
            None => "keyless".to_string(),
            Some(key) => {
                let java = java_partition(key, target_partitions);
                if a.partition != java {
                    failures.push(format!(
                        "{what} arrived in p{}, the Java producer's partitioner picks p{java}",
                        a.partition
                    ));
                }
                format!("Java's p{java} of {target_partitions}")
            }
        };
        println!(
            "  {what} -> {target} p{}@{} ({place}) due={} arrived={} lateness={late:+} ms{}",
            a.partition,
            a.offset,
            s.due_ms,
            a.arrived_ms,
            if diffs.is_empty() { "" } else { " ALTERED" }
        );
    }

    let records_cancelled = settled_metric(
        &rig.router,
        "kafka_delay_router_records_cancelled_total",
        &[],
        1.0,
    )
    .await;
    let dead_letters = high_watermarks(rig.env.dlq(), 1)[&0];
    rig.router.shutdown().await.unwrap();

    lateness.sort_unstable();
    println!(
        "go client: {} of {expected} delivered, lateness max {} ms (p50 {} ms); cancelled {} \
         (router: {records_cancelled}); {dead_letters} dead letters; Go build {:.1} s, produce \
         {:.1} s, in all {:.1} s",
        lateness.len(),
        lateness.last().copied().unwrap_or(0),
        lateness.get(lateness.len() / 2).copied().unwrap_or(0),
        delayed.len() - expected,
        built.as_secs_f64(),
        produced.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for f in &failures {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} checks failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        records_cancelled, 1.0,
        "the router's records_cancelled_total"
    );
    assert_eq!(dead_letters, 0, "records dead-lettered");
}
