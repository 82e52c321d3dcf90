//! The replica's decisions, as pure functions: how many steps to claim, which leases were lost,
//! how long to wait after a failure.

use std::time::Duration;

/// How many steps to claim now: room left on the executors (`max` claims at once, `held`
/// already), at most `batch` per query. Zero when the executors are full: the load spreads to
/// the replicas that have room.
pub(super) fn claim_count(max: usize, held: usize, batch: usize) -> usize {
    max.saturating_sub(held).min(batch)
}

/// What a renewal of `renewed` (key, epoch or token) did not return in `kept`: those leases or
/// claims were taken over. Anything held since the renewal began is not in `renewed`, so it
/// cannot be lost by mistake.
pub(super) fn not_renewed<K: PartialEq + Clone, T: Copy>(renewed: &[(K, T)], kept: &[K]) -> Vec<(K, T)> {
    renewed.iter().filter(|(k, _)| !kept.contains(k)).cloned().collect()
}

/// The wait before trying the store again after `failures` failures in a row: 100 ms doubling
/// to at most 2 s.
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(5);
    Duration::from_millis((100u64 << doublings).min(2000))
}

/// How often the leases are renewed: three times per TTL, so that one late heartbeat does not
/// lose them.
pub(super) fn heartbeat_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(50))
}

/// How long a control request waits for the run's owner to answer: long enough for a takeover
/// (a lease TTL and a poll) to happen first, at least 10 s.
pub(super) fn control_deadline(ttl: Duration, poll: Duration) -> Duration {
    (ttl * 3 + poll).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_replica_claims_nothing_and_a_free_one_claims_its_room_up_to_a_batch() {
        assert_eq!(claim_count(8, 8, 64), 0);
        assert_eq!(claim_count(8, 9, 64), 0);
        assert_eq!(claim_count(8, 3, 64), 5);
        assert_eq!(claim_count(512, 0, 64), 64);
    }

    #[test]
    fn what_a_renewal_did_not_return_is_lost_and_nothing_else() {
        assert_eq!(not_renewed(&[("a", 1), ("b", 2), ("c", 1)], &["a", "c"]), [("b", 2)]);
        assert!(not_renewed(&[("a", 1)], &["a"]).is_empty());
        // Row 3 was claimed after the renewal read the claims: it is not in `renewed`.
        assert_eq!(not_renewed(&[(1, 1), (2, 5)], &[1, 3]), [(2, 5)]);
    }

    #[test]
    fn backoff_doubles_from_100ms_to_2s() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn heartbeats_come_three_times_a_ttl_and_controls_outwait_a_takeover() {
        assert_eq!(heartbeat_every(Duration::from_secs(6)), Duration::from_secs(2));
        assert_eq!(
            control_deadline(Duration::from_secs(5), Duration::from_millis(500)),
            Duration::from_millis(15_500)
        );
        assert_eq!(
            control_deadline(Duration::from_secs(1), Duration::from_millis(500)),
            Duration::from_secs(10)
        );
    }
}
