//! The task loop driven through a fake [`Source`] (records and consumer
//! errors handed in by the test, offsets stored recorded) with a producer on
//! librdkafka's mock cluster: what a consumer error does to the records
//! behind it and to the commit, without a broker.

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;

use rdkafka::message::{Header, OwnedHeaders, Timestamp};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use super::*;
use crate::cancel::Cancellations;
use crate::router::{self, RouterOptions};

const TIER: &str = "unit-delay-1s";
const TARGET: &str = "unit-target";
const DLQ: &str = "unit-dlq";
const CANCEL: &str = "unit-cancel";

/// What the fake source hands out, and what the task stored.
#[derive(Clone, Default)]
struct Fake {
    items: Arc<StdMutex<VecDeque<KafkaResult>>>,
    stored: Arc<StdMutex<Vec<i64>>>,
}

type KafkaResult = rdkafka::error::KafkaResult<OwnedMessage>;

impl Fake {
    fn push(&self, items: Vec<KafkaResult>) {
        self.items.lock().unwrap().extend(items);
    }
    fn last_stored(&self) -> Option<i64> {
        self.stored.lock().unwrap().last().copied()
    }
}

impl Source for Fake {
    fn poll(&mut self) -> Option<KafkaResult> {
        self.items.lock().unwrap().pop_front()
    }
    fn pause(&mut self) -> rdkafka::error::KafkaResult<()> {
        Ok(())
    }
    fn resume(&mut self, _next: Option<i64>) -> rdkafka::error::KafkaResult<()> {
        Ok(())
    }
    fn restart_at(&mut self, _offset: i64) -> rdkafka::error::KafkaResult<()> {
        Ok(())
    }
    fn store(&mut self, offset: i64) -> rdkafka::error::KafkaResult<()> {
        self.stored.lock().unwrap().push(offset);
        Ok(())
    }
    fn lag(&self, _finished: Option<i64>) -> tokio::task::JoinHandle<Option<i64>> {
        tokio::spawn(async { None })
    }
}

/// A due record at `offset` for the target topic.
fn due_record(offset: i64) -> KafkaResult {
    due_record_with_id(offset, None)
}

/// A due record at `offset` with a `delay-id`.
fn due_record_with_id(offset: i64, id: Option<&str>) -> KafkaResult {
    let mut headers = OwnedHeaders::new().insert(Header {
        key: headers::TARGET,
        value: Some(TARGET.as_bytes()),
    });
    if let Some(id) = id {
        headers = headers.insert(Header {
            key: crate::cancel::ID_HEADER,
            value: Some(id.as_bytes()),
        });
    }
    Ok(OwnedMessage::new(
        Some(format!("v{offset}").into_bytes()),
        None,
        TIER.to_string(),
        Timestamp::CreateTime(now_ms() - 5_000),
        0,
        offset,
        Some(headers),
    ))
}

fn bad_batch() -> KafkaResult {
    Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BadMessage))
}

struct Running {
    fake: Fake,
    wake: Arc<Notify>,
    shared: Arc<Shared>,
    stop: mpsc::UnboundedSender<Control>,
    handle: tokio::task::JoinHandle<Option<i64>>,
    _mock: MockCluster<'static, DefaultProducerContext>,
}

impl Running {
    fn start(skip_unreadable: bool) -> Running {
        Self::start_with(skip_unreadable, Arc::new(Cancellations::disabled()))
    }

    /// With a cancel topic declared and `view` as the cancel view.
    fn start_with(skip_unreadable: bool, view: Arc<Cancellations>) -> Running {
        let mock = MockCluster::new(1).unwrap();
        for t in [TIER, TARGET, DLQ] {
            mock.create_topic(t, 1, 1).unwrap();
        }
        let yaml = format!(
            "tiers:\n  - {{topic: {TIER}, delay: 1s, partitions: 1, replication-factor: 1}}\n\
             dead-letter:\n  topic: {DLQ}\n  partitions: 1\n  replication-factor: 1\nmax-delay: 1d\ntargets: {{allow: ['*']}}\n\
             cancel: {{topic: {CANCEL}, partitions: 1, replication-factor: 1}}\n"
        );
        let config = TopicsConfig::parse("unit.yaml", &yaml).unwrap();
        let kafka = KafkaSettings::new(mock.bootstrap_servers());
        let mut options = RouterOptions::new(kafka.clone());
        options.limits.skip_unreadable = skip_unreadable;
        let sink = Arc::new(Sink::new(&kafka).unwrap());
        let shared = router::shared(
            config,
            &options,
            sink,
            Arc::new(Metrics::new()),
            view,
            CancellationToken::new(),
        );
        let fake = Fake::default();
        let wake = Arc::new(Notify::new());
        let (stop, control) = mpsc::unbounded_channel();
        let task = PartitionTask::with_source(
            shared.clone(),
            Box::new(fake.clone()),
            wake.clone(),
            0,
            0,
            control,
            Commit::Store,
        );
        let handle = tokio::spawn(task.run());
        Running {
            fake,
            wake,
            shared,
            stop,
            handle,
            _mock: mock,
        }
    }

    /// Records arrive: what librdkafka's non-empty callback does.
    fn arrive(&self, items: Vec<KafkaResult>) {
        self.fake.push(items);
        self.wake.notify_one();
    }

    fn delivered(&self) -> u64 {
        self.shared
            .metrics
            .records_delivered
            .with_label_values(&[TIER])
            .get()
    }

    async fn wait_delivered(&self, n: u64, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.delivered() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    async fn stop(self) -> Option<i64> {
        let _ = self.stop.send(Control::Stop {
            deadline: Instant::now() + Duration::from_secs(2),
        });
        self.handle.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_behind_a_consumer_error_are_read_at_once() {
    let run = Running::start(false);
    run.arrive(vec![due_record(0)]);
    assert!(run.wait_delivered(1, Duration::from_secs(10)).await);
    // Settle: the lag query at the start and the acknowledgement have woken the task.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A transient error first: nothing skipped, the records behind it come at once.
    run.arrive(vec![
        Err(KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure,
        )),
        due_record(1),
        due_record(2),
    ]);
    assert!(
        run.wait_delivered(3, Duration::from_secs(3)).await,
        "records behind a consumer error waited for a timer: {} delivered",
        run.delivered()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(run.fake.last_stored(), Some(3), "nothing was skipped");
    assert_eq!(run.stop().await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_consumer_skipped_hold_the_commit_and_are_counted() {
    let run = Running::start(false);
    run.arrive(vec![due_record(0), due_record(1)]);
    assert!(run.wait_delivered(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // librdkafka reports a corrupt batch (offsets 2..=9) and goes on at 10.
    run.arrive(vec![bad_batch(), due_record(10), due_record(11)]);
    assert!(
        run.wait_delivered(4, Duration::from_secs(3)).await,
        "records behind the error: {} delivered",
        run.delivered()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = &run.shared.metrics;
    assert_eq!(
        run.fake.last_stored(),
        Some(2),
        "the commit must stay before the skipped offsets"
    );
    assert_eq!(m.records_unreadable.with_label_values(&[TIER]).get(), 8);
    assert_eq!(m.partitions_commit_held.with_label_values(&[TIER]).get(), 1);
    // A successor (the partition assigned again) reads them again too.
    assert_eq!(run.stop().await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_unreadable_commits_past_skipped_records() {
    let run = Running::start(true);
    run.arrive(vec![due_record(0)]);
    assert!(run.wait_delivered(1, Duration::from_secs(10)).await);
    run.arrive(vec![bad_batch(), due_record(5)]);
    assert!(run.wait_delivered(2, Duration::from_secs(3)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(run.fake.last_stored(), Some(6));
    let m = &run.shared.metrics;
    assert_eq!(m.records_unreadable.with_label_values(&[TIER]).get(), 4);
    assert_eq!(m.partitions_commit_held.with_label_values(&[TIER]).get(), 0);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_record_is_dropped_and_its_offset_finished() {
    let view = Arc::new(Cancellations::new(Default::default()));
    view.cancel(b"paid", now_ms() + 60_000, now_ms());
    view.set_fresh_until(i64::MAX);
    let run = Running::start_with(false, view);
    run.arrive(vec![
        due_record_with_id(0, Some("paid")),
        due_record_with_id(1, Some("unpaid")),
        due_record(2),
    ]);
    assert!(run.wait_delivered(2, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = &run.shared.metrics;
    assert_eq!(run.delivered(), 2, "the cancelled one is not delivered");
    assert_eq!(m.records_cancelled.with_label_values(&[TIER]).get(), 1);
    assert_eq!(run.fake.last_stored(), Some(3), "its offset is finished");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_with_an_id_waits_until_the_cancel_view_is_fresh_to_its_due_time() {
    let view = Arc::new(Cancellations::new(Default::default()));
    let run = Running::start_with(false, view.clone());
    // Due 4 s ago; the view is fresh only up to 10 s ago.
    view.set_fresh_until(now_ms() - 10_000);
    run.arrive(vec![due_record_with_id(0, Some("order-1")), due_record(1)]);
    assert!(run.wait_delivered(1, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(run.delivered(), 1, "only the record without an id went");
    assert_eq!(
        run.fake.last_stored(),
        Some(0),
        "the waiting one holds the commit"
    );
    // A cancellation read meanwhile still wins.
    view.cancel(b"order-2", now_ms() + 60_000, now_ms());
    run.arrive(vec![due_record_with_id(2, Some("order-2"))]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The view catches up: the waiting delivery goes at once, the cancelled one never.
    view.set_fresh_until(now_ms());
    assert!(
        run.wait_delivered(2, Duration::from_secs(2)).await,
        "released when the view became fresh"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run.delivered(), 2);
    let m = &run.shared.metrics;
    assert_eq!(m.records_cancelled.with_label_values(&[TIER]).get(), 1);
    assert_eq!(run.fake.last_stored(), Some(3));
    run.stop().await;
}
