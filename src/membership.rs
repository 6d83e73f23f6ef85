//! How router instances form their consumer group: Kafka's classic group
//! protocol or the consumer protocol of Kafka 4 (KIP-848), and the client
//! settings each one takes. Guarantee: a setting that only one protocol
//! understands is refused, with the flag or broker setting to use instead,
//! before the router connects; the rest of the router is the same under both
//! (the rebalance callbacks are incremental-safe: an assignment starts tasks
//! for the partitions it names, a revoke stops the ones it names).

use std::fmt;
use std::str::FromStr;

use rdkafka::ClientConfig;

use crate::error::{Error, Result};
use crate::kafka::KafkaSettings;

/// The consumer group protocol the tier consumer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupProtocol {
    /// The classic protocol: the members rebalance among themselves (eager,
    /// with the range assignor), the client sets the session timeout. Every
    /// Kafka version has it.
    #[default]
    Classic,
    /// KIP-848 (Kafka 4.0 or later): the broker assigns partitions
    /// incrementally and owns the session timeout
    /// (`group.consumer.session.timeout.ms`, 45 s by default).
    Consumer,
}

impl GroupProtocol {
    /// The value of librdkafka's `group.protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }

    /// Settings the classic protocol takes from the client and the consumer
    /// protocol does not: librdkafka refuses them with `group.protocol=consumer`.
    const CLASSIC_ONLY: &'static [(&'static str, &'static str)] = &[
        (
            "session.timeout.ms",
            "the broker's group.consumer.session.timeout.ms",
        ),
        (
            "heartbeat.interval.ms",
            "the broker's group.consumer.heartbeat.interval.ms",
        ),
        (
            "partition.assignment.strategy",
            "-X group.remote.assignor (uniform or range)",
        ),
        ("group.protocol.type", "nothing: the protocol has no type"),
    ];

    /// Refuses `-X` settings that contradict the protocol: `group.protocol`
    /// itself (the flag decides), and under the consumer protocol the
    /// settings the broker owns.
    pub fn check(self, kafka: &KafkaSettings) -> Result<()> {
        for (key, _) in &kafka.overrides {
            if key == "group.protocol" {
                return Err(Error::Usage {
                    flag: "-X group.protocol".into(),
                    problem: "set the group protocol with --group-protocol classic|consumer \
                              (the router adjusts its other consumer settings to it)"
                        .into(),
                });
            }
            if self == GroupProtocol::Consumer {
                if let Some((_, instead)) = Self::CLASSIC_ONLY.iter().find(|(k, _)| k == key) {
                    return Err(Error::Usage {
                        flag: format!("-X {key}"),
                        problem: format!(
                            "does not apply with --group-protocol consumer (KIP-848): use {instead}, \
                             or --group-protocol classic"
                        ),
                    });
                }
            }
            if self == GroupProtocol::Classic && key == "group.remote.assignor" {
                return Err(Error::Usage {
                    flag: "-X group.remote.assignor".into(),
                    problem: "applies only with --group-protocol consumer".into(),
                });
            }
        }
        Ok(())
    }

    /// Adapts the tier consumer's settings: the consumer protocol drops the
    /// client-side session and heartbeat settings (the broker owns them).
    pub fn apply(self, config: &mut ClientConfig) {
        config.set("group.protocol", self.as_str());
        if self == GroupProtocol::Consumer {
            for (key, _) in Self::CLASSIC_ONLY {
                config.remove(key);
            }
        }
    }
}

impl fmt::Display for GroupProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GroupProtocol {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "classic" => Ok(GroupProtocol::Classic),
            "consumer" => Ok(GroupProtocol::Consumer),
            other => Err(format!(
                "unknown group protocol {other:?}: classic or consumer"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[&str]) -> KafkaSettings {
        KafkaSettings::new("b")
            .with_overrides(&pairs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
    }

    #[test]
    fn the_consumer_protocol_drops_what_the_broker_owns() {
        let kafka = KafkaSettings::new("b");
        let mut c = kafka.consumer_config("g");
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        GroupProtocol::Consumer.apply(&mut c);
        assert_eq!(c.get("group.protocol"), Some("consumer"));
        assert_eq!(c.get("session.timeout.ms"), None);
        assert_eq!(c.get("heartbeat.interval.ms"), None);
        assert_eq!(c.get("group.id"), Some("g"));

        let mut c = kafka.consumer_config("g");
        GroupProtocol::Classic.apply(&mut c);
        assert_eq!(c.get("group.protocol"), Some("classic"));
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("1000"));
    }

    #[test]
    fn settings_of_the_other_protocol_are_refused_with_what_to_use() {
        for key in [
            "session.timeout.ms=6000",
            "heartbeat.interval.ms=500",
            "partition.assignment.strategy=roundrobin",
            "group.protocol.type=consumer",
        ] {
            assert!(GroupProtocol::Classic.check(&with(&[key])).is_ok(), "{key}");
            let e = GroupProtocol::Consumer
                .check(&with(&[key]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--group-protocol"), "{key}: {e}");
        }
        let e = GroupProtocol::Consumer
            .check(&with(&["session.timeout.ms=6000"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group.consumer.session.timeout.ms"), "{e}");
        assert!(GroupProtocol::Consumer
            .check(&with(&["group.remote.assignor=range"]))
            .is_ok());
        assert!(GroupProtocol::Classic
            .check(&with(&["group.remote.assignor=range"]))
            .is_err());
        for p in [GroupProtocol::Classic, GroupProtocol::Consumer] {
            let e = p
                .check(&with(&["group.protocol=consumer"]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--group-protocol"), "{e}");
            assert!(p.check(&with(&["fetch.wait.max.ms=10"])).is_ok());
        }
    }

    #[test]
    fn parses_and_prints_its_names() {
        for p in [GroupProtocol::Classic, GroupProtocol::Consumer] {
            assert_eq!(p.as_str().parse::<GroupProtocol>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert!("eager".parse::<GroupProtocol>().is_err());
        assert_eq!(GroupProtocol::default(), GroupProtocol::Classic);
    }
}
