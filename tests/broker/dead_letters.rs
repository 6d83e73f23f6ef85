//! Bad input goes to the dead-letter topic with its reason while good
//! records flow, and a missing target is waited for, then dead-lettered.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kafka_delay_router::headers::{self, DELIVER_AT, TARGET};
use kafka_delay_router::kafka::now_ms;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dead_letter_topic_while_good_records_flow() {
    let Rig {
        env,
        target,
        col: mut delivered,
        dead,
        router,
        p,
        ..
    } = Setup::new("dlq", &[200, 500], 1)
        .extra_yaml("max-delay: 1d\n")
        .dead_letters()
        // A small producer limit makes the 50 kB record too large for the target
        // (and for the dead-letter topic, so it is dead-lettered without its value).
        .options(|o| {
            o.kafka
                .overrides
                .push(("message.max.bytes".into(), "20000".into()))
        })
        .start()
        .await;
    let mut dead = dead.unwrap();
    let tier = env.tier(0).to_string();
    let now = now_ms();
    let far = (now + 30 * 86_400_000).to_string();
    let big = vec![b'x'; 50_000];
    let t = target.as_bytes();
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, Option<&'a [u8]>)>,
        Option<&'a [u8]>,
        Option<i64>,
        Option<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("good-1", vec![hdr(TARGET, t)], Some(b"good-1"), None, None),
        (
            "no-target",
            vec![hdr("other", b"x")],
            Some(b"no-target"),
            None,
            Some("missing-target"),
        ),
        (
            "empty-target",
            vec![hdr(TARGET, b"")],
            Some(b"empty-target"),
            None,
            Some("missing-target"),
        ),
        (
            "binary-target",
            vec![hdr(TARGET, b"\xff\xfe")],
            Some(b"binary-target"),
            None,
            Some("invalid-target"),
        ),
        (
            "illegal-target",
            vec![hdr(TARGET, b"bad topic!")],
            Some(b"illegal-target"),
            None,
            Some("invalid-target"),
        ),
        (
            "bad-at",
            vec![hdr(TARGET, t), hdr(DELIVER_AT, b"soon")],
            Some(b"bad-at"),
            None,
            Some("invalid-deliver-at"),
        ),
        (
            "negative-at",
            vec![hdr(TARGET, t), hdr(DELIVER_AT, b"-5")],
            Some(b"negative-at"),
            None,
            Some("invalid-deliver-at"),
        ),
        (
            "too-far",
            vec![hdr(TARGET, t), hdr(DELIVER_AT, far.as_bytes())],
            Some(b"too-far"),
            None,
            Some("due-too-far"),
        ),
        (
            "future-ts",
            vec![hdr(TARGET, t)],
            Some(b"future-ts"),
            Some(now + 3_600_000),
            Some("timestamp-in-future"),
        ),
        (
            "to-tier",
            vec![hdr(TARGET, tier.as_bytes())],
            Some(b"to-tier"),
            None,
            Some("target-is-internal"),
        ),
        (
            "to-dlq",
            vec![hdr(TARGET, env.dlq().as_bytes())],
            Some(b"to-dlq"),
            None,
            Some("target-is-internal"),
        ),
        (
            "missing-topic",
            vec![hdr(TARGET, b"no-such-topic-kdr")],
            Some(b"missing-topic"),
            None,
            Some("target-not-found"),
        ),
        (
            "good-2",
            vec![hdr(TARGET, t), hdr(TARGET, t)],
            Some(b"good-2"),
            None,
            None,
        ),
        (
            "too-large",
            vec![hdr(TARGET, t)],
            Some(&big),
            None,
            Some("record-too-large"),
        ),
        ("tombstone", vec![hdr(TARGET, t)], None, None, None),
        (
            "far-past",
            vec![hdr(TARGET, t), hdr(DELIVER_AT, b"1")],
            Some(b"far-past"),
            None,
            None,
        ),
    ];
    let mut offsets = HashMap::new();
    for (name, h, value, ts, _) in &cases {
        let (_, offset) = produce(&p, &tier, Some(0), Some(name.as_bytes()), *value, h, *ts).await;
        offsets.insert(name.to_string(), offset);
    }
    let expected_dead: HashMap<&str, &str> =
        cases.iter().filter_map(|c| c.4.map(|r| (c.0, r))).collect();
    let good = cases.len() - expected_dead.len();
    let got = delivered.wait_for(good, Duration::from_secs(15)).to_vec();
    let dl = dead
        .wait_for(expected_dead.len(), Duration::from_secs(15))
        .to_vec();
    let keys = |rs: &[Received]| {
        rs.iter()
            .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned())
            .collect::<HashSet<_>>()
    };
    assert_eq!(
        keys(&got),
        ["good-1", "good-2", "tombstone", "far-past"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert!(
        got.iter()
            .find(|r| r.key.as_deref() == Some(b"tombstone"))
            .unwrap()
            .value
            .is_none(),
        "null value kept"
    );
    assert_eq!(dl.len(), expected_dead.len(), "{:?}", keys(&dl));
    for r in &dl {
        let name = String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned();
        assert_eq!(
            r.header(headers::DLQ_REASON).as_deref(),
            Some(expected_dead[name.as_str()]),
            "{name}"
        );
        assert_eq!(
            r.header(headers::DLQ_SOURCE_TOPIC).as_deref(),
            Some(tier.as_str())
        );
        assert_eq!(
            r.header(headers::DLQ_SOURCE_PARTITION).as_deref(),
            Some("0")
        );
        assert_eq!(
            r.header(headers::DLQ_SOURCE_OFFSET),
            Some(offsets[&name].to_string())
        );
        assert!(r.header(headers::DLQ_SOURCE_TIMESTAMP).is_some());
        assert!(!r.header(headers::DLQ_DETAIL).unwrap_or_default().is_empty());
        if name == "too-large" {
            assert!(r.value.is_none());
            assert_eq!(
                r.header(headers::DLQ_VALUE_DROPPED).as_deref(),
                Some("50000")
            );
        } else {
            assert_eq!(r.value_str(), name, "value kept");
        }
    }
    for reason in expected_dead.values().collect::<HashSet<_>>() {
        let n = expected_dead.values().filter(|r| r == &reason).count() as f64;
        assert_eq!(
            settled_metric(
                &router,
                "kafka_delay_router_records_dead_lettered_total",
                &[("reason", reason)],
                n
            )
            .await,
            n,
            "{reason}"
        );
    }
    router.shutdown().await.unwrap();
    // The poison records did not block the partition.
    assert_committed_to_end(&env.group, &tier, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_is_waited_for_then_dead_lettered() {
    let Rig {
        env,
        col: mut dead,
        router,
        p,
        ..
    } = Setup::new("waitfor", &[200, 500], 1)
        .targets(0)
        .options(|o| o.limits.missing_target_wait = Duration::from_secs(4))
        .start()
        .await;
    let late_topic = format!("{}-created-later", env.prefix);
    let never_topic = format!("{}-never", env.prefix);
    let sent_at = now_ms();
    for (key, target) in [("late", &late_topic), ("never", &never_topic)] {
        produce(
            &p,
            env.tier(0),
            Some(0),
            Some(key.as_bytes()),
            Some(key.as_bytes()),
            &[hdr(TARGET, target.as_bytes())],
            None,
        )
        .await;
    }
    // A good record behind them is not held up while they wait.
    let good_target = format!("{}-good", env.prefix);
    kafka_delay_router::admin::create_target_topics(
        &kafka(),
        std::slice::from_ref(&good_target),
        false,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut good = Collector::start(&good_target);
    produce(
        &p,
        env.tier(0),
        Some(0),
        Some(b"good"),
        Some(b"good"),
        &[hdr(TARGET, good_target.as_bytes())],
        None,
    )
    .await;
    assert_eq!(
        good.wait_for(1, Duration::from_secs(5)).len(),
        1,
        "the partition keeps flowing"
    );
    // The owner creates the late topic within the wait: the record is delivered there.
    kafka_delay_router::admin::create_target_topics(
        &kafka(),
        std::slice::from_ref(&late_topic),
        false,
    )
    .await
    .unwrap();
    let mut late = Collector::start(&late_topic);
    assert_eq!(
        late.wait_for(1, Duration::from_secs(15)).len(),
        1,
        "delivered once its topic exists"
    );
    // The other one is dead-lettered, after the wait.
    let dl = dead.wait_for(1, Duration::from_secs(20)).to_vec();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].key.as_deref(), Some(&b"never"[..]));
    assert_eq!(
        dl[0].header(headers::DLQ_REASON).as_deref(),
        Some("target-not-found")
    );
    assert!(dl[0]
        .header(headers::DLQ_DETAIL)
        .unwrap()
        .contains("after waiting"));
    assert!(
        dl[0].timestamp - sent_at >= 4_000,
        "dead-lettered only after the wait"
    );
    let retries = settled_metric(
        &router,
        "kafka_delay_router_records_dead_lettered_total",
        &[("reason", "target-not-found")],
        1.0,
    )
    .await;
    assert_eq!(retries, 1.0);
    router.shutdown().await.unwrap();
    assert_committed_to_end(&env.group, env.tier(0), 1);
}
