//! The alert rules against the run: the scraped series fed to `promtool test
//! rules` with deploy/prometheus/alerts.yml, and what `ALERTS` said.

use std::collections::{BTreeMap, BTreeSet};

use crate::judge::Failover;
use crate::observe::Observed;

/// A duration as promtool prints it (`1m4s`, `45s`, `1h2m3s`) in seconds.
fn promtool_secs(text: &str) -> Option<i64> {
    let (mut total, mut number) = (0i64, String::new());
    for c in text.trim().chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: i64 = number.parse().ok()?;
                number.clear();
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
            }
            _ => return None,
        }
    }
    number.is_empty().then_some(total)
}

/// `alert name -> for` from deploy/prometheus/alerts.yml.
fn alert_fors(rules: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in rules.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("- alert:") {
            current = Some(name.trim().to_string());
            out.insert(name.trim().to_string(), "none".to_string());
        } else if let (Some(f), Some(name)) = (l.strip_prefix("for:"), &current) {
            out.insert(name.clone(), f.trim().to_string());
        }
    }
    out
}

/// Feeds the scrapes (on a 1 s grid from the first) to `promtool test rules`
/// with the repository's alert rules and asks, for each `(label, eval time,
/// expression)`, what `ALERTS` said; returns label -> alert/state strings, or
/// why it could not run.
fn promtool_alerts(
    obs: &Observed,
    queries: &[(String, i64, String)],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("promtool is not installed (apt-get install prometheus)")?;
    let t0 = obs.scrapes.first().ok_or("no scrapes")?.0;
    let t_end = obs.scrapes.last().unwrap().0;
    let steps = ((t_end - t0) / 1000) as usize;
    let keys: BTreeSet<&String> = obs.scrapes.iter().flat_map(|s| s.1.keys()).collect();
    let mut yaml = String::new();
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    yaml.push_str(&format!(
        "rule_files: ['{}']\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n",
        rules.display()
    ));
    let job = "job=\"kafka-delay-router\",instance=\"router\"";
    yaml.push_str(&format!(
        "      - series: 'up{{{job}}}'\n        values: '1x{steps}'\n"
    ));
    for key in keys {
        let series = match key.split_once('{') {
            Some((name, rest)) if rest.starts_with('}') => format!("{name}{{{job}}}"),
            Some((name, rest)) => format!("{name}{{{job},{rest}"),
            None => format!("{key}{{{job}}}"),
        };
        let mut values = Vec::with_capacity(steps + 1);
        let mut j = 0;
        for k in 0..=steps {
            let at = t0 + k as i64 * 1000;
            while j + 1 < obs.scrapes.len() && obs.scrapes[j + 1].0 <= at {
                j += 1;
            }
            let (t, s) = &obs.scrapes[j];
            match s.get(key) {
                Some(v) if *t <= at && at - *t < 2_000 && v.is_finite() => {
                    values.push(format!("{v}"))
                }
                _ => values.push("_".into()),
            }
        }
        yaml.push_str(&format!(
            "      - series: '{series}'\n        values: '{}'\n",
            values.join(" ")
        ));
    }
    yaml.push_str("    promql_expr_test:\n");
    for (_, at, expr) in queries {
        let secs = ((at - t0) / 1000).clamp(0, steps as i64);
        yaml.push_str(&format!(
            "      - expr: '{expr}'\n        eval_time: {secs}s\n        exp_samples: []\n"
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("failover_alerts_test.yml");
    std::fs::write(&file, &yaml).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // An expression that returned nothing passed (exp_samples: []); one that
    // returned alerts failed, and promtool printed what it got.
    let mut answers: BTreeMap<String, Vec<String>> =
        queries.iter().map(|q| (q.0.clone(), Vec::new())).collect();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("expr: ") {
            let secs: Option<i64> = rest
                .split("time: ")
                .nth(1)
                .and_then(|t| t.split(',').next())
                .and_then(promtool_secs);
            let expr = rest
                .split("\", time")
                .next()
                .unwrap_or("")
                .trim_matches('"');
            current = queries.iter().position(|(_, at, e)| {
                e == expr && Some(((at - t0) / 1000).clamp(0, steps as i64)) == secs
            });
        } else if let (Some(got), Some(i)) = (line.trim().strip_prefix("got: "), current) {
            for sample in got.split('{').skip(1) {
                let label = |name: &str| {
                    sample
                        .split(&format!("{name}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap_or("?")
                        .to_string()
                };
                let tier = label("tier");
                let error = label("error");
                let mut s = format!("{} ({})", label("alertname"), label("alertstate"));
                if error != "?" {
                    s.push_str(&format!(" error={error}"));
                }
                if tier != "?" {
                    s.push_str(&format!(" tier={tier}"));
                }
                answers.get_mut(&queries[i].0).unwrap().push(s);
            }
        }
    }
    if !out.status.success() && answers.values().all(|v| v.is_empty()) {
        return Err(format!("promtool failed: {text}"));
    }
    Ok(answers)
}

/// What an alert waits for (`for:`), by name.
type Fors = BTreeMap<String, String>;

/// The alert rules over the run: each alert's `for:`, and what `ALERTS` said
/// a second before each kill, over each failover (to 5 s after every
/// partition was fully replicated again), and, firing, over the whole run.
pub fn failover_alerts(
    failovers: &[Failover],
    obs: &Observed,
) -> (Fors, Result<BTreeMap<String, Vec<String>>, String>) {
    let alert_rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    let fors = alert_fors(&alert_rules);
    let mut queries = Vec::new();
    for (i, f) in failovers.iter().enumerate() {
        queries.push((
            format!("before {}", i + 1),
            f.kill_at - 1_000,
            "ALERTS".to_string(),
        ));
        let end = f.healthy_at + 5_000;
        queries.push((
            format!("during {}", i + 1),
            end,
            format!("max_over_time(ALERTS[{}s])", (end - f.kill_at) / 1000 + 1),
        ));
    }
    let run_secs =
        (obs.scrapes.last().map_or(0, |s| s.0) - obs.scrapes.first().map_or(0, |s| s.0)) / 1000 + 1;
    queries.push((
        "whole run, firing".to_string(),
        obs.scrapes.last().map_or(0, |s| s.0),
        format!("max_over_time(ALERTS{{alertstate=\"firing\"}}[{run_secs}s])"),
    ));
    let alerts = promtool_alerts(obs, &queries);
    (fors, alerts)
}

/// The alerts pending or firing over failover `i` (from 0), each with its
/// `for:` and whether it was new since a second before the kill.
pub fn print_failover_alerts(
    a: &BTreeMap<String, Vec<String>>,
    i: usize,
    fors: &Fors,
    prefix: &str,
) {
    let before: BTreeSet<&String> = a[&format!("before {}", i + 1)].iter().collect();
    let during: Vec<String> = a[&format!("during {}", i + 1)]
        .iter()
        .map(|s| {
            let name = s.split(' ').next().unwrap_or("");
            let new = if before.contains(s) { "" } else { "new, " };
            format!(
                "{} [{new}for: {}]",
                s.replace(&format!("{prefix}-"), ""),
                fors.get(name).map_or("?", |f| f.as_str())
            )
        })
        .collect();
    println!(
        "  alerts (promtool, ALERTS over the failover): {}",
        if during.is_empty() {
            "none pending or firing".to_string()
        } else {
            during.join("; ")
        }
    );
}

/// The alerts firing at any time in the run, or why they were not evaluated.
pub fn print_run_alerts(alerts: &Result<BTreeMap<String, Vec<String>>, String>, prefix: &str) {
    match alerts {
        Ok(a) => println!(
            "\nalerts firing at any time in the run (promtool): {}",
            if a["whole run, firing"].is_empty() {
                "none".to_string()
            } else {
                a["whole run, firing"]
                    .join("; ")
                    .replace(&format!("{prefix}-"), "")
            }
        ),
        Err(e) => println!("\nalerts not evaluated: {e}"),
    }
}
