//! What configures the partition tasks of one router and what they share:
//! their [`Limits`] (caps, pacing, retry and wait bounds) and [`Shared`]
//! (topics, sink, metrics, byte budget, and the way to stop the router on a
//! fatal error).

use super::*;

/// Tuning knobs of a partition task.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Records produced but not yet acknowledged, per partition: past this, due
    /// records wait for acknowledgements (backpressure) and reading pauses.
    pub max_in_flight: usize,
    /// Records held in memory for a sub-tier remainder, per partition, before reading pauses.
    pub max_held: usize,
    /// Bytes of records held in memory by the whole router (all partitions:
    /// waiting, held and in flight); past it a partition reads only its head
    /// (see [`ByteBudget`]).
    pub max_held_bytes: usize,
    /// A partition pauses (stops fetching) while nothing it has read, nor
    /// anything it could still read, is due sooner than this (see [`Window::fetch`]).
    pub pause_min_wait_ms: i64,
    /// A paused partition is resumed this long before anything can be due, so
    /// the records it needs are fetched by then.
    pub resume_lead_ms: i64,
    /// A record whose timestamp lies further ahead than this (producer clock
    /// skew) would block its partition and is dead-lettered instead.
    pub max_clock_skew_ms: i64,
    /// Longest pause between retries of a failed produce.
    pub max_backoff: Duration,
    /// How long a record whose target topic does not exist keeps retrying
    /// (with backoff) before it is dead-lettered; zero dead-letters at once.
    pub missing_target_wait: Duration,
    /// Commit past records the consumer skipped after an error (a corrupt or
    /// undecompressible batch); by default the commit stays before them.
    pub skip_unreadable: bool,
}

impl Limits {
    /// The window's pause and resume thresholds.
    pub fn pacing(&self) -> Pacing {
        Pacing {
            pause_min_wait_ms: self.pause_min_wait_ms,
            resume_lead_ms: self.resume_lead_ms,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 10_000,
            max_held: 100_000,
            max_held_bytes: 256 * 1024 * 1024,
            pause_min_wait_ms: 750,
            resume_lead_ms: 300,
            max_clock_skew_ms: 60_000,
            max_backoff: Duration::from_secs(10),
            missing_target_wait: Duration::ZERO,
            skip_unreadable: false,
        }
    }
}

/// What every partition task of one router shares (read-only, or internally synchronized).
pub struct Shared {
    /// The topics file.
    pub config: Arc<TopicsConfig>,
    /// The tiers' delays.
    pub tiers: TierSet,
    /// The internal topics (tiers, dead-letter, cancel): never a target.
    pub internal: HashSet<String>,
    /// The shared producer and target-topic cache.
    pub sink: Arc<Sink>,
    /// The router's metrics.
    pub metrics: Arc<Metrics>,
    /// The partition tasks' limits.
    pub limits: Limits,
    /// The byte budget every partition task of this router shares.
    pub budget: Arc<ByteBudget>,
    /// Client settings, for the partitions' transactional producers.
    pub kafka: KafkaSettings,
    /// `Some` in exactly-once mode.
    pub exactly_once: Option<ExactlyOnce>,
    /// The cancel view records with a `delay-id` are checked against
    /// (always fresh and empty without a cancel topic).
    pub cancellations: Arc<Cancellations>,
    /// Cancelled when the router must stop because of a fatal error.
    pub cancel: CancellationToken,
    /// The first fatal error's reason (later ones are dropped).
    pub fatal: Mutex<Option<String>>,
}

impl Shared {
    /// Records a fatal error and stops the router.
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "fatal error, stopping the router");
        self.fatal.lock().expect("fatal lock").get_or_insert(reason);
        self.cancel.cancel();
    }
}
