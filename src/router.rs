//! The router service: checks the topics exist, joins the consumer group on
//! the selected tiers, runs the coordinator and the metrics endpoint, and on
//! cancellation drains, commits, leaves the group and flushes the producer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cancel::Cancellations;
use crate::config::TopicsConfig;
use crate::consumer::{spawn_poll_thread, GroupEvent, RouterContext, TierConsumer};
use crate::coordinator::Coordinator;
use crate::error::{Error, Result};
use crate::exactly_once::{self, ExactlyOnce};
use crate::http;
use crate::kafka::{Guarded, KafkaSettings, UnsafeOverride, ADMIN_TIMEOUT};
use crate::membership::GroupProtocol;
use crate::metrics::Metrics;
use crate::partition::{ByteBudget, Limits, Shared};
use crate::sink::Sink;

/// How a router instance runs.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Client settings for every consumer and producer the router makes.
    pub kafka: KafkaSettings,
    /// The consumer group shared by every router instance.
    pub group_id: String,
    /// Tiers to consume, by delay or topic; empty means all.
    pub tiers: Vec<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None` serves nothing.
    pub metrics_addr: Option<String>,
    /// How long shutdown waits for in-flight records and due held records.
    pub drain_timeout: Duration,
    /// How long a revoke waits for its partitions' tasks to drain.
    pub revoke_timeout: Duration,
    /// The partition tasks' limits (in flight, held, backoff, pacing).
    pub limits: Limits,
    /// `Some` runs in exactly-once mode (see [`crate::exactly_once`]).
    pub exactly_once: Option<ExactlyOnce>,
    /// Limits of the cancel view (`--max-cancellations`).
    pub cancel_limits: crate::cancel::CancelLimits,
    /// The consumer group protocol (`--group-protocol`).
    pub group_protocol: GroupProtocol,
}

impl RouterOptions {
    /// The defaults for everything but the client settings: group
    /// `kafka-delay-router`, every tier, no metrics endpoint, 10 s drain and
    /// revoke timeouts, default limits, at-least-once, the classic group protocol.
    pub fn new(kafka: KafkaSettings) -> Self {
        RouterOptions {
            kafka,
            group_id: "kafka-delay-router".into(),
            tiers: Vec::new(),
            metrics_addr: None,
            drain_timeout: Duration::from_secs(10),
            revoke_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            exactly_once: None,
            cancel_limits: crate::cancel::CancelLimits::default(),
            group_protocol: GroupProtocol::default(),
        }
    }
}

/// A started router.
pub struct Router {
    /// The router's metrics (the same ones its endpoint serves).
    pub metrics: Arc<Metrics>,
    /// The bound metrics address, when one was asked for.
    pub metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Router {
    /// Validates the cluster side and starts routing; returns once the group is joined (asynchronously).
    pub async fn start(config: TopicsConfig, options: RouterOptions) -> Result<Router> {
        let selected = config.select_tiers(&options.tiers)?;
        let metrics = Arc::new(Metrics::new());
        for t in &config.tiers {
            metrics.init_tier(t.topic());
        }
        if options
            .kafka
            .overrides
            .iter()
            .any(|(k, _)| k == "transactional.id")
        {
            return Err(Error::Usage {
                flag: "-X transactional.id".into(),
                problem: "the router sets transactional ids itself; use --exactly-once (and --transactional-id-prefix)".into(),
            });
        }
        let guarded = if options.exactly_once.is_some() {
            Guarded::RouterExactlyOnce
        } else {
            Guarded::Router
        };
        warn_unsafe(&options.kafka.check_guarantees(guarded)?);
        options.group_protocol.check(&options.kafka)?;
        if let Some(eo) = &options.exactly_once {
            exactly_once::check_timeouts(&options.kafka, eo, options.limits.missing_target_wait)?;
        }
        let sink = Arc::new(Sink::new(&options.kafka)?);
        check_topics_exist(&sink, &config).await?;
        if let Some(eo) = &options.exactly_once {
            exactly_once::probe(&options.kafka, &eo.id_prefix, &config.dead_letter.topic).await?;
            tracing::info!(prefix = %eo.id_prefix, interval = ?eo.interval, "exactly-once mode: the cluster runs transactions");
        }

        let cancel = CancellationToken::new();
        // The cancel view starts empty and not fresh: records with an id wait
        // for it, so its reader may start before the tier consumer or after.
        // It stops only when the router has drained (records with an id due
        // during the drain need it fresh), or when starting fails.
        let reader_stop = CancellationToken::new();
        let reader_guard = reader_stop.clone().drop_guard();
        let cancellations = {
            let (config, kafka) = (config.clone(), options.kafka.clone());
            let (metrics, limits, stop) = (metrics.clone(), options.cancel_limits, reader_stop);
            tokio::task::spawn_blocking(move || {
                crate::cancel::start(&config, &kafka, metrics, limits, stop)
            })
            .await
            .map_err(|e| Error::Fatal(format!("starting the cancel-topic reader: {e}")))??
        };
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let consumer = tier_consumer(&options, events_tx, metrics.clone())?;
        let topics: Vec<&str> = selected.iter().map(|&i| config.tiers[i].topic()).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka("subscribing to the tier topics", e))?;
        tracing::info!(group = %options.group_id, tiers = ?topics, "router starting");

        let metrics_addr = match &options.metrics_addr {
            Some(addr) => {
                let (bound, serve) = http::bind(addr, metrics.clone(), cancel.clone()).await?;
                tokio::spawn(serve);
                tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
                Some(bound)
            }
            None => None,
        };

        let shared = shared(
            config,
            &options,
            sink.clone(),
            metrics.clone(),
            cancellations,
            cancel.clone(),
        );
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poll_thread = spawn_poll_thread(consumer.clone(), stop_polling.clone());
        let coordinator =
            Coordinator::new(shared.clone(), consumer, events_rx, options.revoke_timeout);
        metrics.ready.set(1);

        let drain = options.drain_timeout;
        let task_cancel = cancel.clone();
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            coordinator
                .run(task_cancel.clone(), drain, task_metrics.clone())
                .await;
            stop_polling.store(true, Ordering::Release);
            let _ = tokio::task::spawn_blocking(move || poll_thread.join()).await;
            let flushed = {
                let sink = sink.clone();
                tokio::task::spawn_blocking(move || sink.flush(Duration::from_secs(10))).await
            };
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "producer flush at shutdown failed");
            }
            // Stops the metrics endpoint too, and the cancel-topic reader.
            task_cancel.cancel();
            drop(reader_guard);
            tracing::info!("router stopped");
            match shared.fatal.lock().expect("fatal lock").take() {
                Some(reason) => Err(Error::Fatal(reason)),
                None => Ok(()),
            }
        });
        Ok(Router {
            metrics,
            metrics_addr,
            cancel,
            task,
        })
    }

    /// A token that stops the router when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the router stopped (after [`Router::shutdown`] or a fatal error).
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Fatal(format!("router task failed: {e}")))?
    }

    /// Stops taking records, drains, commits, leaves the group, and waits for all that.
    pub async fn shutdown(self) -> Result<()> {
        self.cancel.cancel();
        self.wait().await
    }
}

/// Logs, at startup, each `-X` setting allowed by `--unsafe-override` and the guarantee it gives up.
pub fn warn_unsafe(allowed: &[UnsafeOverride]) {
    for o in allowed {
        tracing::warn!(
            key = %o.key,
            value = %o.value,
            guarantee = o.guarantee,
            "-X {}={} allowed by --unsafe-override: the router gives up {}",
            o.key,
            o.value,
            o.guarantee
        );
    }
}

/// The tier consumer as the router runs it: the router's consumer settings
/// (with exactly-once's changes), rebalances sent to `events` for the
/// [`Coordinator`]. Not subscribed yet.
pub fn tier_consumer(
    options: &RouterOptions,
    events: mpsc::UnboundedSender<GroupEvent>,
    metrics: Arc<Metrics>,
) -> Result<Arc<TierConsumer>> {
    let mut consumer_config = options.kafka.consumer_config(&options.group_id);
    options.group_protocol.apply(&mut consumer_config);
    let context = RouterContext::new(events, metrics, options.revoke_timeout).begin_uncommitted(
        crate::consumer::resets_to_beginning(consumer_config.get("auto.offset.reset")),
    );
    if options.exactly_once.is_some() {
        // Offsets commit inside the transactions; forwarded records of aborted
        // transactions must never be routed.
        consumer_config
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
    }
    let consumer: Arc<TierConsumer> = Arc::new(
        consumer_config
            .create_with_context(context)
            .map_err(|e| Error::kafka("creating the tier consumer", e))?,
    );
    consumer.context().attach(&consumer);
    Ok(consumer)
}

/// What the partition tasks of one router share.
pub fn shared(
    config: TopicsConfig,
    options: &RouterOptions,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
    cancellations: Arc<Cancellations>,
    cancel: CancellationToken,
) -> Arc<Shared> {
    metrics
        .held_bytes_limit
        .set(options.limits.max_held_bytes.min(i64::MAX as usize) as i64);
    Arc::new(Shared {
        tiers: config.tier_set(),
        internal: config.internal_topic_names(),
        config: Arc::new(config),
        sink,
        budget: ByteBudget::new(options.limits.max_held_bytes, metrics.held_bytes.clone()),
        metrics,
        limits: options.limits.clone(),
        kafka: options.kafka.clone(),
        exactly_once: options.exactly_once.clone(),
        cancellations,
        cancel,
        fatal: Mutex::new(None),
    })
}

/// Fails with the list of missing topics if any tier or the dead-letter topic does not exist.
async fn check_topics_exist(sink: &Arc<Sink>, config: &TopicsConfig) -> Result<()> {
    let sink = sink.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        sink.producer().client().fetch_metadata(None, ADMIN_TIMEOUT)
    })
    .await
    .map_err(|e| Error::Fatal(format!("metadata task failed: {e}")))?
    .map_err(|e| Error::kafka("reading cluster metadata (is the broker reachable?)", e))?;
    let present: std::collections::HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    let missing: Vec<String> = config
        .internal_topics()
        .into_iter()
        .filter(|t| !present.contains(t))
        .map(String::from)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingTopics { topics: missing })
    }
}
