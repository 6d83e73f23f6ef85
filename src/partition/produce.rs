//! Producing a partition task's records: the outgoing record for each action
//! (delivery, forward, dead letter with whatever it had to strip), the target
//! check before a delivery, and the wait for the broker's acknowledgement.

use super::*;

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
