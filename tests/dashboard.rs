//! The shipped Grafana dashboard only queries metrics the router really exports.

use std::collections::BTreeSet;

use kafka_delay_router::metrics::Metrics;

/// Every `kafka_delay_router_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("kafka_delay_router_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/kafka-delay-router.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported: BTreeSet<String> = Metrics::new().family_names().into_iter().collect();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "the dashboard has its queries");
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(
            !names.is_empty() || !expr.contains("kafka"),
            "query without a router metric: {expr}"
        );
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(&name)
                .to_string();
            assert!(
                exported.contains(&family),
                "{name} in {expr:?} is not exported; exported: {exported:?}"
            );
            used.insert(family);
        }
    }
    // And every exported metric is on the dashboard.
    assert_eq!(used, exported, "metrics missing from the dashboard");
}

#[test]
fn names_are_extracted_from_promql() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(kafka_delay_router_delivery_lateness_seconds_bucket{tier=~\"a\"}[5m])))"),
        ["kafka_delay_router_delivery_lateness_seconds_bucket"]
    );
    assert_eq!(metric_names("a / b"), Vec::<String>::new());
}
