//! kafka-delay-router: delayed delivery for Apache Kafka with nothing but Kafka.
//!
//! Records wait in fixed-delay tier topics; one task per tier partition looks
//! only at its head record, pauses the partition until the head is due, then
//! delivers it to its `delay-target` topic or forwards it to the next tier that
//! fits. See README.md for the wire contract and docs/guarantees.md for the guarantees.
//!
//! Where things live:
//! - [`config`]: `topics.yaml`, parsed and validated; [`duration`]: `95m`-style durations.
//! - [`delay`]: the pure delay arithmetic (tier choice, hop plan).
//! - [`headers`]: the wire contract; [`dead_letter`]: reasons and dead-letter headers.
//! - [`partition`]: the per-partition task: its loop, and beside it the pure
//!   parts (look-ahead window, admission and failure policy, cancellation gate,
//!   offset tracker, commit mode, byte budget) and its consumer and producer I/O;
//!   [`consumer`]: the tier consumer, its rebalance callbacks and each partition's
//!   queue; [`coordinator`]: the partition tasks' lifecycle.
//! - [`sink`]: the producer and target-topic cache; [`router`]: the service wiring.
//! - [`exactly_once`]: transactional producers and resume points for `run --exactly-once`.
//! - [`metrics`] and [`http`]: Prometheus metrics and the endpoint; [`backlog`]:
//!   the head due-in and overdue gauges, worked out at each scrape.
//! - [`status`]: the `status` command's backlog report;
//! - [`cancel`]: the cancel topic read into a shared view of cancelled `delay-id`s
//!   (a reader thread, and a sampler thread that vouches for the view's freshness).
//! - [`targets`]: the target allow-list (which topics the router may deliver to).
//! - [`admin`]: `create-topics`; [`producer`]: the `DelayProducer` API; [`watch`]: arrival watching.
//! - [`cli`] and [`commands`]: the command line; [`kafka`]: client settings, the
//!   guard on `-X` overrides and the logging context;
//!   [`membership`]: the group protocol (classic or KIP-848); [`error`]: the error type;
//!   [`connection`]: why the cluster could not be reached, and the setting to fix.
//!
//! # Producing and cancelling
//!
//! A [`DelayProducer`] is built from the client settings and the same
//! `topics.yaml` the routers read; [`DelayProducer::send`] returns once the
//! broker has acknowledged the record in its tier topic:
//!
//! ```no_run
//! use std::time::Duration;
//! use kafka_delay_router::{DelayProducer, KafkaSettings, TopicsConfig, When};
//!
//! # async fn example() -> kafka_delay_router::Result<()> {
//! let kafka = KafkaSettings::new("localhost:9092");
//! let producer = DelayProducer::new(&kafka, TopicsConfig::load("topics.yaml")?)?;
//! let sent = producer
//!     .send("orders", Some(b"order-42"), Some(b"{}"), &[], When::After(Duration::from_secs(600)))
//!     .await?;
//! println!("in {} until {} (epoch ms)", sent.tier_topic, sent.deliver_at_ms);
//! # Ok(())
//! # }
//! ```
//!
//! A record sent with a `delay-id` header ([`cancel::ID_HEADER`]) can be
//! cancelled when the topics file declares a cancel topic:
//! [`DelayProducer::cancel`] writes the id to the cancel topic, and until the
//! cancellation expires the routers neither forward nor deliver a record with
//! that id that is due after the cancellation was acknowledged
//! ([`producer::Cancelled::acked_ms`]):
//!
//! ```no_run
//! # use std::time::Duration;
//! # use kafka_delay_router::{DelayProducer, KafkaSettings, TopicsConfig, When};
//! use kafka_delay_router::cancel::ID_HEADER;
//!
//! # async fn example() -> kafka_delay_router::Result<()> {
//! # let producer = DelayProducer::new(
//! #     &KafkaSettings::new("localhost:9092"),
//! #     TopicsConfig::load("topics.yaml")?,
//! # )?;
//! let headers = [(ID_HEADER.to_string(), b"reminder-7".to_vec())];
//! producer
//!     .send("reminders", None, Some(b"ping"), &headers, When::After(Duration::from_secs(3600)))
//!     .await?;
//! // Changed our mind: cancel it, remembered for `max-delay` from now (`None`).
//! let cancelled = producer.cancel(b"reminder-7", None).await?;
//! println!("cancelled at offset {} of {}", cancelled.offset, cancelled.topic);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod backlog;
pub mod cancel;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod coordinator;
pub mod dead_letter;
pub mod delay;
pub mod duration;
pub mod error;
pub mod exactly_once;
pub mod headers;
pub mod http;
pub mod kafka;
pub mod membership;
pub mod metrics;
pub mod partition;
pub mod producer;
pub mod router;
pub mod sink;
pub mod status;
pub mod targets;
pub mod watch;

pub use config::TopicsConfig;
pub use error::{Error, Result};
pub use kafka::KafkaSettings;
pub use producer::{DelayProducer, When};
pub use router::{Router, RouterOptions};
