//! A circuit breaker for one upstream: after `failures` consecutive failures (no connection, a
//! timeout, a 5xx) requests stop waiting on it. While it is open, one probe at a time is let
//! through once the back-off has passed; a probe that fails doubles the back-off (up to
//! `max_backoff`), any answer closes the breaker. Pure state: the caller passes the time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config;

/// What a request may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The breaker is closed: ask the upstream.
    Closed,
    /// The breaker is open and this request is its probe: ask, and report the outcome.
    Probe,
    /// The breaker is open: do not ask; the next probe is due in this long.
    Open { retry_in: Duration },
}

#[derive(Debug)]
struct State {
    failures: u32,
    /// Set while open: when the next probe may go.
    open_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

#[derive(Debug)]
pub struct Breaker {
    config: config::Breaker,
    state: Mutex<State>,
}

/// A change of state worth reporting (a gauge, a counter, a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened { backoff: Duration },
    Closed,
}

impl Breaker {
    pub fn new(config: config::Breaker) -> Breaker {
        let state = State { failures: 0, open_until: None, backoff: config.backoff, probing: false };
        Breaker { config, state: Mutex::new(state) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("never poisoned: no panics while held")
    }

    /// Decides whether a request may go to the upstream now; a `Probe` must be followed by
    /// [`Breaker::success`], [`Breaker::failure`] or [`Breaker::abandon`].
    pub fn admit(&self, now: Instant) -> Admit {
        let mut state = self.lock();
        let Some(until) = state.open_until else { return Admit::Closed };
        if state.probing || now < until {
            return Admit::Open { retry_in: until.saturating_duration_since(now) };
        }
        state.probing = true;
        Admit::Probe
    }

    /// True while the breaker is closed (requests go to the upstream without waiting for a probe).
    pub fn is_closed(&self) -> bool {
        self.lock().open_until.is_none()
    }

    /// The upstream answered (any status but a 5xx).
    pub fn success(&self) -> Option<Change> {
        let mut state = self.lock();
        state.failures = 0;
        state.probing = false;
        state.backoff = self.config.backoff;
        state.open_until.take().map(|_| Change::Closed)
    }

    /// The upstream failed a request (`probe`: the one [`Admit::Probe`] let through).
    pub fn failure(&self, now: Instant, probe: bool) -> Option<Change> {
        if self.config.failures == 0 {
            return None;
        }
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        if probe {
            state.probing = false;
            state.backoff = (state.backoff * 2).min(self.config.max_backoff);
            state.open_until = Some(now + state.backoff);
            return None;
        }
        if state.open_until.is_none() && state.failures >= self.config.failures {
            state.backoff = self.config.backoff;
            state.open_until = Some(now + state.backoff);
            return Some(Change::Opened { backoff: state.backoff });
        }
        None
    }

    /// A probe ended without an outcome (its request was cancelled): the next request probes.
    pub fn abandon(&self) {
        self.lock().probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(config::Breaker { failures, backoff: Duration::from_secs(2), max_backoff: Duration::from_secs(5) })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3);
        let t = Instant::now();
        assert_eq!(b.failure(t, false), None);
        assert_eq!(b.failure(t, false), None);
        assert_eq!(b.success(), None, "an answer in between resets the count");
        assert_eq!(b.failure(t, false), None);
        assert_eq!(b.failure(t, false), None);
        assert_eq!(b.admit(t), Admit::Closed);
        assert_eq!(b.failure(t, false), Some(Change::Opened { backoff: Duration::from_secs(2) }));
        assert_eq!(b.admit(t), Admit::Open { retry_in: Duration::from_secs(2) });
        assert!(!b.is_closed());
        assert_eq!(b.failure(t, false), None, "a late failure neither reopens nor extends");
    }

    #[test]
    fn one_probe_at_a_time_backoff_doubles_capped_and_an_answer_closes() {
        let b = breaker(1);
        let t = Instant::now();
        b.failure(t, false);
        let t = t + Duration::from_secs(2);
        assert_eq!(b.admit(t), Admit::Probe);
        assert!(matches!(b.admit(t), Admit::Open { .. }), "a second probe while one runs");
        assert_eq!(b.failure(t, true), None);
        assert_eq!(b.admit(t + Duration::from_secs(3)), Admit::Open { retry_in: Duration::from_secs(1) });
        let t = t + Duration::from_secs(4);
        assert_eq!(b.admit(t), Admit::Probe);
        b.failure(t, true);
        assert_eq!(b.admit(t), Admit::Open { retry_in: Duration::from_secs(5) }, "capped at max_backoff");
        let t = t + Duration::from_secs(5);
        assert_eq!(b.admit(t), Admit::Probe);
        assert_eq!(b.success(), Some(Change::Closed));
        assert_eq!(b.admit(t), Admit::Closed);
        // The next opening starts from the configured back-off again.
        assert_eq!(b.failure(t, false), Some(Change::Opened { backoff: Duration::from_secs(2) }));
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let b = breaker(1);
        let t = Instant::now();
        b.failure(t, false);
        let t = t + Duration::from_secs(2);
        assert_eq!(b.admit(t), Admit::Probe);
        b.abandon();
        assert_eq!(b.admit(t), Admit::Probe);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = breaker(0);
        let t = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.failure(t, false), None);
        }
        assert_eq!(b.admit(t), Admit::Closed);
    }
}
