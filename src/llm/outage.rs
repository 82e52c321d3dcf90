//! Provider outages: a model call waits for its provider to come back instead of failing.
//!
//! When a provider cannot be reached, times out, answers 5xx, 408 or 429, the call waits and
//! tries again (capped exponential backoff with jitter; a `Retry-After` is honoured however
//! long) until `[llm] outage_max_wait_secs` have passed since it started waiting; then it fails
//! with [`LlmError::Unavailable`](super::LlmError::Unavailable), which says how long it waited
//! and what the provider last answered.
//!
//! Every call to one provider (scheme, host and port) shares one [`Circuit`]: the first failure
//! opens it, and while it is open one call at a time (the probe) is let through when the
//! backoff has passed; the others wait for the probe's answer. Many runs waiting on one provider
//! therefore send it one request per backoff interval, not one each. A probe that gets any answer
//! other than "unavailable" closes the circuit and lets every waiter through.
//!
//! The decisions ([`Circuit`], [`CallWait`]) are pure functions of the answers and the clock,
//! tested without a runtime; [`ProviderGate`] carries them out with a mutex and a [`Notify`].
//! Who waits is told through an [`OutageObserver`] that the caller installs for the call's task
//! ([`observed`]): the runtime turns it into the run's `ProviderWaiting` / `ProviderResumed`
//! events and stops the step's wall clock meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Capped exponential backoff: the n-th wait is `base · 2ⁿ`, at most `max`, with "equal jitter"
/// (a point in the upper half), so callers that failed together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` failures in a row (1 = the first), for a `jitter` in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// What a call may do now, as the circuit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send the request; `probe` is true when it is the one request that tests an open circuit.
    Send {
        /// This request is the circuit's probe: its answer opens or closes the circuit.
        probe: bool,
    },
    /// Do not send: the provider is unavailable. Ask again at `until`, or when the probe in
    /// flight answers (`None`).
    Wait {
        /// When the next probe may go; `None` while a probe is in flight.
        until: Option<Instant>,
    },
}

/// One provider's circuit: closed (requests go), or open (one probe at a time, after a
/// backoff). Pure: the clock and the jitter come in as arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Circuit {
    open: Option<Open>,
}

/// The state of an open circuit.
#[derive(Debug, Clone, PartialEq)]
struct Open {
    /// Unavailable answers in a row.
    failures: u32,
    /// When the next probe may go.
    retry_at: Instant,
    /// A probe is in flight.
    probing: bool,
    /// What the provider last answered.
    last_error: String,
}

impl Circuit {
    /// Whether a request may go at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match &mut self.open {
            None => Admission::Send { probe: false },
            Some(o) if o.probing => Admission::Wait { until: None },
            Some(o) if now >= o.retry_at => {
                o.probing = true;
                Admission::Send { probe: true }
            }
            Some(o) => Admission::Wait { until: Some(o.retry_at) },
        }
    }

    /// The provider answered (a success, or an error that is not about its availability) a
    /// request sent with `probe`. The probe's answer closes the circuit. Any other request was
    /// sent before the circuit opened: its late answer says nothing about now (a request
    /// admitted before a 429 storm still succeeds), so an open circuit stays open.
    pub fn answered(&mut self, probe: bool) {
        if probe {
            self.open = None;
        }
    }

    /// The provider was unavailable for a request sent with `probe`. Opens the circuit (or keeps
    /// it open, one failure more for a probe) until the backoff or `retry_after`, whichever is
    /// longer, has passed.
    pub fn unavailable(
        &mut self,
        now: Instant,
        probe: bool,
        retry_after: Option<Duration>,
        error: String,
        backoff: &Backoff,
        jitter: f64,
    ) {
        let failures = match &self.open {
            // A request sent before the circuit opened: the circuit knows already.
            Some(o) if !probe => o.failures,
            Some(o) => o.failures.saturating_add(1),
            None => 1,
        };
        let wait = backoff.delay(failures, jitter).max(retry_after.unwrap_or_default());
        let retry_at = now + wait;
        let (retry_at, probing) = match &self.open {
            Some(o) if !probe => (o.retry_at.max(retry_at), o.probing),
            _ => (retry_at, false),
        };
        self.open = Some(Open { failures, retry_at, probing, last_error: error });
    }

    /// A probe ended without an answer (its caller gave up or was cancelled): let another go.
    pub fn probe_abandoned(&mut self) {
        if let Some(o) = &mut self.open {
            o.probing = false;
        }
    }

    /// Whether the circuit is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// What the provider last answered while unavailable.
    pub fn last_error(&self) -> Option<&str> {
        self.open.as_ref().map(|o| o.last_error.as_str())
    }
}

/// One call's wait: when it started, and when it must give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallWait {
    /// When the call first had to wait.
    pub since: Instant,
    /// How long it may wait in all.
    pub limit: Duration,
}

impl CallWait {
    /// The moment the call gives up.
    pub fn deadline(&self) -> Instant {
        self.since + self.limit
    }

    /// Whether the call must give up at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// How long to sleep at `now` before asking the circuit again: until `until` (or, with a
    /// probe in flight, at most `poll`), but never past the deadline.
    pub fn sleep_until(&self, now: Instant, until: Option<Instant>, poll: Duration) -> Instant {
        until.unwrap_or(now + poll).min(self.deadline())
    }
}

/// Is told when a call starts waiting on its provider and when it stops. Installed per task
/// with [`observed`]; calls without one wait all the same.
pub trait OutageObserver: Send + Sync {
    /// The call started waiting: `provider` (scheme, host, port) is unavailable; `last_error`
    /// is what it last answered.
    fn waiting(&self, provider: &str, last_error: &str);
    /// The call stopped waiting after `waited`: the provider answered (`answered`), or the call
    /// gave up or was dropped.
    fn stopped_waiting(&self, waited: Duration, answered: bool);
}

tokio::task_local! {
    static OBSERVER: Arc<dyn OutageObserver>;
}

/// Runs `fut` with `observer` told of every provider wait of the model calls inside it (on the
/// same task).
pub async fn observed<F: Future>(observer: Arc<dyn OutageObserver>, fut: F) -> F::Output {
    OBSERVER.scope(observer, fut).await
}

/// The observer of the current task, if any.
pub(crate) fn current_observer() -> Option<Arc<dyn OutageObserver>> {
    OBSERVER.try_with(Arc::clone).ok()
}

/// The shared circuit of one provider, with the means to wait on it.
#[derive(Debug, Default)]
pub struct ProviderGate {
    circuit: Mutex<Circuit>,
    /// Woken when a probe's answer changes the circuit.
    changed: Notify,
}

impl ProviderGate {
    /// The gate of the provider at `url` (its scheme, host and port), shared by the process.
    pub fn of(url: &str) -> (String, Arc<ProviderGate>) {
        static GATES: OnceLock<Mutex<HashMap<String, Arc<ProviderGate>>>> = OnceLock::new();
        let key = provider_key(url);
        let mut gates = GATES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        let gate = gates.entry(key.clone()).or_default().clone();
        (key, gate)
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the circuit whether a request may go now.
    pub fn admit(&self) -> Admission {
        self.circuit().admit(Instant::now())
    }

    /// What the provider last answered while unavailable.
    pub fn last_error(&self) -> Option<String> {
        self.circuit().last_error().map(str::to_owned)
    }

    /// Records an answer; a probe's answer closes the circuit and wakes the waiters.
    pub fn answered(&self, probe: bool) {
        self.circuit().answered(probe);
        if probe {
            self.changed.notify_waiters();
        }
    }

    /// Records an unavailable answer.
    pub fn unavailable(&self, probe: bool, retry_after: Option<Duration>, error: String, backoff: &Backoff) {
        let now = Instant::now();
        self.circuit().unavailable(now, probe, retry_after, error, backoff, fastrand::f64());
        if probe {
            self.changed.notify_waiters();
        }
    }

    /// Records a probe that will not answer (its call gave up or was dropped).
    pub fn probe_abandoned(&self) {
        self.circuit().probe_abandoned();
        self.changed.notify_waiters();
    }

    /// Sleeps until `until`, or until the circuit changes, whichever comes first.
    pub async fn wait(&self, until: Instant) {
        let changed = self.changed.notified();
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Releases a probe that is dropped before it answers (a cancelled step), so the circuit does
/// not wait for an answer that will never come.
pub(crate) struct ProbeGuard<'a> {
    gate: &'a ProviderGate,
    armed: bool,
}

impl<'a> ProbeGuard<'a> {
    /// Guards the probe of `gate` when `probe` is true.
    pub(crate) fn new(gate: &'a ProviderGate, probe: bool) -> Self {
        Self { gate, armed: probe }
    }

    /// The probe answered: nothing to release.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gate.probe_abandoned();
        }
    }
}

/// `scheme://host:port` of `url`: one provider, whatever the path.
pub fn provider_key(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            match u.port_or_known_default() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(invalid url)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(30) };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        assert_eq!(B.delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(B.delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(B.delay(3, 1.0), secs(2));
        assert_eq!(B.delay(40, 1.0), secs(30));
        assert_eq!(B.delay(40, 0.0), secs(15));
        assert_eq!(B.delay(u32::MAX, 0.5), Duration::from_millis(22_500));
    }

    #[test]
    fn a_closed_circuit_lets_everything_through() {
        let mut c = Circuit::default();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(c.admit(now), Admission::Send { probe: false });
        }
        assert!(!c.is_open());
    }

    #[test]
    fn one_failure_opens_it_and_only_one_probe_goes_after_the_backoff() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, None, "refused".into(), &B, 1.0);
        assert_eq!(c.last_error(), Some("refused"));
        let retry_at = t0 + Duration::from_millis(500);
        assert_eq!(c.admit(t0), Admission::Wait { until: Some(retry_at) });
        assert_eq!(c.admit(retry_at), Admission::Send { probe: true });
        // Everyone else waits for the probe's answer.
        assert_eq!(c.admit(retry_at), Admission::Wait { until: None });
        assert_eq!(c.admit(retry_at + secs(60)), Admission::Wait { until: None });
    }

    #[test]
    fn failed_probes_back_off_further_and_an_answer_closes_the_circuit() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, None, "e1".into(), &B, 1.0);
        let mut now = t0 + secs(1);
        for (failures, want) in [(2u32, secs(1)), (3, secs(2)), (4, secs(4))] {
            assert_eq!(c.admit(now), Admission::Send { probe: true }, "failure {failures}");
            c.unavailable(now, true, None, format!("e{failures}"), &B, 1.0);
            assert_eq!(c.admit(now), Admission::Wait { until: Some(now + want) });
            now += want;
        }
        assert_eq!(c.admit(now), Admission::Send { probe: true });
        c.answered(true);
        assert_eq!(c.admit(now), Admission::Send { probe: false });
    }

    #[test]
    fn a_late_answer_to_a_request_sent_before_it_opened_keeps_it_open() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, Some(secs(5)), "429".into(), &B, 1.0);
        c.answered(false);
        assert_eq!(c.admit(t0 + secs(1)), Admission::Wait { until: Some(t0 + secs(5)) });
        // A closed circuit stays closed whatever answers.
        let mut closed = Circuit::default();
        closed.answered(false);
        assert_eq!(closed.admit(t0), Admission::Send { probe: false });
    }

    #[test]
    fn retry_after_wins_over_a_shorter_backoff_however_long() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, Some(secs(3600)), "429".into(), &B, 1.0);
        assert_eq!(c.admit(t0 + secs(60)), Admission::Wait { until: Some(t0 + secs(3600)) });
    }

    #[test]
    fn late_failures_of_requests_sent_before_it_opened_do_not_count_as_probes() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, None, "a".into(), &B, 1.0);
        c.unavailable(t0, false, None, "b".into(), &B, 1.0);
        c.unavailable(t0, false, Some(secs(5)), "c".into(), &B, 1.0);
        // Still the first failure's backoff, stretched by the Retry-After; the last error kept.
        assert_eq!(c.admit(t0), Admission::Wait { until: Some(t0 + secs(5)) });
        assert_eq!(c.last_error(), Some("c"));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_one_go() {
        let t0 = Instant::now();
        let mut c = Circuit::default();
        c.unavailable(t0, false, None, "x".into(), &B, 0.0);
        let later = t0 + secs(1);
        assert_eq!(c.admit(later), Admission::Send { probe: true });
        c.probe_abandoned();
        assert_eq!(c.admit(later), Admission::Send { probe: true });
    }

    #[test]
    fn a_call_gives_up_at_its_limit_and_never_sleeps_past_it() {
        let t0 = Instant::now();
        let w = CallWait { since: t0, limit: secs(10) };
        assert!(!w.expired(t0 + secs(9)));
        assert!(w.expired(t0 + secs(10)));
        let poll = Duration::from_millis(200);
        assert_eq!(w.sleep_until(t0, Some(t0 + secs(3)), poll), t0 + secs(3));
        assert_eq!(w.sleep_until(t0, Some(t0 + secs(3600)), poll), t0 + secs(10));
        assert_eq!(w.sleep_until(t0 + secs(1), None, poll), t0 + secs(1) + poll);
    }

    #[test]
    fn providers_are_keyed_by_scheme_host_and_port() {
        assert_eq!(provider_key("http://127.0.0.1:8089/v1/chat/completions"), "http://127.0.0.1:8089");
        assert_eq!(provider_key("https://api.openai.com/v1/chat/completions"), "https://api.openai.com:443");
        let (a, ga) = ProviderGate::of("http://127.0.0.1:1/v1/a");
        let (b, gb) = ProviderGate::of("http://127.0.0.1:1/v1/b");
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&ga, &gb));
    }
}
