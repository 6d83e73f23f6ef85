//! What each subcommand does, as library functions the binary calls and tests
//! can call too. Output goes to the writer given; errors are returned.

use std::io::{BufRead, Write};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::cli::{
    parse_header, CancelArgs, CreateTopicsArgs, KafkaArgs, PlanArgs, ProduceArgs, RunArgs,
    StatusArgs, UnsafeArgs, WatchArgs,
};
use crate::config::TopicsConfig;
use crate::duration::format_ms;
use crate::error::{Error, Result};
use crate::exactly_once::ExactlyOnce;
use crate::kafka::{now_ms, KafkaSettings};
use crate::partition::Limits;
use crate::producer::{DelayProducer, When};
use crate::router::{Router, RouterOptions};
use crate::{status, watch};

/// The client settings of a command that produces or routes, with the
/// `--unsafe-override` keys it may pass ([`KafkaSettings::allow_unsafe`]).
fn guarded_settings(args: &KafkaArgs, allow: &UnsafeArgs) -> Result<KafkaSettings> {
    settings(args)?.allow_unsafe(&allow.unsafe_overrides)
}

fn settings(args: &KafkaArgs) -> Result<KafkaSettings> {
    KafkaSettings::new(&args.bootstrap_servers)
        .with_overrides(&args.security_settings())?
        .with_overrides(&args.settings)
}

/// `run`: routes until `stop` is cancelled (SIGINT/SIGTERM in the binary).
pub async fn run(args: RunArgs, stop: CancellationToken) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    // Refused `-X` settings are checked by `Router::start`, before any connection.
    let kafka = guarded_settings(&args.kafka, &args.allow)?;
    if !kafka.overrides.is_empty() {
        tracing::info!(settings = %kafka.describe(), "librdkafka overrides");
    }
    let mut options = RouterOptions::new(kafka);
    if args.exactly_once {
        options.exactly_once = Some(ExactlyOnce {
            id_prefix: args
                .transactional_id_prefix
                .unwrap_or_else(|| args.group_id.clone()),
            interval: args.transaction_interval.max(Duration::from_millis(1)),
        });
    }
    options.group_id = args.group_id;
    options.group_protocol = args.group_protocol;
    options.tiers = args.tiers;
    options.metrics_addr = Some(args.metrics_addr);
    options.drain_timeout = args.drain_timeout;
    options.limits = Limits {
        max_in_flight: args.max_in_flight.max(1),
        max_held: args.max_held.max(1),
        max_held_bytes: args.max_held_bytes,
        missing_target_wait: args.missing_target_wait,
        skip_unreadable: args.skip_unreadable,
        ..Limits::default()
    };
    options.cancel_limits = crate::cancel::CancelLimits {
        max_cancellations: args.max_cancellations,
    };
    let router = Router::start(config, options).await?;
    let token = router.cancel_token();
    tokio::spawn(async move {
        stop.cancelled().await;
        tracing::info!("stop requested; draining");
        token.cancel();
    });
    router.wait().await
}

/// `create-topics`: prints one line per topic; fails with [`Error::Drift`] when existing topics differ.
pub async fn create_topics(args: CreateTopicsArgs, out: &mut impl Write) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    let kafka = settings(&args.kafka)?;
    let report = admin::create_topics(&config, &kafka, args.dry_run).await?;
    let mut lines = report.lines.clone();
    if !args.target_topics.is_empty() {
        lines.extend(admin::create_target_topics(&kafka, &args.target_topics, args.dry_run).await?);
    }
    for line in &lines {
        let _ = writeln!(out, "{line}");
    }
    if report.drift > 0 {
        return Err(Error::Drift {
            count: report.drift,
        });
    }
    Ok(())
}

/// `produce`: one record from the argument, or one per line of `input`.
pub async fn produce(args: ProduceArgs, input: impl BufRead, out: &mut impl Write) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    // DelayProducer::new refuses (or, allowed, warns about) unsafe settings.
    let kafka = guarded_settings(&args.kafka, &args.allow)?;
    let mut headers = args
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|problem| Error::Usage {
            flag: "--header".into(),
            problem,
        })?;
    if let Some(id) = &args.id {
        headers.push((crate::cancel::ID_HEADER.to_string(), id.as_bytes().to_vec()));
    }
    let when = match (args.delay, args.at) {
        (Some(d), _) => When::After(d),
        (None, Some(t)) => When::At(t),
        (None, None) => {
            return Err(Error::Usage {
                flag: "--delay/--at".into(),
                problem: "give one of them".into(),
            })
        }
    };
    let producer = DelayProducer::new(&kafka, config)?;
    producer
        .check_connection(crate::kafka::ADMIN_TIMEOUT)
        .await?;
    let values: Vec<String> = match args.value {
        Some(v) => vec![v],
        None => input
            .lines()
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::Usage {
                flag: "stdin".into(),
                problem: e.to_string(),
            })?,
    };
    let key = args.key.as_deref().map(str::as_bytes);
    let mut values = values.as_slice();
    if let Some(old) = &args.reschedule {
        let Some((first, rest)) = values.split_first() else {
            return Err(Error::Usage {
                flag: "--reschedule".into(),
                problem: "no record to send in place of the cancelled one".into(),
            });
        };
        let (cancelled, sent) = producer
            .reschedule(
                old.as_bytes(),
                &args.target,
                key,
                Some(first.as_bytes()),
                &headers,
                when,
            )
            .await?;
        let _ = writeln!(out, "{}", describe_cancel(old, &cancelled));
        let _ = writeln!(out, "{}", describe_sent(first, &sent));
        values = rest;
    }
    let sends = values
        .iter()
        .map(|v| producer.send(&args.target, key, Some(v.as_bytes()), &headers, when));
    for (value, sent) in values.iter().zip(futures::future::join_all(sends).await) {
        let _ = writeln!(out, "{}", describe_sent(value, &sent?));
    }
    producer.flush(Duration::from_secs(10))
}

fn describe_sent(value: &str, sent: &crate::producer::Sent) -> String {
    format!(
        "sent {:?} to {} p{}@{}, due {} (in {})",
        crate::headers::shorten(value),
        sent.tier_topic,
        sent.partition,
        sent.offset,
        watch::format_time(sent.deliver_at_ms),
        format_ms((sent.deliver_at_ms - now_ms()).max(0) as u64)
    )
}

fn describe_cancel(id: &str, c: &crate::producer::Cancelled) -> String {
    format!(
        "cancelled {:?} on {} p{}@{}, acknowledged {}, kept until {}",
        crate::headers::shorten(id),
        c.topic,
        c.partition,
        c.offset,
        watch::format_time(c.acked_ms),
        watch::format_time(c.until_ms)
    )
}

/// `cancel`: writes one cancellation and prints where it went.
pub async fn cancel(args: CancelArgs, out: &mut impl Write) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    let kafka = guarded_settings(&args.kafka, &args.allow)?;
    let until = match (args.until, args.for_) {
        (Some(t), _) => Some(When::At(t)),
        (None, Some(d)) => Some(When::After(d)),
        (None, None) => None,
    };
    let producer = DelayProducer::new(&kafka, config)?;
    producer
        .check_connection(crate::kafka::ADMIN_TIMEOUT)
        .await?;
    let cancelled = producer.cancel(args.id.as_bytes(), until).await?;
    let _ = writeln!(out, "{}", describe_cancel(&args.id, &cancelled));
    producer.flush(Duration::from_secs(10))
}

/// `plan`: the hop plan, e.g. `delay-1h, delay-10m x3, delay-1m x5`.
pub fn plan(args: PlanArgs, out: &mut impl Write) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    let delay_ms = args.delay.as_millis().min(u64::MAX as u128) as u64;
    if delay_ms > config.max_delay_ms {
        return Err(Error::DelayTooLong {
            requested_ms: delay_ms.min(i64::MAX as u64) as i64,
            max_ms: config.max_delay_ms as i64,
        });
    }
    let _ = out.write_all(describe_plan(&config, delay_ms).as_bytes());
    Ok(())
}

/// The text `plan` prints.
pub fn describe_plan(config: &TopicsConfig, delay_ms: u64) -> String {
    let tiers = config.tier_set();
    let p = tiers.plan(delay_ms);
    let mut s = format!("delay {}\n", format_ms(delay_ms));
    let mut elapsed = 0u64;
    let mut left = delay_ms;
    for (i, (tier, n)) in p.runs().into_iter().enumerate() {
        let name = config.tiers[tier].topic();
        let d = tiers.delay(tier);
        let mut spent = 0;
        for _ in 0..n {
            let step = left.min(d);
            spent += step;
            left -= step;
        }
        elapsed += spent;
        let label = if n > 1 {
            format!("{name} x{n}")
        } else {
            name.to_string()
        };
        let cut = if spent < d * n as u64 {
            " (cut short by delay-deliver-at)"
        } else {
            ""
        };
        s.push_str(&format!(
            "  {}. {label:<16} {:>8}  until +{}{cut}\n",
            i + 1,
            format_ms(spent),
            format_ms(elapsed)
        ));
    }
    if p.held_ms > 0 {
        s.push_str(&format!(
            "  then held in memory {} and delivered at +{}\n",
            format_ms(p.held_ms),
            format_ms(delay_ms)
        ));
    } else {
        s.push_str(&format!("  then delivered at +{}\n", format_ms(delay_ms)));
    }
    s.push_str(&format!(
        "Kafka writes per record: {} (1 into the entry tier, {} forwards, 1 delivery)\n",
        p.kafka_writes(),
        p.tiers.len() - 1
    ));
    s
}

/// `watch`: prints arrivals until `--count` or `--timeout`.
pub fn watch(args: WatchArgs, out: &mut impl Write) -> Result<()> {
    let kafka = settings(&args.kafka)?;
    let since = now_ms() - args.since.as_millis() as i64;
    let seen = watch::watch(&kafka, &args.topic, since, args.count, args.timeout, |a| {
        let _ = writeln!(out, "{}", a.describe());
        let _ = out.flush();
    })?;
    let late: Vec<i64> = seen.iter().filter_map(|a| a.lateness_ms()).collect();
    if !late.is_empty() {
        let early = late.iter().filter(|l| **l < 0).count();
        let _ = writeln!(
            out,
            "{} records; lateness min {} ms, max {} ms; early {early}",
            seen.len(),
            late.iter().min().expect("non-empty"),
            late.iter().max().expect("non-empty")
        );
    }
    match args.count {
        Some(c) if seen.len() < c => Err(Error::Fatal(format!(
            "saw {} of {c} records on {} within {}",
            seen.len(),
            args.topic,
            format_ms(args.timeout.as_millis() as u64)
        ))),
        _ => Ok(()),
    }
}

/// `status`: the backlog per tier and partition, as a table or `--json` (blocking).
pub fn status(args: StatusArgs, out: &mut impl Write) -> Result<()> {
    let config = TopicsConfig::load(&args.config.config)?;
    let kafka = settings(&args.kafka)?;
    let report = status::collect(&config, &kafka, &args.group_id, args.timeout, now_ms())?;
    let text = if args.json {
        serde_json::to_string_pretty(&report).expect("a status report serializes") + "\n"
    } else {
        status::render(&report)
    };
    out.write_all(text.as_bytes())
        .map_err(|e| Error::Fatal(format!("writing the status: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_text_for_95_minutes() {
        let config =
            TopicsConfig::load(concat!(env!("CARGO_MANIFEST_DIR"), "/topics.yaml")).unwrap();
        let text = describe_plan(&config, 95 * 60_000);
        assert!(text.contains("1. delay-1h"), "{text}");
        assert!(text.contains("2. delay-10m x3"), "{text}");
        assert!(text.contains("3. delay-1m x5"), "{text}");
        assert!(text.contains("delivered at +1h35m"), "{text}");
        assert!(text.contains("Kafka writes per record: 10"), "{text}");
    }

    #[test]
    fn plan_text_with_a_hold() {
        let config =
            TopicsConfig::load(concat!(env!("CARGO_MANIFEST_DIR"), "/topics.yaml")).unwrap();
        let text = describe_plan(&config, 1_500);
        assert!(text.contains("held in memory 500ms"), "{text}");
        let text = describe_plan(&config, 300);
        assert!(text.contains("cut short"), "{text}");
    }
}
