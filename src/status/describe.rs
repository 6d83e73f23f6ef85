//! The group's description through librdkafka's DescribeConsumerGroups
//! admin call, which speaks both group protocols (the classic
//! DescribeGroups and KIP-848's ConsumerGroupDescribe) and decodes the
//! members' assignments itself. rust-rdkafka does not wrap this call, so it
//! is reached through `rdkafka-sys`; every pointer read here is owned by the
//! result event, which lives until the end of [`describe`]. Guarantee: any
//! failure (an error, a timeout, a group not found) is an `Err` with
//! librdkafka's reason, never a panic and never a partial answer.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka_sys as rd;

use crate::kafka::TracingContext;

/// A group as the broker describes it.
#[derive(Debug)]
pub struct Described {
    /// `Stable`, `Empty`, `PreparingRebalance`, ...
    pub state: String,
    /// `Classic` or `Consumer` (KIP-848).
    pub protocol: String,
    pub members: Vec<Member>,
}

/// A C string owned by the result event, or empty.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string alive for the call.
unsafe fn text(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// Frees what the call created, whatever path it leaves by.
struct Owned {
    queue: *mut rd::rd_kafka_queue_t,
    options: *mut rd::rd_kafka_AdminOptions_t,
    event: *mut rd::rd_kafka_event_t,
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: each pointer is null or was created by librdkafka for this
        // call and is destroyed exactly once, here.
        unsafe {
            if !self.event.is_null() {
                rd::rd_kafka_event_destroy(self.event);
            }
            if !self.options.is_null() {
                rd::rd_kafka_AdminOptions_destroy(self.options);
            }
            if !self.queue.is_null() {
                rd::rd_kafka_queue_destroy(self.queue);
            }
        }
    }
}

/// Describes `group` through `consumer`'s connection to the cluster.
pub fn describe(
    consumer: &BaseConsumer<TracingContext>,
    group: &str,
    timeout: Duration,
) -> Result<Described, String> {
    let name = CString::new(group).map_err(|_| "the group id contains a NUL byte".to_string())?;
    let rk = consumer.client().native_ptr();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the consumer's live handle (borrowed for the whole
    // call); the queue, options and event are freed by `Owned`; pointers
    // read from the result event are only used before it is destroyed.
    unsafe {
        let mut owned = Owned {
            queue: rd::rd_kafka_queue_new(rk),
            options: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            ),
            event: std::ptr::null_mut(),
        };
        let mut errstr = [0 as std::os::raw::c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            owned.options,
            ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let mut names = [name.as_ptr()];
        rd::rd_kafka_DescribeConsumerGroups(rk, names.as_mut_ptr(), 1, owned.options, owned.queue);
        owned.event = rd::rd_kafka_queue_poll(owned.queue, ms.saturating_add(1_000));
        if owned.event.is_null() {
            return Err(format!("no answer within {timeout:?}"));
        }
        if rd::rd_kafka_event_error(owned.event)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(text(rd::rd_kafka_event_error_string(owned.event)));
        }
        let result = rd::rd_kafka_event_DescribeConsumerGroups_result(owned.event);
        if result.is_null() {
            return Err("not a DescribeConsumerGroups result".into());
        }
        let mut count = 0usize;
        let groups = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        if groups.is_null() || count == 0 {
            return Err("the answer lists no group".into());
        }
        let desc = *groups;
        let error = rd::rd_kafka_ConsumerGroupDescription_error(desc);
        if !error.is_null() {
            return Err(text(rd::rd_kafka_error_string(error)));
        }
        let state = text(rd::rd_kafka_consumer_group_state_name(
            rd::rd_kafka_ConsumerGroupDescription_state(desc),
        ));
        let protocol = text(rd::rd_kafka_consumer_group_type_name(
            rd::rd_kafka_ConsumerGroupDescription_type(desc),
        ));
        let mut members = Vec::new();
        for i in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(desc) {
            let m = rd::rd_kafka_ConsumerGroupDescription_member(desc, i);
            if m.is_null() {
                continue;
            }
            let client = text(rd::rd_kafka_MemberDescription_client_id(m));
            let host = text(rd::rd_kafka_MemberDescription_host(m));
            let id = text(rd::rd_kafka_MemberDescription_consumer_id(m));
            let assignment = rd::rd_kafka_MemberDescription_assignment(m);
            let list = if assignment.is_null() {
                std::ptr::null()
            } else {
                rd::rd_kafka_MemberAssignment_partitions(assignment)
            };
            let assigned = (!list.is_null()).then(|| {
                let list = &*list;
                let elems = if list.elems.is_null() || list.cnt <= 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(list.elems, list.cnt as usize)
                };
                elems
                    .iter()
                    .map(|e| (text(e.topic), e.partition))
                    .collect::<Vec<_>>()
            });
            members.push(Member {
                who: member_name(&client, &host, &id),
                assigned,
            });
        }
        Ok(Described {
            state,
            protocol,
            members,
        })
    }
}

/// `client-id@host`, falling back to the member id when the broker leaves them out.
pub(super) fn member_name(client_id: &str, host: &str, member_id: &str) -> String {
    let name = if client_id.is_empty() {
        member_id
    } else {
        client_id
    };
    match host.trim_start_matches('/') {
        "" => name.to_string(),
        host => format!("{name}@{host}"),
    }
}

/// A group member as described: `client-id@host` and its decoded assignment, if reported.
#[derive(Debug, Clone)]
pub struct Member {
    /// `client-id@host`.
    pub who: String,
    /// Its (topic, partition) assignment, if the broker reported one and it could be decoded.
    pub assigned: Option<Vec<(String, i32)>>,
}
