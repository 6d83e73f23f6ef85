//! Unit tests of the cancel view's reading: what each record of the cancel
//! topic does to the view, and that views reading different histories agree.

use super::*;
use crate::cancel::CancelLimits;

const RULES: Rules = Rules {
    max_delay_ms: 60_000,
    retention_ms: 120_000,
};

/// Reads one record (`until` header, timestamp) into `view` at `now`.
fn read(view: &Cancellations, key: &[u8], until: Option<&[u8]>, ts: i64, now: i64) -> Applied {
    let decoded = decode(Some(key), false, until.map(Some), Some(ts), RULES, now);
    apply(view, Some(key), decoded, now)
}

#[test]
fn routers_that_read_different_histories_of_an_id_agree() {
    // C1 cancels X; C2, the id's latest record, is refused (its until is
    // not a number, or too far). A router that ran throughout read both;
    // one that started after compaction removed C1 reads only C2.
    for bad in [&b"soon"[..], &b"99999999999"[..]] {
        let throughout = Cancellations::new(CancelLimits::default());
        let later = Cancellations::new(CancelLimits::default());
        assert_eq!(
            read(&throughout, b"X", Some(b"50000"), 1_000, 1_000),
            Applied::Done
        );
        assert!(throughout.is_cancelled(b"X", 2_000));
        let r = read(&throughout, b"X", Some(bad), 1_500, 1_500);
        assert!(
            matches!(r, Applied::Refused { withdrew: true, .. }),
            "{r:?}"
        );
        let r = read(&later, b"X", Some(bad), 1_500, 9_000);
        assert!(
            matches!(
                r,
                Applied::Refused {
                    withdrew: false,
                    ..
                }
            ),
            "{r:?}"
        );
        for view in [&throughout, &later] {
            assert!(!view.is_cancelled(b"X", 2_000), "the latest record counts");
        }
    }
    // A refusal that names no valid id touches nothing.
    let view = Cancellations::new(CancelLimits::default());
    read(&view, b"Y", Some(b"50000"), 1_000, 1_000);
    let decoded = decode(None, false, Some(Some(b"x")), Some(1_000), RULES, 1_000);
    assert!(matches!(
        apply(&view, None, decoded, 1_000),
        Applied::Refused {
            withdrew: false,
            ..
        }
    ));
    assert!(view.is_cancelled(b"Y", 2_000));
}

#[test]
fn a_full_view_hands_the_record_back() {
    let view = Cancellations::new(CancelLimits {
        max_cancellations: 1,
    });
    assert_eq!(read(&view, b"a", None, 1_000, 1_000), Applied::Done);
    assert_eq!(
        read(&view, b"b", None, 1_000, 1_000),
        Applied::Full {
            id: b"b".to_vec(),
            until_ms: 61_000
        }
    );
}
