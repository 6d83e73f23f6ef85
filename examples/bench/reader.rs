//! The consumer that measures arrival: it reads the target (and probe) topics
//! outside any group and stamps each record with the time it was handed over.
//!
//! It is reading before the first measured record is produced: every partition
//! is assigned at its current end, and one warm-up record per partition must
//! come back before [`Reader::start`] returns. A reader that joined late would
//! measure its own start-up, not the delivery path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kafka_delay_router::headers;
use kafka_delay_router::kafka::{now_ms, TracingContext, ADMIN_TIMEOUT};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::common::settings;

/// The due time (epoch ms) the bench put on a record.
pub const DUE: &str = "bench-due";
/// The kind of load (`fixed-1s`, `cascade`, ... or `probe`).
pub const KIND: &str = "bench-kind";
/// Unique per record within a run.
pub const ID: &str = "bench-id";
/// Which measurement the record belongs to (e.g. `router@100`).
pub const RUN: &str = "bench-run";

const WARM_UP: &str = "warm-up";

/// One record seen by the reader.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: String,
    pub id: String,
    pub due: i64,
    pub arrived: i64,
}

#[derive(Default)]
struct State {
    seen: HashMap<String, Vec<Seen>>,
    distinct: HashMap<String, HashSet<String>>,
}

pub struct Reader {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `topics` from their current end and returns once a
    /// warm-up record sent by `warm` to each partition has been read.
    pub async fn start(topics: &[&str], warm: &FutureProducer<TracingContext>) -> Result<Reader> {
        let owned: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (consumer, partitions) =
            tokio::task::spawn_blocking(move || assign_at_end(&owned)).await??;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                    let arrived = now_ms();
                    let get = |k: &str| {
                        headers::last(m.headers(), k)
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default()
                    };
                    let run = get(RUN);
                    let seen = Seen {
                        kind: get(KIND),
                        id: get(ID),
                        due: get(DUE).parse().unwrap_or(0),
                        arrived,
                    };
                    let mut st = s2.lock().unwrap();
                    st.distinct
                        .entry(run.clone())
                        .or_default()
                        .insert(seen.id.clone());
                    st.seen.entry(run).or_default().push(seen);
                }
            }
        });
        let reader = Reader {
            state,
            stop,
            thread: Some(thread),
        };
        // The warm-up proves the reader fetches every partition.
        for (topic, p) in &partitions {
            let id = format!("{topic}/{p}");
            let h = OwnedHeaders::new()
                .insert(Header {
                    key: RUN,
                    value: Some(WARM_UP),
                })
                .insert(Header {
                    key: ID,
                    value: Some(&id),
                });
            let rec: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).partition(*p).headers(h);
            warm.send_result(rec)
                .map_err(|(e, _)| e)?
                .await?
                .map_err(|(e, _)| e)?;
        }
        let got = reader
            .wait_for(WARM_UP, partitions.len(), Duration::from_secs(30))
            .await;
        if got < partitions.len() {
            bail!(
                "the reader saw {got} of {} warm-up records in 30 s",
                partitions.len()
            );
        }
        Ok(reader)
    }

    /// [`Reader::start`], tried again once a second for up to 10 s: a busy
    /// broker may not have elected the leaders of topics just created.
    pub async fn start_patiently(
        topics: &[&str],
        warm: &FutureProducer<TracingContext>,
    ) -> Result<Reader> {
        let mut attempt = 0;
        loop {
            match Reader::start(topics, warm).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < 10 => {
                    attempt += 1;
                    eprintln!("the reader could not start yet ({e}); again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Distinct records of `run` seen so far.
    pub fn distinct(&self, run: &str) -> usize {
        let st = self.state.lock().unwrap();
        st.distinct.get(run).map_or(0, HashSet::len)
    }

    /// Waits until `n` distinct records of `run` were seen or `timeout` passed;
    /// returns how many were seen.
    pub async fn wait_for(&self, run: &str, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.distinct(run) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.distinct(run)
    }

    /// Everything seen of `run`, duplicates included, in arrival order.
    pub fn take(&self, run: &str) -> Vec<Seen> {
        let mut st = self.state.lock().unwrap();
        st.seen.remove(run).unwrap_or_default()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A consumer and the (topic, partition) pairs it was assigned.
type Assigned = (BaseConsumer<TracingContext>, Vec<(String, i32)>);

/// A reader consumer with every partition of `topics` assigned at its high watermark.
fn assign_at_end(topics: &[String]) -> Result<Assigned> {
    let consumer: BaseConsumer<TracingContext> = settings()
        .reader_config()
        .set("group.id", format!("bench-reader-{}", now_ms()))
        .set("enable.auto.commit", "false")
        // Long polls are not cut short when data arrives: keep them short.
        .set("fetch.wait.max.ms", "5")
        .create_with_context(TracingContext)?;
    let mut tpl = TopicPartitionList::new();
    let mut partitions = Vec::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        let ids: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if ids.is_empty() {
            bail!("topic {topic} has no partitions");
        }
        for p in ids {
            let (_, high) = consumer.fetch_watermarks(topic, p, ADMIN_TIMEOUT)?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
            partitions.push((topic.clone(), p));
        }
    }
    consumer.assign(&tpl)?;
    Ok((consumer, partitions))
}
