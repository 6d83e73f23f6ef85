//! The deployment files in deploy/ agree with the program they run: the
//! topics file in the Kubernetes ConfigMap loads, every environment variable
//! they set is one the command line reads, the stop timeouts outlast the
//! drain, and the alert rules name only metrics the router exports. (The
//! files' own syntax is checked by promtool, systemd-analyze and a Kubernetes
//! schema validator in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use clap::CommandFactory;
use kafka_delay_router::cli::Cli;
use kafka_delay_router::metrics::Metrics;
use kafka_delay_router::TopicsConfig;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The YAML documents of a manifest file.
fn documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Every environment variable any subcommand reads.
fn cli_env_vars() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().to_string());
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(&Cli::command(), &mut out);
    out
}

fn duration(s: &str) -> Duration {
    Duration::from_millis(kafka_delay_router::duration::parse_ms(s).unwrap())
}

#[test]
fn kubernetes_manifests_match_the_program() {
    let config = documents("deploy/kubernetes/configmap.yaml");
    let topics = kind(&config, "ConfigMap", "kafka-delay-router-topics")["data"]["topics.yaml"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("topics.yaml"), topics).unwrap();
    let loaded = TopicsConfig::load(dir.path().join("topics.yaml"))
        .unwrap_or_else(|e| panic!("the ConfigMap's topics.yaml: {e}"));
    assert!(!loaded.tiers.is_empty());

    let known = cli_env_vars();
    let env = kind(&config, "ConfigMap", "kafka-delay-router-env")["data"]
        .as_mapping()
        .unwrap();
    let mut set: Vec<String> = env
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let deploy = documents("deploy/kubernetes/deployment.yaml");
    let deployment = kind(&deploy, "Deployment", "kafka-delay-router");
    let pod = &deployment["spec"]["template"]["spec"];
    let job = documents("deploy/kubernetes/create-topics-job.yaml");
    let job_pod =
        &kind(&job, "Job", "kafka-delay-router-create-topics")["spec"]["template"]["spec"];
    for p in [pod, job_pod] {
        for var in p["containers"][0]["env"].as_sequence().unwrap() {
            set.push(var["name"].as_str().unwrap().to_string());
        }
    }
    for var in &set {
        assert!(
            known.contains(var),
            "{var} is read by no flag; known: {known:?}"
        );
    }

    let drain = duration(env["KDR_DRAIN_TIMEOUT"].as_str().unwrap());
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace >= drain + Duration::from_secs(15),
        "terminationGracePeriodSeconds {grace:?} leaves no room after the {drain:?} drain"
    );
    // The memory limit covers the byte budget (what the comments promise).
    let limit = pod["containers"][0]["resources"]["limits"]["memory"]
        .as_str()
        .unwrap();
    let limit_mib: u64 = limit.strip_suffix("Mi").unwrap().parse().unwrap();
    let budget_mib: u64 = env["KDR_MAX_HELD_BYTES"]
        .as_str()
        .unwrap()
        .strip_suffix("MiB")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        limit_mib > budget_mib + 20,
        "limit {limit} under the budget"
    );
}

#[test]
fn systemd_files_match_the_program() {
    let known = cli_env_vars();
    let env = read("deploy/systemd/router.env");
    let mut drain = None;
    for line in env.lines() {
        // Set and commented-out examples alike must name real variables.
        let line = line.trim_start_matches('#').trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_uppercase() || c == '_') || key.is_empty() {
            continue;
        }
        assert!(known.contains(key), "router.env: {key} is read by no flag");
        if key == "KDR_DRAIN_TIMEOUT" {
            drain = Some(duration(value));
        }
    }
    let drain = drain.expect("router.env sets KDR_DRAIN_TIMEOUT");
    let unit = read("deploy/systemd/kafka-delay-router.service");
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(duration)
        .expect("TimeoutStopSec");
    assert!(
        stop >= drain + Duration::from_secs(15),
        "TimeoutStopSec {stop:?} leaves no room after the {drain:?} drain"
    );
}

#[test]
fn alert_rules_name_exported_metrics() {
    let exported: BTreeSet<String> = Metrics::new().family_names().into_iter().collect();
    let rules = read("deploy/prometheus/alerts.yml");
    let mut rest = rules.as_str();
    let mut used = BTreeSet::new();
    while let Some(i) = rest.find("kafka_delay_router_") {
        // Skip recorded series (`job_tier:kafka_delay_router_...`).
        let recorded = rest[..i].ends_with(':');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !recorded {
            used.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    for name in &used {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(
            exported.contains(family),
            "alerts.yml uses {name}, which the router does not export"
        );
    }
    assert!(used.len() >= 15, "{used:?}");
}
