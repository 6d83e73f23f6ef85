//! The router's byte budget for records held in memory: every partition task
//! adds the records it has read and not yet finished (waiting, held, in
//! flight) and takes them back when they are acknowledged, when it rewinds
//! and when it ends. A task reads a record only while the whole router is
//! under the budget, or when it holds nothing itself (so every partition can
//! always read its head): the router holds at most the budget plus one
//! record per partition, however dense the bursts.

use std::sync::Arc;

use prometheus::IntGauge;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Notify;

/// What a record costs beside its key, value and headers: the message and
/// routing structs, the heap entry, the offset bookkeeping (an estimate).
pub const RECORD_OVERHEAD: usize = 256;

/// The bytes one record read from a tier occupies while the router holds it.
pub fn record_bytes(msg: &OwnedMessage) -> usize {
    // The crate's own iterator: rdkafka's panics on a header key that is not UTF-8.
    let headers = msg.headers().map_or(0, |h| {
        crate::headers::iter(h.as_borrowed())
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 32)
            .sum()
    });
    RECORD_OVERHEAD
        + msg.key().map_or(0, <[u8]>::len)
        + msg.payload().map_or(0, <[u8]>::len)
        + msg.topic().len()
        + headers
}

/// The budget shared by every partition task of one router.
pub struct ByteBudget {
    limit: i64,
    /// Bytes held now, as exported (`kafka_delay_router_held_bytes`).
    held: IntGauge,
    room: Notify,
}

impl ByteBudget {
    /// A budget of `limit` bytes, exporting what is held on `held`.
    pub fn new(limit: usize, held: IntGauge) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit: limit.min(i64::MAX as usize) as i64,
            held,
            room: Notify::new(),
        })
    }

    /// Whether the router holds less than the limit.
    pub fn has_room(&self) -> bool {
        self.held.get() < self.limit
    }

    /// Notified when the router goes back under the budget.
    pub fn room(&self) -> &Notify {
        &self.room
    }

    /// Bytes held now by every task.
    pub fn held(&self) -> i64 {
        self.held.get()
    }
}

/// One partition task's part of the budget, given back when dropped.
pub struct BudgetShare {
    budget: Arc<ByteBudget>,
    mine: i64,
}

impl BudgetShare {
    /// A share holding nothing yet.
    pub fn new(budget: Arc<ByteBudget>) -> Self {
        BudgetShare { budget, mine: 0 }
    }

    /// Whether this task may read another record now.
    pub fn may_read(&self) -> bool {
        self.mine == 0 || self.budget.has_room()
    }

    /// Whether reading waits for the budget (only the router's other tasks free it).
    pub fn exhausted(&self) -> bool {
        !self.may_read()
    }

    /// Counts `bytes` more held by this task.
    pub fn add(&mut self, bytes: usize) {
        self.mine += bytes as i64;
        self.budget.held.add(bytes as i64);
    }

    /// Gives back `bytes` (at most what this task holds).
    pub fn sub(&mut self, bytes: usize) {
        let bytes = (bytes as i64).min(self.mine);
        self.mine -= bytes;
        self.give_back(bytes);
    }

    /// Gives back everything this task holds (a rewind forgets its records).
    pub fn clear(&mut self) {
        let all = std::mem::take(&mut self.mine);
        self.give_back(all);
    }

    /// Bytes this task holds.
    pub fn mine(&self) -> i64 {
        self.mine
    }

    fn give_back(&self, bytes: i64) {
        if bytes == 0 {
            return;
        }
        let before = self.budget.held.get();
        self.budget.held.sub(bytes);
        if before >= self.budget.limit && before - bytes < self.budget.limit {
            self.budget.room.notify_waiters();
        }
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;

    fn budget(limit: usize) -> Arc<ByteBudget> {
        ByteBudget::new(limit, IntGauge::new("h", "h").unwrap())
    }

    #[test]
    fn a_record_costs_its_bytes_and_the_overhead() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "delay-target",
            value: Some("orders"),
        });
        let msg = OwnedMessage::new(
            Some(vec![0; 1_000]),
            Some(b"key".to_vec()),
            "delay-1s".into(),
            Timestamp::CreateTime(0),
            0,
            7,
            Some(headers),
        );
        assert_eq!(
            record_bytes(&msg),
            RECORD_OVERHEAD + 1_000 + 3 + 8 + (12 + 6 + 32)
        );
        let bare = OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        assert_eq!(record_bytes(&bare), RECORD_OVERHEAD + 1);
    }

    #[test]
    fn tasks_read_while_the_router_is_under_the_budget_or_they_hold_nothing() {
        let b = budget(1_000);
        let (mut one, mut two) = (BudgetShare::new(b.clone()), BudgetShare::new(b.clone()));
        assert!(one.may_read() && two.may_read());
        one.add(600);
        assert!(one.may_read(), "600 of 1000");
        one.add(600);
        assert_eq!(b.held(), 1_200);
        assert!(!one.may_read(), "over the budget");
        assert!(two.may_read(), "a task holding nothing may read its head");
        two.add(300);
        assert!(two.exhausted());
        one.sub(600);
        assert_eq!(b.held(), 900);
        assert!(one.may_read() && two.may_read());
    }

    #[tokio::test]
    async fn going_back_under_the_budget_wakes_the_waiting_tasks() {
        let b = budget(1_000);
        let mut one = BudgetShare::new(b.clone());
        one.add(1_500);
        let waiting = b.room().notified();
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        one.sub(200);
        assert!(futures::poll!(waiting.as_mut()).is_pending(), "still over");
        one.sub(400);
        assert!(futures::poll!(waiting.as_mut()).is_ready());
    }

    #[test]
    fn a_share_gives_everything_back_when_cleared_or_dropped() {
        let b = budget(1_000);
        let mut one = BudgetShare::new(b.clone());
        one.add(700);
        one.sub(10_000);
        assert_eq!((one.mine(), b.held()), (0, 0), "never more than it took");
        one.add(700);
        one.clear();
        assert_eq!(b.held(), 0);
        let mut two = BudgetShare::new(b.clone());
        two.add(300);
        drop(two);
        assert_eq!(b.held(), 0);
    }
}
