//! The operations kit against the real programs that consume it: a real
//! Prometheus server (Debian's `prometheus`, on loopback, a temporary data
//! folder, 1 s scrapes, the rules of deploy/prometheus/alerts.yml loaded)
//! scrapes a router routing good and bad records through the real broker.
//! The test asks Prometheus's HTTP API what an operator would read (delivery
//! rate, lateness quantiles, dead letters by reason, readiness), checks that
//! every recording and alerting rule evaluates without error, runs every
//! PromQL expression of the Grafana dashboard (its variables substituted as
//! Grafana would) and prints what they returned, and lints a raw scrape with
//! `promtool check metrics`.
//!
//! `cargo test --test prometheus -- --nocapture` prints the dashboard's values.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kafka_delay_router::headers::{DELIVER_AT, TARGET};
use serde_json::Value;

const JOB: &str = "kafka-delay-router";
/// What Grafana substitutes for `$__rate_interval` with the data source's
/// scrape interval set to this test's 1 s and a 1 s step: max(step + scrape,
/// 4 x scrape).
const RATE_INTERVAL: &str = "4s";

/// A program on PATH (or in /usr/bin, /usr/sbin), or a failure that says how to get it.
fn installed(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: this test needs Debian's Prometheus server and promtool \
                 (`apt-get install prometheus`; scripts/test.sh installs it)"
            )
        })
}

/// One plain HTTP GET on loopback; returns the status code and the body.
fn http_get(addr: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept-Encoding: identity\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_line = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of this test's own, killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str, rules: &Path) -> Prometheus {
        let binary = installed("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        // A free loopback port: bound, read and released (a race with another
        // program taking it in between shows as Prometheus failing to start).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut prom = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&prom.addr, "/-/ready") {
                break;
            }
            if let Some(status) = prom.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}): {}",
                    std::fs::read_to_string(prom._dir.path().join("prometheus.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        prom
    }

    /// GET /api/v1/<path>; the `data` of a successful answer, or Prometheus's error.
    fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let (status, body) = http_get(&self.addr, &format!("/api/v1/{path}?{}", query.join("&")))
            .map_err(|e| format!("request failed: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!(
                "HTTP {status}: {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or(&body)
            ))
        }
    }

    /// An instant query: label set -> value.
    fn query(&self, expr: &str) -> BTreeMap<String, f64> {
        let data = self
            .api("query", &[("query", expr.to_string())])
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (labels(&s["metric"]), num(&s["value"][1])))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn num(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a sample value: {v}"))
}

/// `{k="v", ...}` of a series, without its name.
fn labels(metric: &Value) -> String {
    let pairs: Vec<String> = metric
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// One query of the dashboard.
struct PanelQuery {
    title: String,
    legend: String,
    expr: String,
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/kafka-delay-router.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                title: panel["title"].as_str().unwrap().to_string(),
                legend: target["legendFormat"].as_str().unwrap_or("").to_string(),
                expr: target["expr"].as_str().unwrap().to_string(),
            });
        }
    }
    out
}

/// Grafana's value of each query variable (`label_values(metric, label)`) with
/// "All" selected: every value Prometheus knows, as a regex alternation with
/// regex characters escaped (as Grafana formats a multi-value variable).
fn variable_values(prom: &Prometheus, dashboard: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap();
        let query = var["query"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: unexpected query {query}"));
        let (metric, label) = inner.split_once(',').unwrap();
        let values = prom
            .api(
                &format!("label/{}/values", label.trim()),
                &[("match[]", metric.trim().to_string())],
            )
            .unwrap_or_else(|e| panic!("variable {name} ({query}): {e}"));
        let values: Vec<String> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap()
                    .chars()
                    .flat_map(|c| {
                        if "\\^$*+?.()|[]{}".contains(c) {
                            vec!['\\', '\\', c]
                        } else {
                            vec![c]
                        }
                    })
                    .collect()
            })
            .collect();
        assert!(
            !values.is_empty(),
            "variable ${name} ({query}) has no values"
        );
        println!("variable ${name} = {values:?}");
        out.insert(name.to_string(), format!("({})", values.join("|")));
    }
    out
}

fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut e = expr.replace("$__rate_interval", RATE_INTERVAL);
    e = e.replace("$__interval", "1s");
    // Longest names first, so `$tier` does not eat `$tiers`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        e = e
            .replace(&format!("${{{name}}}"), &vars[name])
            .replace(&format!("${name}"), &vars[name]);
    }
    assert!(!e.contains('$'), "unsubstituted variable in {e}");
    e
}

/// Raw record headers, as `produce` takes them.
type Headers<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

/// A range query's series: label set -> (timestamp, value) samples.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn range_query(prom: &Prometheus, expr: &str, start: f64, end: f64) -> Result<Series, String> {
    let data = prom.api(
        "query_range",
        &[
            ("query", expr.to_string()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", "1".to_string()),
        ],
    )?;
    Ok(data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let samples = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), num(&p[1])))
                .collect();
            (labels(&s["metric"]), samples)
        })
        .collect())
}

fn max_of(samples: &[(f64, f64)]) -> f64 {
    samples
        .iter()
        .map(|s| s.1)
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, f64::max)
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_router_and_runs_the_dashboard() {
    let started = Instant::now();
    // Fail before touching the broker if the programs are missing.
    installed("prometheus");
    let promtool = installed("promtool");

    let env = Env::new("prom", &[1_000, 5_000], 3, 1).await;
    let mut options = env.options();
    options.metrics_addr = Some("127.0.0.1:0".to_string());
    let router = kafka_delay_router::router::Router::start(env.config.clone(), options)
        .await
        .unwrap();
    let router_addr = router.metrics_addr.expect("metrics endpoint").to_string();
    wait_assigned(&router, 6.0).await;

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    let prom = Prometheus::start(&router_addr, &rules);
    let t0 = now_s();
    // Scraping before the first record, so rates start from the zero series.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom.query(&format!("up{{job=\"{JOB}\"}} == 1")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the router"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Good records: 120 due 0.3-3.3 s ahead (the 1s tier), 30 due 5.5-7 s ahead
    // (the 5s tier, then forwarded); bad ones, dead-lettered by reason.
    let target = env.targets[0].clone();
    let (short, long) = tokio::join!(
        produce_spread(&env, 120, "short", 300, 3_000),
        produce_spread(&env, 30, "long", 5_500, 1_500)
    );
    let good = short.len() + long.len();
    let p = producer();
    let missing = format!("{}-no-such-topic", env.prefix);
    let bad: [(&str, usize, Headers); 3] = [
        ("missing-target", 3, vec![]),
        (
            "invalid-deliver-at",
            2,
            vec![hdr(TARGET, target.as_bytes()), hdr(DELIVER_AT, b"soon")],
        ),
        ("target-not-found", 4, vec![hdr(TARGET, missing.as_bytes())]),
    ];
    for (_, n, headers) in &bad {
        for i in 0..*n {
            let value = format!("bad-{i}");
            produce(
                &p,
                env.tier(0),
                None,
                None,
                Some(value.as_bytes()),
                headers,
                None,
            )
            .await;
        }
    }
    let dead: usize = bad.iter().map(|b| b.1).sum();

    // Wait for the router to finish them all, then for two more scrapes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = metric(&router, "kafka_delay_router_records_delivered_total", &[]);
        let dead_lettered = metric(
            &router,
            "kafka_delay_router_records_dead_lettered_total",
            &[],
        );
        if delivered >= good as f64 && dead_lettered >= dead as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "router finished {delivered} of {good} deliveries and {dead_lettered} of {dead} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let t1 = now_s();

    // What an operator reads.
    let sel = format!("job=\"{JOB}\"");
    let delivered_total: f64 = prom
        .query(&format!(
            "sum(kafka_delay_router_records_delivered_total{{{sel}}})"
        ))
        .values()
        .sum();
    println!("delivered (Prometheus): {delivered_total} of {good} good records");
    assert_eq!(
        delivered_total, good as f64,
        "every good record delivered once"
    );
    let rate = prom.query(&format!(
        "sum(rate(kafka_delay_router_records_delivered_total{{{sel}}}[30s]))"
    ));
    let rate = rate.values().next().copied().unwrap_or(0.0);
    println!("delivered rate over 30 s: {rate:.2} records/s");
    assert!(rate > 0.0, "delivered rate {rate}");
    let mut quantiles = Vec::new();
    for (q, name) in [("0.5", "p50"), ("0.99", "p99")] {
        let v = prom.query(&format!(
            "histogram_quantile({q}, sum by (le) (rate(kafka_delay_router_delivery_lateness_seconds_bucket{{{sel}}}[1m])))"
        ));
        let v = *v.values().next().expect("lateness quantile");
        println!("lateness {name}: {:.1} ms", v * 1e3);
        quantiles.push(v);
    }
    // Above zero (the router never delivers early) and below the 1 s at which
    // the lateness alert fires; a healthy router on loopback is in the
    // milliseconds, with outliers to a few hundred on a busy 2-core machine.
    assert!(
        quantiles.iter().all(|v| *v > 0.0 && *v < 1.0),
        "lateness quantiles {quantiles:?}"
    );
    let by_reason = prom.query(&format!(
        "sum by (reason) (kafka_delay_router_records_dead_lettered_total{{{sel}}}) > 0"
    ));
    println!("dead letters by reason: {by_reason:?}");
    let expected: BTreeMap<String, f64> = bad
        .iter()
        .map(|(reason, n, _)| (format!("{{reason=\"{reason}\"}}"), *n as f64))
        .collect();
    assert_eq!(by_reason, expected, "dead letters by reason");
    let ready = prom.query(&format!("kafka_delay_router_ready{{{sel}}}"));
    println!("ready: {ready:?}");
    assert_eq!(ready.values().copied().collect::<Vec<_>>(), [1.0]);

    // The rules of alerts.yml run on the real series without an error, and
    // the recorded delivery rate is there.
    let groups = prom.api("rules", &[]).unwrap();
    let mut rules_seen = 0;
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            rules_seen += 1;
            assert_eq!(
                rule["health"], "ok",
                "rule {} failed: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    assert!(rules_seen >= 20, "{rules_seen} rules loaded");
    let recorded = prom.query("job_tier:kafka_delay_router_records_delivered:rate5m > 0");
    println!("recorded job_tier:kafka_delay_router_records_delivered:rate5m: {recorded:?}");
    assert!(!recorded.is_empty(), "recording rule has no data");
    let firing = prom.api("alerts", &[]).unwrap();
    let firing: Vec<String> = firing["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"]["alertname"].to_string())
        .collect();
    println!("alerts firing: {firing:?}");
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy router: {firing:?}"
    );

    // Every query of the dashboard, over the test's time range.
    let dashboard = dashboard();
    let vars = variable_values(&prom, &dashboard);
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 10);
    let core = [
        "Delivered records/s",
        "Delivery lateness",
        "Dead-lettered records/s",
        "Consumer lag",
        "Records held",
    ];
    let mut core_with_data = BTreeSet::new();
    let mut errors = Vec::new();
    println!(
        "dashboard queries over {:.0} s ($__rate_interval = {RATE_INTERVAL}): last and max value per series",
        t1 - t0
    );
    for q in &queries {
        let expr = substitute(&q.expr, &vars);
        match range_query(&prom, &expr, t0, t1) {
            Err(e) => errors.push(format!("{} [{}]: {expr}: {e}", q.title, q.legend)),
            Ok(series) => {
                println!("{} [{}]", q.title, q.legend);
                for (labels, samples) in &series {
                    let last = samples.last().map(|s| s.1).unwrap_or(f64::NAN);
                    println!("    {labels} last {last:.4} max {:.4}", max_of(samples));
                }
                if series.is_empty() {
                    println!("    (no data)");
                }
                if let Some(c) = core.iter().find(|c| q.title.starts_with(**c)) {
                    if series.values().any(|s| s.iter().any(|p| !p.1.is_nan())) {
                        core_with_data.insert(*c);
                    }
                }
                check_panel(q, &series, &expected.keys().cloned().collect());
            }
        }
    }
    assert!(errors.is_empty(), "dashboard queries failed: {errors:#?}");
    assert_eq!(
        core_with_data,
        core.into_iter().collect(),
        "core panels without data"
    );

    // A raw scrape passes promtool's linter.
    let (status, scrape) = http_get(&router_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    println!("promtool check metrics: {} {}", lint.status, said.trim());
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool check metrics on a scrape: {said}"
    );

    router.shutdown().await.unwrap();
    println!("test took {:.1} s", started.elapsed().as_secs_f64());
}

/// What the main panels must show after the run.
fn check_panel(q: &PanelQuery, series: &Series, reasons_expected: &BTreeSet<String>) {
    let max = |s: &Series| {
        s.values()
            .map(|v| max_of(v))
            .fold(f64::NEG_INFINITY, f64::max)
    };
    if q.title.starts_with("Delivered records/s") {
        assert!(max(series) > 0.0, "{}: no deliveries seen", q.title);
    } else if q.title.starts_with("Delivery lateness") && q.legend == "p99" {
        let m = max(series);
        assert!(m > 0.0 && m < 1.0, "{}: p99 lateness {m} s", q.title);
    } else if q.title.starts_with("Dead-lettered records/s") {
        let reasons: BTreeSet<String> = series
            .iter()
            .filter(|(_, v)| max_of(v) > 0.0)
            .map(|(l, _)| l.clone())
            .collect();
        assert_eq!(
            &reasons, reasons_expected,
            "{}: reasons with a rate",
            q.title
        );
    } else if q.title.starts_with("Records held") {
        assert!(
            max(series) > 0.0,
            "{}: nothing held while records waited",
            q.title
        );
    } else if q.title.starts_with("Forwarded records/s") {
        assert!(max(series) > 0.0, "{}: no forwards seen", q.title);
    }
}
