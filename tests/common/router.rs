//! The router under test: its metrics in process, and the binary as a child
//! process (started, stopped with SIGTERM, killed).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_delay_router::headers;
use kafka_delay_router::metrics::Metrics;
use kafka_delay_router::router::Router;

use super::{bootstrap, Collector, Env, Received};

/// A metric sample from the router's registry, summed over label sets that contain `labels`.
pub fn metric(router: &Router, family: &str, labels: &[(&str, &str)]) -> f64 {
    metric_of(&router.metrics, family, labels)
}

/// [`metric`] once it reaches `expected`, or its value after 5 s. A counter
/// the router moves when the broker acknowledges a write can trail a reader
/// that already saw the record: Kafka answers a waiting fetch as soon as the
/// record is written, and the acknowledgement reaches the router on its own
/// path.
pub async fn settled_metric(
    router: &Router,
    family: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(router, family, labels);
        if v == expected || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`metric`] from a registry kept after its router was moved or stopped.
pub fn metric_of(metrics: &Metrics, family: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .gather()
        .iter()
        .filter(|f| f.name() == family)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// `delay-target` plus an optional `delay-deliver-at`.
pub fn route_headers(target: &str, deliver_at: Option<i64>) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![(headers::TARGET.to_string(), target.as_bytes().to_vec())];
    if let Some(at) = deliver_at {
        v.push((headers::DELIVER_AT.to_string(), at.to_string().into_bytes()));
    }
    v
}

/// Waits until the router owns at least `partitions` partitions.
pub async fn wait_assigned(router: &Router, partitions: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(router, "kafka_delay_router_partitions_assigned", &[]) < partitions {
        assert!(
            Instant::now() < deadline,
            "router was not assigned {partitions} partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s) until routers `a` and `b` both own partitions and
/// together all `total`; returns how many each owns.
pub async fn wait_split(a: &Router, b: &Router, total: f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (na, nb) = (
            metric(a, "kafka_delay_router_partitions_assigned", &[]),
            metric(b, "kafka_delay_router_partitions_assigned", &[]),
        );
        if na > 0.0 && nb > 0.0 && na + nb == total {
            return (na, nb);
        }
        assert!(
            Instant::now() < deadline,
            "partitions not split: {na} + {nb}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn hdr<'a>(k: &'a str, v: &'a [u8]) -> (&'a str, Option<&'a [u8]>) {
    (k, Some(v))
}

/// The router binary's `--log` filter: KDR_TEST_ROUTER_LOG (e.g.
/// `info,kafka_delay_router=debug`), or info. Its log is `router.log` beside
/// the test's topics file.
pub fn router_log_level() -> String {
    std::env::var("KDR_TEST_ROUTER_LOG").unwrap_or_else(|_| "info".to_string())
}

pub fn spawn_router(env: &Env) -> Child {
    spawn_router_with(env, &[])
}

pub fn spawn_router_with(env: &Env, extra: &[&str]) -> Child {
    spawn_router_at(env, "127.0.0.1:0", extra)
}

/// [`spawn_router_with`], serving its metrics on `metrics_addr`.
pub fn spawn_router_at(env: &Env, metrics_addr: &str, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.config_path.with_file_name("router.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kafka-delay-router"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .args([
            "--bootstrap-servers",
            &bootstrap(),
            "--group-id",
            &env.group,
            "--metrics-addr",
            metrics_addr,
        ])
        .args(["--drain-timeout", "5s", "--log", &router_log_level()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "router did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Collects `n` distinct values (or until `timeout`) while standing in for
/// the router's supervisor (systemd's `Restart=on-failure`): a router that
/// exits with an error is started again with `extra` one second later.
/// Returns what arrived and how many restarts it took.
pub fn collect_supervised(
    col: &mut Collector,
    env: &Env,
    extra: &[&str],
    router: &mut Child,
    n: usize,
    timeout: Duration,
) -> (Vec<Received>, usize) {
    let deadline = Instant::now() + timeout;
    let mut restarts = 0;
    loop {
        col.settle(Duration::from_millis(300));
        let distinct: std::collections::HashSet<String> =
            col.seen.iter().map(|r| r.value_str()).collect();
        if distinct.len() >= n || Instant::now() >= deadline {
            return (col.seen.clone(), restarts);
        }
        if let Some(status) = router.try_wait().unwrap() {
            assert!(!status.success(), "the router exited on its own");
            std::thread::sleep(Duration::from_secs(1));
            *router = spawn_router_with(env, extra);
            restarts += 1;
        }
    }
}
