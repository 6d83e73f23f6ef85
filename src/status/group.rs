//! Who owns which tier partition: the group's members from its description,
//! and their assignments decoded from Kafka's consumer protocol. Decoding
//! never panics: bytes that do not parse mean "not reported".

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::describe::member_name;
pub use super::describe::Member;
use crate::kafka::{TracingContext, ADMIN_TIMEOUT};

/// The topic partitions a member's assignment lists: Kafka's consumer
/// protocol `ConsumerProtocolAssignment` (version, then an array of topic
/// name and partition array; user data after it is not read). `None` when
/// the bytes do not parse as that.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let name = std::str::from_utf8(r.take(usize::try_from(len).ok()?)?).ok()?;
        let count = r.i32()?;
        for _ in 0..count.max(0) {
            out.push((name.to_string(), r.i32()?));
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Who owns which partition, from the group's description: its members
/// and, where the broker reports them, their assignments.
pub(super) fn owners(consumer: &BaseConsumer<TracingContext>, group: &str) -> Owners {
    // librdkafka's DescribeConsumerGroups speaks both group protocols; the
    // classic DescribeGroups below is the fallback for a broker without it.
    match super::describe::describe(consumer, group, ADMIN_TIMEOUT) {
        Ok(d) => {
            let mut owners = owners_of(&d.members);
            owners.state = Some(format!(
                "{}, {} protocol",
                d.state,
                d.protocol.to_lowercase()
            ));
            return owners;
        }
        Err(e) => {
            tracing::debug!(error = %e, group, "DescribeConsumerGroups failed; trying DescribeGroups")
        }
    }
    let list = match consumer.fetch_group_list(Some(group), ADMIN_TIMEOUT) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, group, "describing the group failed; owners unknown");
            return Owners::default();
        }
    };
    let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
        return Owners::default();
    };
    let members: Vec<Member> = g
        .members()
        .iter()
        .map(|m| Member {
            who: member_name(m.client_id(), m.client_host(), m.id()),
            assigned: m
                .assignment()
                .filter(|a| !a.is_empty())
                .and_then(decode_assignment),
        })
        .collect();
    let mut owners = owners_of(&members);
    owners.state = Some(g.state().to_string());
    owners
}

/// Partition owners worked out from a group's members.
#[derive(Debug, Default)]
pub struct Owners {
    /// Each assigned (topic, partition)'s owner, `client-id@host`.
    pub by_partition: HashMap<(String, i32), String>,
    /// Whether every partition's owner is known: every member's assignment
    /// was reported (Apache Kafka reports them; a broker that leaves them out
    /// leaves the owners unknown, shown as `?`).
    pub known: bool,
    /// Every member, `client-id@host`.
    pub members: Vec<String>,
    /// The group's state, if known.
    pub state: Option<String>,
}

impl Owners {
    /// The owner of a partition, as the members' assignments report it.
    pub fn of(&self, tier: &str, partition: i32) -> Option<String> {
        self.by_partition
            .get(&(tier.to_string(), partition))
            .cloned()
    }
}

/// Who owns what, from the members' reported assignments. (An empty group
/// owns nothing, and that is known.)
pub fn owners_of(members: &[Member]) -> Owners {
    let reported = members.iter().all(|m| m.assigned.is_some());
    let mut by_partition = HashMap::new();
    for m in members {
        for tp in m.assigned.iter().flatten() {
            by_partition.insert(tp.clone(), m.who.clone());
        }
    }
    Owners {
        by_partition,
        known: reported,
        members: members.iter().map(|m| m.who.clone()).collect(),
        state: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (name, parts) in topics {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in *parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // null user data
        b
    }

    #[test]
    fn assignments_decode_for_every_protocol_version() {
        for v in 0..=3 {
            let bytes = assignment(v, &[("delay-1s", &[0, 2]), ("delay-5s", &[1])]);
            assert_eq!(
                decode_assignment(&bytes).unwrap(),
                vec![
                    ("delay-1s".to_string(), 0),
                    ("delay-1s".to_string(), 2),
                    ("delay-5s".to_string(), 1)
                ]
            );
        }
        assert_eq!(decode_assignment(&assignment(0, &[])).unwrap(), vec![]);
    }

    #[test]
    fn truncated_or_garbage_assignments_are_none_not_a_panic() {
        let bytes = assignment(1, &[("delay-1s", &[0, 1, 2])]);
        for cut in 0..bytes.len() - 4 {
            if cut == 6 {
                continue; // version and a zero-topic count: not reachable with this list
            }
            assert_eq!(decode_assignment(&bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_assignment(&[0, 0, 0, 0, 0, 1, 0xff, 0xff]), None);
        assert_eq!(
            decode_assignment(&[0, 0, 0, 0, 0, 1, 0, 2, 0xc3, 0x28]),
            None
        );
    }

    fn member(who: &str, assigned: Option<&[(&str, i32)]>) -> Member {
        Member {
            who: who.into(),
            assigned: assigned.map(|a| a.iter().map(|(t, p)| (t.to_string(), *p)).collect()),
        }
    }

    #[test]
    fn members_are_named_by_client_and_host_or_their_id() {
        assert_eq!(member_name("router", "/10.0.0.5", "m-1"), "router@10.0.0.5");
        assert_eq!(member_name("", "", "m-1"), "m-1");
        assert_eq!(member_name("router", "", "m-1"), "router");
    }

    #[test]
    fn owners_come_from_the_reported_assignments() {
        let o = owners_of(&[
            member("a@h1", Some(&[("d1s", 0)])),
            member("b@h2", Some(&[("d1s", 1)])),
        ]);
        assert!(o.known);
        assert_eq!(o.of("d1s", 0).as_deref(), Some("a@h1"));
        assert_eq!(o.of("d1s", 1).as_deref(), Some("b@h2"));
        assert_eq!(o.of("d1m", 0), None, "assigned to nobody");
        // Assignments not reported: unknown, even for a lone member.
        let lone = owners_of(&[member("a@h1", None)]);
        assert!(!lone.known);
        assert_eq!(lone.of("d1s", 3), None);
        let several = owners_of(&[member("a@h1", None), member("b@h2", None)]);
        assert!(!several.known);
        assert_eq!(several.of("d1s", 0), None);
        let empty = owners_of(&[]);
        assert!(empty.known);
        assert_eq!(empty.of("d1s", 0), None, "an empty group owns nothing");
    }
}
