//! Sleep-and-requeue, the usual home-made delay, under the same load at the
//! same rates: consume; a record that is due goes to its target; one that is
//! not goes back to the end of the same topic; a polled batch that had a
//! record not yet due is followed by a fixed sleep.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kafka_delay_router::headers;
use kafka_delay_router::kafka::{now_ms, TracingContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;

use crate::common::{
    copy_record, load_producer, make_topics, router_like_producer, send_waiting, settings, Rng,
};
use crate::load::{bench_headers, mix, paced, warm_path, Delivery, Outgoing};
use crate::precision::{RatePlan, PARTITIONS};
use crate::reader::{Reader, DUE};

pub const SLEEP: Duration = Duration::from_millis(100);

/// Sleep-and-requeue at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct RequeueAtRate {
    pub rate: u32,
    pub seconds: f64,
    pub requeue: Delivery,
    /// The producer's writes plus every write of the loop, per delivered record.
    pub writes_per_delivered: f64,
}

/// One loop serves every rate, one after the other, each with the drain of its last records.
pub async fn run(dir: &std::path::Path, plan: &RatePlan) -> Result<Vec<RequeueAtRate>> {
    let prefix = format!("bench-requeue-{}", now_ms());
    let (queue, target) = (format!("{prefix}-queue"), format!("{prefix}-out"));
    make_topics(dir, &prefix, &[1_000], PARTITIONS, &[&queue, &target]).await?;
    let reader = Reader::start(&[&target], &router_like_producer()?).await?;
    let worker = Worker::start(&prefix, &queue, &target).await?;
    let p = load_producer()?;
    warm_path(&p, &[&queue], &target, &reader).await?;
    let mut out = Vec::new();
    for &rate in &plan.rates {
        let secs = plan.seconds(rate);
        let run = format!("requeue@{rate}");
        eprintln!(
            "baseline: sleep-and-requeue ({} ms sleep) at {rate} records/s for {secs:.0} s",
            SLEEP.as_millis()
        );
        let writes_before = worker.writes.load(Ordering::Relaxed);
        let mut rng = Rng::seeded();
        let sent = paced(&p, f64::from(rate), secs, |i, now| {
            let d = mix(i, &mut rng, plan.quick);
            let due = now + d.delay_ms as i64;
            Outgoing {
                topic: queue.clone(),
                key: rng.key(),
                headers: bench_headers(&run, i, d.kind, due, Some(&target), d.deliver_at),
                timestamp: now,
            }
        })
        .await?;
        let got = reader
            .wait_for(&run, sent.records, plan.drain_timeout())
            .await;
        let writes = worker.writes.load(Ordering::Relaxed) - writes_before + sent.records as u64;
        let delivery = Delivery::summarize(sent, &reader.take(&run), true);
        eprintln!(
            "  sent {}, arrived {got}; p99 {} ms",
            delivery.sent.records, delivery.lateness.p99_ms
        );
        out.push(RequeueAtRate {
            rate,
            seconds: secs,
            writes_per_delivered: writes as f64 / delivery.delivered.max(1) as f64,
            requeue: delivery,
        });
    }
    worker.stop().await?;
    Ok(out)
}

struct Worker {
    writes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
    producer: FutureProducer<TracingContext>,
}

impl Worker {
    /// Starts the loop and returns once its consumer owns every queue partition.
    async fn start(prefix: &str, queue: &str, target: &str) -> Result<Worker> {
        let kafka = settings();
        let consumer: BaseConsumer<TracingContext> = kafka
            .consumer_config(&format!("{prefix}-group"))
            .create_with_context(TracingContext)?;
        consumer.subscribe(&[queue])?;
        let producer: FutureProducer<TracingContext> = kafka
            .producer_config()
            .create_with_context(TracingContext)?;
        let writes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let assigned = Arc::new(AtomicBool::new(false));
        let (w2, s2, a2, p2) = (
            writes.clone(),
            stop.clone(),
            assigned.clone(),
            producer.clone(),
        );
        let (queue2, target2) = (queue.to_string(), target.to_string());
        let thread = std::thread::spawn(move || {
            let mut batch_had_waiting = false;
            let mut in_batch = 0;
            while !s2.load(Ordering::Relaxed) {
                let polled = consumer.poll(Duration::from_millis(5));
                if !a2.load(Ordering::Relaxed)
                    && consumer
                        .assignment()
                        .is_ok_and(|a| a.count() == PARTITIONS as usize)
                {
                    a2.store(true, Ordering::Relaxed);
                }
                match polled {
                    Some(Ok(m)) => {
                        in_batch += 1;
                        let due: i64 = headers::last(m.headers(), DUE)
                            .flatten()
                            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                            .unwrap_or(0);
                        let waiting = now_ms() < due;
                        let to = if waiting { &queue2 } else { &target2 };
                        batch_had_waiting |= waiting;
                        // Fire and forget, as such loops usually do.
                        drop(send_waiting(&p2, copy_record(&m, to)));
                        w2.fetch_add(1, Ordering::Relaxed);
                        if in_batch >= 500 {
                            in_batch = 0;
                            if std::mem::take(&mut batch_had_waiting) {
                                std::thread::sleep(SLEEP);
                            }
                        }
                    }
                    _ => {
                        in_batch = 0;
                        if std::mem::take(&mut batch_had_waiting) {
                            std::thread::sleep(SLEEP);
                        }
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !assigned.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                bail!("the sleep-and-requeue consumer got no assignment of {queue} in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Worker {
            writes,
            stop,
            thread,
            producer,
        })
    }

    async fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        self.producer.flush(Duration::from_secs(5))?;
        Ok(())
    }
}
