//! What a failed transaction call means for a partition task (abort, replace
//! the producer, stop because it was fenced, or call a timed-out commit
//! again), as librdkafka's error flags say; pure, apart from the retry loop.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::TXN_TIMEOUT;

/// Calls `call` (with the time it may take) until it succeeds, `classify`
/// says to stop, or `deadline` passes.
pub(super) fn retry_until<E>(
    deadline: Instant,
    mut call: impl FnMut(Duration) -> std::result::Result<(), E>,
    classify: impl Fn(&E, Duration) -> TxnAction,
) -> std::result::Result<(), (TxnFailure, E)> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match call(left.clamp(Duration::from_secs(1), TXN_TIMEOUT)) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match classify(&error, deadline.saturating_duration_since(Instant::now())) {
            TxnAction::Fail(failure) => return Err((failure, error)),
            TxnAction::Retry => {
                tracing::warn!(
                    "a transaction call timed out and goes on in the background; calling it again"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a failed transaction call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnFailure {
    /// Abort the transaction and redo its records.
    Abort,
    /// The producer is unusable (broken): replace it and redo.
    Replace,
    /// A newer producer with the same transactional id (a new owner of the
    /// partition) fenced this one: stop producing for the partition; a new
    /// producer would fence the new owner back.
    Fenced,
    /// The commit may or may not have happened (it was still retriable when
    /// the transaction's time ran out): replace the producer (its
    /// initialisation finishes or aborts what is pending) and resume from the
    /// committed position read again.
    Uncertain,
}

/// What to do after a failed commit call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAction {
    /// Call it again: it goes on in the background.
    Retry,
    /// Give the transaction up.
    Fail(TxnFailure),
}

/// What librdkafka says about a failed transaction call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxnError {
    /// The error code, if there is one.
    pub code: Option<RDKafkaErrorCode>,
    /// librdkafka calls it fatal: the producer cannot be used any more.
    pub fatal: bool,
    /// librdkafka says the call may be retried.
    pub retriable: bool,
    /// librdkafka says the transaction must be aborted.
    pub requires_abort: bool,
}

impl TxnError {
    /// Reads the flags of a transaction error; any other error gives only its code.
    pub fn of(error: &KafkaError) -> Self {
        match error {
            KafkaError::Transaction(e) => TxnError {
                code: Some(e.code()),
                fatal: e.is_fatal(),
                retriable: e.is_retriable(),
                requires_abort: e.txn_requires_abort(),
            },
            other => TxnError {
                code: other.rdkafka_error_code(),
                ..TxnError::default()
            },
        }
    }

    /// The failure of a call that is not retried (begin, a produce).
    pub fn failure(self) -> TxnFailure {
        if self.code.is_some_and(is_fenced) {
            TxnFailure::Fenced
        } else if self.fatal {
            TxnFailure::Replace
        } else {
            // Abortable or other: nothing of this transaction was committed.
            TxnFailure::Abort
        }
    }
}

/// Whether an error code says a newer producer took the transactional id over.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

/// What to do after a failed `send_offsets_to_transaction` or
/// `commit_transaction`, with `left` until the broker aborts the transaction:
/// as librdkafka documents, a retriable error (a timeout: the call goes on in
/// the background) is called again, an abortable one is aborted (the commit
/// did not happen), a fenced one stops the task, and any other is uncertain:
/// a new producer, and the committed position read again.
pub fn commit_action(error: TxnError, left: Duration) -> TxnAction {
    if error.retriable && !error.fatal && !error.requires_abort {
        return if left.is_zero() {
            TxnAction::Fail(TxnFailure::Uncertain)
        } else {
            TxnAction::Retry
        };
    }
    match error.failure() {
        // Only an abortable error says the commit did not happen; after any
        // other (a fatal one: the producer broke while its EndTxn may already
        // have been written) the committed position is read again, or
        // records committed would be produced twice.
        TxnFailure::Replace => TxnAction::Fail(TxnFailure::Uncertain),
        TxnFailure::Abort if !error.requires_abort => TxnAction::Fail(TxnFailure::Uncertain),
        failure => TxnAction::Fail(failure),
    }
}

/// Sorts an error of a transaction call that is not retried.
pub fn txn_failure(error: &KafkaError) -> TxnFailure {
    TxnError::of(error).failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_errors_are_sorted() {
        assert_eq!(txn_failure(&KafkaError::Canceled), TxnFailure::Abort);
        let fenced = KafkaError::MessageProduction(RDKafkaErrorCode::Fenced);
        assert_eq!(txn_failure(&fenced), TxnFailure::Fenced);
    }

    const MINUTE: Duration = Duration::from_secs(60);

    fn error(code: RDKafkaErrorCode) -> TxnError {
        TxnError {
            code: Some(code),
            ..TxnError::default()
        }
    }

    #[test]
    fn a_commit_that_timed_out_is_called_again_while_the_transaction_lives() {
        let timed_out = TxnError {
            retriable: true,
            ..error(RDKafkaErrorCode::OperationTimedOut)
        };
        assert_eq!(commit_action(timed_out, MINUTE), TxnAction::Retry);
        assert_eq!(
            commit_action(timed_out, Duration::from_millis(1)),
            TxnAction::Retry
        );
        // Out of time, the commit may have gone through: not an abort.
        assert_eq!(
            commit_action(timed_out, Duration::ZERO),
            TxnAction::Fail(TxnFailure::Uncertain)
        );
    }

    #[test]
    fn abortable_fatal_and_fenced_commits_are_not_retried() {
        let abortable = TxnError {
            requires_abort: true,
            ..error(RDKafkaErrorCode::GroupAuthorizationFailed)
        };
        assert_eq!(
            commit_action(abortable, MINUTE),
            TxnAction::Fail(TxnFailure::Abort)
        );
        let fatal = TxnError {
            fatal: true,
            ..error(RDKafkaErrorCode::TransactionalIdAuthorizationFailed)
        };
        // A fatal error in a commit leaves it unknown whether it landed: the
        // committed position is read again (replacing the producer on the way).
        assert_eq!(
            commit_action(fatal, MINUTE),
            TxnAction::Fail(TxnFailure::Uncertain)
        );
        let unflagged = error(RDKafkaErrorCode::Unknown);
        assert_eq!(
            commit_action(unflagged, MINUTE),
            TxnAction::Fail(TxnFailure::Uncertain)
        );
        // A produce or a begin that fails fatally is no commit: replace.
        assert_eq!(fatal.failure(), TxnFailure::Replace);
        for code in [
            RDKafkaErrorCode::Fenced,
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            let fenced = TxnError {
                fatal: true,
                ..error(code)
            };
            assert_eq!(
                commit_action(fenced, MINUTE),
                TxnAction::Fail(TxnFailure::Fenced),
                "{code:?}"
            );
        }
    }

    #[test]
    fn retries_a_timed_out_commit_until_it_succeeds_or_time_is_up() {
        let timed_out = TxnError {
            retriable: true,
            ..error(RDKafkaErrorCode::OperationTimedOut)
        };
        let classify = |e: &TxnError, left: Duration| commit_action(*e, left);
        let mut calls = 0;
        let outcome = retry_until(
            Instant::now() + MINUTE,
            |_| {
                calls += 1;
                if calls < 3 {
                    Err(timed_out)
                } else {
                    Ok(())
                }
            },
            classify,
        );
        assert_eq!(outcome, Ok(()));
        assert_eq!(calls, 3);
        let outcome = retry_until(Instant::now(), |_| Err(timed_out), classify);
        assert_eq!(outcome, Err((TxnFailure::Uncertain, timed_out)));
    }
}
