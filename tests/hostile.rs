//! 10,000 generated hostile records through the real router: missing, duplicate,
//! binary, huge and non-UTF-8 header values; negative, overflowing, far-past and
//! far-future `delay-deliver-at`; empty, null and 1 MiB values; absent keys; odd
//! topic names. Each must be delivered on time or dead-lettered with the right
//! reason; the router must keep running with bounded memory, and no poison
//! record may block its partition.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use kafka_delay_router::headers::{self, DELIVER_AT, TARGET};
use kafka_delay_router::kafka::now_ms;
use kafka_delay_router::router::Router;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The headers, value and expected outcome of one generated record.
type Case = (
    Vec<(&'static str, Option<Vec<u8>>)>,
    Option<Vec<u8>>,
    Expect,
);

enum Expect {
    Delivered { due: i64 },
    Dead(&'static str),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_hostile_records() {
    // The tiers take records up to 2 MB, as the test's producer does, so a
    // 1 MiB record reaches the router; the target and the dead-letter topic keep
    // the broker's default limit (1 MiB + 12 bytes per batch, as Kafka's), so
    // the router finds it too large for both.
    let env = Env::with_tier_yaml(
        "hostile",
        &[200, 500],
        3,
        1,
        "configs: {max.message.bytes: '2000000'}",
        "max-delay: 1d\n",
    )
    .await;
    let target = env.targets[0].clone();
    let mut options = env.options();
    // Small limits, so "memory stays bounded" means "within the configured limits"
    // even while thousands of dead letters queue up behind the broker's writes.
    options.limits.max_in_flight = 500;
    options.limits.max_held = 500;
    let router = Router::start(env.config.clone(), options).await.unwrap();
    wait_assigned(&router, 6.0).await;
    let mut delivered = Collector::start(&target);
    let mut dead = Collector::start(env.dlq());
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let big = vec![0xABu8; 1024 * 1024];
    let long_name = "x".repeat(300);
    let tier = env.tier(0).to_string();
    let mut rng = Rng(0xdead_beef);
    let mut expect: HashMap<String, Expect> = HashMap::new();
    let mut sends = Vec::new();
    let n = 10_000;
    let started = now_ms();
    for i in 0..n {
        let id = format!("h{i}");
        let ts = now_ms();
        let soon = (ts + 200 + rng.below(1_800) as i64).to_string();
        let far = (ts + 30 * 86_400_000).to_string();
        let garbage: Vec<u8> = (0..rng.below(64)).map(|_| rng.below(256) as u8).collect();
        let t = target.as_bytes();
        let kind = rng.below(16);
        let (hdrs, value, exp): Case = match kind {
            0 => (
                vec![(TARGET, Some(t.to_vec()))],
                Some(id.clone().into_bytes()),
                Expect::Delivered { due: ts + 200 },
            ),
            1 => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(soon.clone().into_bytes())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Delivered {
                    due: soon.parse().unwrap(),
                },
            ),
            2 => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(b"1".to_vec())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Delivered { due: 1 },
            ),
            3 => (
                vec![("unrelated", Some(garbage.clone()))],
                Some(id.clone().into_bytes()),
                Expect::Dead("missing-target"),
            ),
            4 => (
                vec![(TARGET, Some(Vec::new()))],
                Some(id.clone().into_bytes()),
                Expect::Dead("missing-target"),
            ),
            5 => (
                vec![(TARGET, Some(vec![0xff, 0xfe, 0x00, 0x41]))],
                Some(id.clone().into_bytes()),
                Expect::Dead("invalid-target"),
            ),
            6 => {
                let odd: &[u8] = match rng.below(3) {
                    0 => b"a b",
                    1 => b"x/y",
                    _ => long_name.as_bytes(),
                };
                (
                    vec![(TARGET, Some(odd.to_vec()))],
                    Some(id.clone().into_bytes()),
                    Expect::Dead("invalid-target"),
                )
            }
            7 => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(b"-5".to_vec())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Dead("invalid-deliver-at"),
            ),
            8 => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(b"99999999999999999999".to_vec())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Dead("invalid-deliver-at"),
            ),
            9 => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(far.clone().into_bytes())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Dead("due-too-far"),
            ),
            10 => (
                vec![
                    (TARGET, Some(b"nope nope".to_vec())),
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(b"x".to_vec())),
                    (DELIVER_AT, Some(soon.clone().into_bytes())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Delivered {
                    due: soon.parse().unwrap(),
                },
            ),
            11 => (
                vec![
                    ("bin", Some(garbage.clone())),
                    ("null", None),
                    (TARGET, Some(t.to_vec())),
                    ("", Some(b"empty key".to_vec())),
                ],
                Some(id.clone().into_bytes()),
                Expect::Delivered { due: ts + 200 },
            ),
            12 => (
                vec![(TARGET, Some(t.to_vec()))],
                if rng.below(2) == 0 {
                    None
                } else {
                    Some(Vec::new())
                },
                Expect::Delivered { due: ts + 200 },
            ),
            13 if rng.below(200) == 0 => (
                vec![(TARGET, Some(t.to_vec()))],
                Some(big.clone()),
                Expect::Dead("record-too-large"),
            ),
            14 => (
                vec![(TARGET, Some(tier.as_bytes().to_vec()))],
                Some(id.clone().into_bytes()),
                Expect::Dead("target-is-internal"),
            ),
            _ => (
                vec![
                    (TARGET, Some(t.to_vec())),
                    (DELIVER_AT, Some(garbage.clone())),
                ],
                Some(id.clone().into_bytes()),
                {
                    let valid = !garbage.is_empty() && garbage.iter().all(u8::is_ascii_digit);
                    if valid {
                        Expect::Delivered { due: 0 }
                    } else {
                        Expect::Dead("invalid-deliver-at")
                    }
                },
            ),
        };
        expect.insert(id.clone(), exp);
        let h = hdrs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: v.as_deref(),
            })
        });
        // The id travels as the key (absent keys are covered by kind 12's null value records carrying it too).
        let p = p.clone();
        let topic = tier.clone();
        sends.push(async move {
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
                .key(id.as_bytes())
                .headers(h)
                .timestamp(ts);
            if let Some(v) = &value {
                r = r.payload(v);
            }
            p.send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        });
        if sends.len() == 500 {
            futures::future::join_all(std::mem::take(&mut sends)).await;
        }
    }
    futures::future::join_all(sends).await;
    let expected_dead = expect
        .values()
        .filter(|e| matches!(e, Expect::Dead(_)))
        .count();
    let expected_good = n - expected_dead;
    let mut max_held = 0.0f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while (delivered
        .wait_for(expected_good, Duration::from_millis(200))
        .len()
        < expected_good
        || dead.wait_for(expected_dead, Duration::from_millis(1)).len() < expected_dead)
        && std::time::Instant::now() < deadline
    {
        max_held = max_held.max(metric(&router, "kafka_delay_router_records_held", &[]));
    }
    let got = delivered.settle(Duration::from_secs(1)).to_vec();
    let dl = dead.settle(Duration::from_millis(10)).to_vec();
    println!(
        "hostile: {n} records in {} ms; {} delivered, {} dead-lettered; at most {max_held} held in memory",
        now_ms() - started,
        got.len(),
        dl.len()
    );
    let key =
        |r: &Received| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
    let mut seen_good = 0;
    for r in &got {
        match &expect[&key(r)] {
            Expect::Delivered { due } => {
                assert!(r.timestamp >= *due, "{} early", key(r));
                seen_good += 1;
            }
            Expect::Dead(reason) => panic!("{} should have been dead-lettered ({reason})", key(r)),
        }
    }
    let mut seen_dead = 0;
    for r in &dl {
        match &expect[&key(r)] {
            Expect::Dead(reason) => {
                assert_eq!(
                    r.header(headers::DLQ_REASON).as_deref(),
                    Some(*reason),
                    "{}",
                    key(r)
                );
                seen_dead += 1;
            }
            Expect::Delivered { .. } => panic!(
                "{} was dead-lettered: {:?}",
                key(r),
                r.header(headers::DLQ_DETAIL)
            ),
        }
    }
    assert_eq!(
        seen_good, expected_good,
        "every routable record delivered once"
    );
    assert_eq!(
        seen_dead, expected_dead,
        "every poison record dead-lettered once"
    );
    assert!(
        max_held < 3_000.0,
        "memory bounded: {max_held} records held at once"
    );
    router.shutdown().await.unwrap();
    assert_committed_to_end(&env.group, &tier, 3);
}
