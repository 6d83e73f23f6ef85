//! Producing a partition task's records: starting and retrying a job, the
//! outgoing record for each action (delivery, forward, dead letter with
//! whatever it had to strip), the target check before a delivery, the wait
//! for the broker's acknowledgement, and the set of jobs in flight.

use super::*;

impl PartitionTask {
    /// Starts producing a job: synchronously when the target is known to exist
    /// (so records leave in the order they were decided), else after a lookup.
    pub(super) fn start(&mut self, mut job: Job) {
        if !self.txn_ready() {
            // The transaction is being aborted: the record is redone after the rewind.
            return;
        }
        let shared = self.shared.clone();
        let (generation, out) = self.output();
        job.generation = generation;
        if let Action::Deliver = job.action {
            match shared.sink.cached_topic(&job.rec.target) {
                Some(true) => {}
                Some(false) => {
                    let at = job.rec.act_at;
                    self.in_flight
                        .push(at, futures::future::ready((job, Outcome::TargetMissing)));
                    return;
                }
                None => {
                    self.in_flight
                        .push(job.rec.act_at, produce_checked(shared, out, job));
                    return;
                }
            }
        }
        let at = job.rec.act_at;
        match enqueue(&self.shared, &out, &self.topic, self.partition, &job) {
            Ok(fut) => self
                .in_flight
                .push(at, async move { (job, await_delivery(fut).await) }),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => self
                .in_flight
                .push(at, async move { produce(&shared, &out, job).await }),
            Err(e) => self
                .in_flight
                .push(at, futures::future::ready((job, Outcome::Failed(e)))),
        }
    }

    /// Like [`PartitionTask::start`], after a backoff.
    pub(super) fn retry(&mut self, mut job: Job) {
        if !self.txn_ready() {
            return;
        }
        job.attempt += 1;
        let backoff = Duration::from_millis(100u64.saturating_mul(1 << job.attempt.min(16)))
            .min(self.shared.limits.max_backoff);
        let shared = self.shared.clone();
        let (generation, out) = self.output();
        job.generation = generation;
        self.in_flight.push(job.rec.act_at, async move {
            tokio::time::sleep(backoff).await;
            produce_checked(shared, out, job).await
        });
    }
}

/// Builds the outgoing record for a job and hands it to the producer.
pub(super) fn enqueue(
    shared: &Shared,
    out: &Output,
    source_topic: &str,
    source_partition: i32,
    job: &Job,
) -> Result<DeliveryFuture, KafkaError> {
    let msg = &job.rec.msg;
    let original_ts = msg.timestamp().to_millis();
    let now = now_ms();
    let (topic, headers) = match &job.action {
        Action::Deliver => (
            job.rec.target.as_str(),
            headers::outgoing(msg.headers(), original_ts),
        ),
        Action::Forward(t) => (
            shared.config.tiers[*t].topic(),
            headers::outgoing(msg.headers(), original_ts),
        ),
        Action::DeadLetter(dl) => {
            let origin = Origin {
                topic: source_topic.to_string(),
                partition: source_partition,
                offset: msg.offset(),
                timestamp: original_ts,
            };
            let dropped = Dropped {
                value: job
                    .strip
                    .drops_value()
                    .then(|| msg.payload().map_or(0, <[u8]>::len)),
                headers: job.strip.drops_headers().then(|| {
                    msg.headers()
                        .map_or(0, |h| headers::iter(h.as_borrowed()).count())
                }),
                key: job
                    .strip
                    .drops_key()
                    .then(|| msg.key().map_or(0, <[u8]>::len)),
            };
            (
                shared.config.dead_letter.topic.as_str(),
                dead_letter_headers(msg.headers(), dl, &origin, now, dropped),
            )
        }
    };
    let value = if job.strip.drops_value() {
        None
    } else {
        msg.payload()
    };
    let key = if job.strip.drops_key() {
        None
    } else {
        msg.key()
    };
    send(out, topic, key, value, headers, now)
}

/// Produces a job once its target is known to exist (deliveries only), waiting
/// while the producer queue is full.
pub(super) async fn produce_checked(shared: Arc<Shared>, out: Output, job: Job) -> (Job, Outcome) {
    if let Action::Deliver = job.action {
        match shared.sink.lookup_topic(&job.rec.target).await {
            Ok(true) => {}
            Ok(false) => return (job, Outcome::TargetMissing),
            Err(e) => return (job, Outcome::Failed(e)),
        }
    }
    produce(&shared, &out, job).await
}

/// Produces a job, waiting while the producer queue is full.
pub(super) async fn produce(shared: &Shared, out: &Output, job: Job) -> (Job, Outcome) {
    loop {
        match enqueue(
            shared,
            out,
            job.rec.msg.topic(),
            job.rec.msg.partition(),
            &job,
        ) {
            Ok(fut) => return (job, await_delivery(fut).await),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return (job, Outcome::Failed(e)),
        }
    }
}

pub(super) async fn await_delivery(fut: DeliveryFuture) -> Outcome {
    match fut.await {
        Ok(Ok(_)) => Outcome::Acked,
        Ok(Err((e, _))) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(KafkaError::Canceled),
    }
}

/// The jobs started and not yet answered, with the times they became due,
/// so the oldest can be reported as overdue while acknowledgements wait.
#[derive(Default)]
pub(super) struct InFlight {
    jobs: FuturesUnordered<BoxFuture<'static, (Job, Outcome)>>,
    /// How many started jobs became due at each time (epoch ms).
    due: BTreeMap<i64, usize>,
}

impl InFlight {
    pub(super) fn push(
        &mut self,
        due_at: i64,
        job: impl std::future::Future<Output = (Job, Outcome)> + Send + 'static,
    ) {
        *self.due.entry(due_at).or_default() += 1;
        self.jobs.push(job.boxed());
    }

    /// The next answered job, without waiting.
    pub(super) fn ready(&mut self) -> Option<(Job, Outcome)> {
        match self.jobs.next().now_or_never() {
            Some(Some(done)) => Some(self.answered(done)),
            _ => None,
        }
    }

    /// The next answered job (pending forever while none is started).
    pub(super) async fn next(&mut self) -> (Job, Outcome) {
        match self.jobs.next().await {
            Some(done) => self.answered(done),
            None => std::future::pending().await,
        }
    }

    fn answered(&mut self, done: (Job, Outcome)) -> (Job, Outcome) {
        let at = done.0.rec.act_at;
        if let Some(n) = self.due.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.due.remove(&at);
            }
        }
        done
    }

    /// When the longest-waiting started job became due.
    pub(super) fn oldest(&self) -> Option<i64> {
        self.due.keys().next().copied()
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Forgets every started job (exactly-once abort: they are redone).
    pub(super) fn clear(&mut self) {
        *self = InFlight::default();
    }
}
