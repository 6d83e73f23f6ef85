//! The router's Prometheus metrics, all in one registry of its own, named
//! `kafka_delay_router_*`, labelled by tier topic. Durations are seconds.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backlog::Backlog;

const NS: &str = "kafka_delay_router";

/// Buckets for delivery lateness: fine below 50 ms, where a healthy router lives.
const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    3600.0,
];

/// The `reason` labels of `cancellations_refused_total`, created at start so
/// every series exists before its first refusal: the codes of
/// `cancel::Refusal` (a test in `cancel` keeps the two lists equal; written
/// out here so that metrics does not depend on cancel, which depends on it).
pub const CANCEL_REFUSALS: [&str; 4] = [
    "missing-id",
    "id-too-long",
    "invalid-until",
    "until-too-far",
];

/// Every metric the router exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry every metric below is registered in (and only those).
    pub registry: Registry,
    /// `records_read_total{tier}`: records read from tier topics.
    pub records_read: IntCounterVec,
    /// `task_wakeups_total{tier}`: turns of the partition tasks' loops.
    pub task_wakeups: IntCounterVec,
    /// `records_forwarded_total{tier}`: records forwarded to a later tier (acknowledged).
    pub records_forwarded: IntCounterVec,
    /// `records_delivered_total{tier}`: records delivered to their target topic (acknowledged).
    pub records_delivered: IntCounterVec,
    /// `records_dead_lettered_total{tier,reason}`: records written to the dead-letter topic.
    pub records_dead_lettered: IntCounterVec,
    /// `records_cancelled_total{tier}`: records with a cancelled `delay-id` dropped.
    pub records_cancelled: IntCounterVec,
    /// `delivery_lateness_seconds{tier}`: acknowledgement of a delivery minus its due time.
    pub delivery_lateness: HistogramVec,
    /// `records_held{tier}`: records held in memory (heads, remainders, in flight).
    pub records_held: IntGaugeVec,
    /// `partitions_assigned{tier}`: tier partitions assigned to this router.
    pub partitions_assigned: IntGaugeVec,
    /// `partitions_paused{tier}`: tier partitions paused until their head is due.
    pub partitions_paused: IntGaugeVec,
    /// `consumer_lag{tier}`: records in assigned partitions not yet finished.
    pub consumer_lag: IntGaugeVec,
    /// `producer_errors_total{error}`: failed produce attempts.
    pub producer_errors: IntCounterVec,
    /// `consumer_errors_total{error}`: consumer errors.
    pub consumer_errors: IntCounterVec,
    /// `records_unreadable_total{tier}`: offsets the consumer skipped after an error.
    pub records_unreadable: IntCounterVec,
    /// `partitions_commit_held{tier}`: partitions whose commit stays before skipped records.
    pub partitions_commit_held: IntGaugeVec,
    /// `rebalances_total{kind}`: consumer group rebalances.
    pub rebalances: IntCounterVec,
    /// `transactions_total{tier,outcome}`: exactly-once transactions ended, by outcome.
    pub transactions: IntCounterVec,
    /// `producer_replacements_total`: times the shared producer was replaced after a fatal error.
    pub producer_replacements: IntCounter,
    /// `ready`: 1 while the router is running and not draining.
    pub ready: IntGauge,
    /// `held_bytes`: bytes of the records held in memory, all tiers.
    pub held_bytes: IntGauge,
    /// `held_bytes_limit`: the byte budget for held records (`--max-held-bytes`).
    pub held_bytes_limit: IntGauge,
    /// `dead_letters_blocked`: dead letters the broker refuses, retried until written.
    pub dead_letters_blocked: IntGauge,
    /// `head_due_in_seconds{tier}`: seconds until the next held record must be acted on.
    pub head_due_in: GaugeVec,
    /// `head_overdue_seconds{tier}`: how long the oldest due, unrouted record has been due.
    pub head_overdue: GaugeVec,
    /// The partition tasks' head times behind `head_due_in` and `head_overdue`.
    pub backlog: Arc<Backlog>,
    /// The tiers given to [`Metrics::init_tier`].
    tiers: Arc<Mutex<Vec<String>>>,
    /// `cancellations_outstanding`: cancellations held in memory.
    pub cancellations_outstanding: IntGauge,
    /// `cancellations_limit`: the most cancellations held in memory (`--max-cancellations`).
    pub cancellations_limit: IntGauge,
    /// `cancellations_refused_total{reason}`: malformed cancel-topic records, by reason.
    pub cancellations_refused: IntCounterVec,
    /// `cancel_view_lag_seconds`: now minus the time the cancel view is fresh up to.
    pub cancel_view_lag: Gauge,
    /// The cancel view's start time and fresh-until time, behind `cancel_view_lag`.
    cancel_view: Arc<OnceLock<(i64, Arc<AtomicI64>)>>,
}

impl Metrics {
    /// Creates and registers every metric in a new registry of its own.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels)
                .expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels)
                .expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let records_read = counter(
            "records_read_total",
            "Records read from tier topics.",
            &["tier"],
        );
        let task_wakeups = counter(
            "task_wakeups_total",
            "Turns of the partition tasks' loops (a record, an acknowledgement, a timer or a control message woke one). Far above the rate of records read plus acknowledged, a task is spinning.",
            &["tier"],
        );
        let records_forwarded = counter(
            "records_forwarded_total",
            "Records forwarded from a tier to a later tier (acknowledged by the broker).",
            &["tier"],
        );
        let records_delivered = counter(
            "records_delivered_total",
            "Records delivered to their target topic (acknowledged by the broker).",
            &["tier"],
        );
        let records_dead_lettered = counter(
            "records_dead_lettered_total",
            "Records written to the dead-letter topic, by reason.",
            &["tier", "reason"],
        );
        let records_cancelled = counter(
            "records_cancelled_total",
            "Records with a cancelled delay-id dropped instead of forwarded or delivered (offset committed).",
            &["tier"],
        );
        let delivery_lateness = HistogramVec::new(
            HistogramOpts::new(
                "delivery_lateness_seconds",
                "Broker acknowledgement of a delivered record minus its due time.",
            )
            .namespace(NS)
            .buckets(LATENESS_BUCKETS.to_vec()),
            &["tier"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_lateness.clone()))
            .expect("unique metric");
        let records_held = gauge(
            "records_held",
            "Records held in memory: waiting heads, sub-tier remainders and records in flight.",
            &["tier"],
        );
        let partitions_assigned = gauge(
            "partitions_assigned",
            "Tier partitions assigned to this router.",
            &["tier"],
        );
        let partitions_paused = gauge(
            "partitions_paused",
            "Tier partitions paused because their head record is not due yet.",
            &["tier"],
        );
        let consumer_lag = gauge(
            "consumer_lag",
            "Records in assigned tier partitions not yet finished (high watermark minus committable offset).",
            &["tier"],
        );
        let producer_errors = counter(
            "producer_errors_total",
            "Failed produce attempts, by error; transient ones are retried.",
            &["error"],
        );
        let consumer_errors = counter(
            "consumer_errors_total",
            "Consumer errors, by error.",
            &["error"],
        );
        let records_unreadable = counter(
            "records_unreadable_total",
            "Offsets the consumer skipped after an error (corrupt or undecompressible batch, offset reset): never routed.",
            &["tier"],
        );
        let partitions_commit_held = gauge(
            "partitions_commit_held",
            "Tier partitions whose commit stays before records the consumer skipped (see --skip-unreadable).",
            &["tier"],
        );
        let rebalances = counter(
            "rebalances_total",
            "Consumer group rebalances, by kind.",
            &["kind"],
        );
        let transactions = counter(
            "transactions_total",
            "Exactly-once mode: transactions ended, by outcome (committed, aborted, producer_replaced after the producer broke or a commit's outcome stayed unknown, or fenced by a newer owner of the partition, which ends the task).",
            &["tier", "outcome"],
        );
        let producer_replacements = IntCounter::with_opts(
            Opts::new(
                "producer_replacements_total",
                "At-least-once mode: times the shared producer was replaced after a fatal error (fenced, or broken idempotence).",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        registry
            .register(Box::new(producer_replacements.clone()))
            .expect("unique metric");
        let plain_gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let held_bytes = plain_gauge(
            "held_bytes",
            "Bytes of the records the router holds in memory (read and not yet acknowledged), all tiers.",
        );
        let held_bytes_limit = plain_gauge(
            "held_bytes_limit",
            "The byte budget for held records (--max-held-bytes): past it, partitions read only their head.",
        );
        let dead_letters_blocked = plain_gauge(
            "dead_letters_blocked",
            "Dead letters the broker refuses (dead-letter topic missing, unauthorised, ...), retried until written; /readyz answers 503 while any.",
        );
        let ready = IntGauge::with_opts(
            Opts::new("ready", "1 while the router is running and not draining.").namespace(NS),
        )
        .expect("valid metric");
        registry
            .register(Box::new(ready.clone()))
            .expect("unique metric");
        let seconds = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help).namespace(NS), &["tier"])
                .expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let head_due_in = seconds(
            "head_due_in_seconds",
            "Seconds until the next record held by this router's partitions of the tier must be acted on (0: one is due); no sample when none waits.",
        );
        let head_overdue = seconds(
            "head_overdue_seconds",
            "Seconds the oldest due and not yet routed record of this router's partitions of the tier has been due; 0 when the router keeps up.",
        );
        let backlog = Arc::new(Backlog::new(head_due_in.clone(), head_overdue.clone()));
        let cancellations_outstanding = plain_gauge(
            "cancellations_outstanding",
            "Cancellations held in memory (read from the cancel topic and not yet expired).",
        );
        let cancellations_limit = plain_gauge(
            "cancellations_limit",
            "The most cancellations held in memory (--max-cancellations); at it, reading the cancel topic waits for expiries.",
        );
        let cancellations_refused = counter(
            "cancellations_refused_total",
            "Cancel-topic records refused as malformed, by reason (missing-id, id-too-long, invalid-until, until-too-far).",
            &["reason"],
        );
        for code in CANCEL_REFUSALS {
            cancellations_refused.with_label_values(&[code]);
        }
        let cancel_view_lag = Gauge::with_opts(
            Opts::new(
                "cancel_view_lag_seconds",
                "Now minus the time up to which every acknowledged cancellation has been read; records with a delay-id due later than that wait. 0 without a cancel topic.",
            )
            .namespace(NS),
        )
        .expect("valid metric");
        registry
            .register(Box::new(cancel_view_lag.clone()))
            .expect("unique metric");
        Metrics {
            cancellations_outstanding,
            cancellations_limit,
            cancellations_refused,
            cancel_view_lag,
            cancel_view: Arc::new(OnceLock::new()),
            head_due_in,
            head_overdue,
            backlog,
            tiers: Arc::new(Mutex::new(Vec::new())),
            registry,
            records_read,
            task_wakeups,
            records_forwarded,
            records_delivered,
            records_dead_lettered,
            records_cancelled,
            delivery_lateness,
            records_held,
            partitions_assigned,
            partitions_paused,
            consumer_lag,
            producer_errors,
            consumer_errors,
            records_unreadable,
            partitions_commit_held,
            rebalances,
            transactions,
            producer_replacements,
            ready,
            held_bytes,
            held_bytes_limit,
            dead_letters_blocked,
        }
    }

    /// Creates the per-tier series at zero so dashboards show them before the first record.
    pub fn init_tier(&self, tier: &str) {
        self.records_read.with_label_values(&[tier]);
        self.task_wakeups.with_label_values(&[tier]);
        self.records_forwarded.with_label_values(&[tier]);
        self.records_delivered.with_label_values(&[tier]);
        self.delivery_lateness.with_label_values(&[tier]);
        self.records_held.with_label_values(&[tier]);
        self.partitions_assigned.with_label_values(&[tier]);
        self.partitions_paused.with_label_values(&[tier]);
        self.consumer_lag.with_label_values(&[tier]);
        self.records_unreadable.with_label_values(&[tier]);
        self.records_cancelled.with_label_values(&[tier]);
        self.partitions_commit_held.with_label_values(&[tier]);
        self.head_overdue.with_label_values(&[tier]);
        let mut tiers = self.tiers.lock().expect("tiers lock");
        if !tiers.iter().any(|t| t == tier) {
            tiers.push(tier.to_string());
        }
        for r in crate::dead_letter::Reason::ALL {
            self.records_dead_lettered
                .with_label_values(&[tier, r.code()]);
        }
    }

    /// Every metric now, the head gauges worked out from the clock ([`Backlog::refresh`]).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let tiers = self.tiers.lock().expect("tiers lock").clone();
        let now = crate::kafka::now_ms();
        self.backlog.refresh(&tiers, now);
        if let Some((started, fresh)) = self.cancel_view.get() {
            let since = fresh.load(Ordering::Acquire).max(*started);
            self.cancel_view_lag
                .set(now.saturating_sub(since).max(0) as f64 / 1000.0);
        }
        self.registry.gather()
    }

    /// Ties `cancel_view_lag_seconds` to a cancel view started at `started_ms`
    /// whose fresh-until time is `fresh_until`; the first view given stays.
    pub fn watch_cancel_view(&self, started_ms: i64, fresh_until: Arc<AtomicI64>) {
        let _ = self.cancel_view.set((started_ms, fresh_until));
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }

    /// Every metric family the router registers (whether or not it has samples
    /// yet), for checking dashboards against what is exported.
    pub fn family_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 28] = [
            &self.records_read,
            &self.task_wakeups,
            &self.records_forwarded,
            &self.records_delivered,
            &self.records_dead_lettered,
            &self.records_cancelled,
            &self.delivery_lateness,
            &self.records_held,
            &self.partitions_assigned,
            &self.partitions_paused,
            &self.consumer_lag,
            &self.producer_errors,
            &self.consumer_errors,
            &self.rebalances,
            &self.transactions,
            &self.producer_replacements,
            &self.ready,
            &self.held_bytes,
            &self.held_bytes_limit,
            &self.dead_letters_blocked,
            &self.records_unreadable,
            &self.partitions_commit_held,
            &self.head_due_in,
            &self.head_overdue,
            &self.cancellations_outstanding,
            &self.cancellations_limit,
            &self.cancellations_refused,
            &self.cancel_view_lag,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A gauge contribution that one owner keeps up to date and takes back when dropped,
/// so per-partition tasks can add to per-tier gauges without shared state.
pub struct GaugeShare {
    gauge: IntGauge,
    current: i64,
}

impl GaugeShare {
    /// A share of `gauge`, starting at zero.
    pub fn new(gauge: IntGauge) -> Self {
        GaugeShare { gauge, current: 0 }
    }

    /// Sets this share to `value`, adding the difference to the gauge.
    pub fn set(&mut self, value: i64) {
        if value != self.current {
            self.gauge.add(value - self.current);
            self.current = value;
        }
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.sub(self.current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_families() {
        let m = Metrics::new();
        m.init_tier("delay-1s");
        m.records_delivered.with_label_values(&["delay-1s"]).inc();
        let text = m.render();
        assert!(
            text.contains("kafka_delay_router_records_delivered_total{tier=\"delay-1s\"} 1"),
            "{text}"
        );
        assert!(text.contains("kafka_delay_router_delivery_lateness_seconds_bucket"));
        let names = m.family_names();
        assert_eq!(names.len(), 28);
        assert!(text.contains("kafka_delay_router_head_overdue_seconds{tier=\"delay-1s\"} 0"));
        assert!(names.iter().all(|n| n.starts_with("kafka_delay_router_")));
        assert!(names.contains(&"kafka_delay_router_rebalances_total".to_string()));
        assert!(names.contains(&"kafka_delay_router_transactions_total".to_string()));
    }

    #[test]
    fn gauge_shares_add_up_and_leave_on_drop() {
        let g = IntGauge::new("g", "g").unwrap();
        let mut a = GaugeShare::new(g.clone());
        let mut b = GaugeShare::new(g.clone());
        a.set(3);
        b.set(4);
        a.set(1);
        assert_eq!(g.get(), 5);
        drop(b);
        assert_eq!(g.get(), 1);
        drop(a);
        assert_eq!(g.get(), 0);
    }
}
