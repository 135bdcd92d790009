//! Adaptive concurrency per provider and model (additive increase, multiplicative
//! decrease): a 429 halves the allowed concurrency and honours `Retry-After`, each success
//! earns back a fraction of a slot, 5xx and timeouts back off without shrinking much, and a
//! quota or credit exhaustion stops the model for good with its reason. Pure: the caller
//! passes `now`; the state says why a call must wait ("backing off until 12:03:10").

use crate::domain::{format_time, Micros, MICROS_PER_MS};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimiterConfig {
    pub initial: f64,
    pub min: f64,
    pub max: f64,
    /// Slots regained per success (a full slot after `1 / step` successes).
    pub increase_step: f64,
    /// First back-off after a 5xx or timeout; doubles while they continue.
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            initial: 4.0,
            min: 1.0,
            max: 32.0,
            increase_step: 0.25,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
        }
    }
}

impl LimiterConfig {
    /// The same settings made consistent: a config arrives over the API and must not be
    /// able to break the limiter (NaN, min above max, a zero back-off).
    pub fn sanitized(self) -> Self {
        let d = LimiterConfig::default();
        let finite_at_least = |v: f64, floor: f64, fallback: f64| {
            if v.is_finite() && v >= floor {
                v
            } else {
                fallback
            }
        };
        let min = finite_at_least(self.min, 1.0, d.min);
        let max = finite_at_least(self.max, min, min.max(d.max));
        let initial = finite_at_least(self.initial, min, min).min(max);
        let increase_step = if self.increase_step.is_finite() && self.increase_step > 0.0 {
            self.increase_step.min(max)
        } else {
            d.increase_step
        };
        let backoff_base_ms = self.backoff_base_ms.clamp(1, 3_600_000);
        let backoff_max_ms = self.backoff_max_ms.clamp(backoff_base_ms, 3_600_000);
        LimiterConfig {
            initial,
            min,
            max,
            increase_step,
            backoff_base_ms,
            backoff_max_ms,
        }
    }
}

/// How a call ended, as far as scheduling cares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CallOutcome {
    Success,
    RateLimited { retry_after_ms: Option<i64> },
    ServerError,
    Timeout,
    QuotaExhausted { reason: String },
}

/// Why a call may not start now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Wait {
    BackingOff { until: Micros },
    AtConcurrency { limit: usize },
    Stopped { why: String },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::BackingOff { until } => write!(f, "backing off until {}", format_time(*until)),
            Wait::AtConcurrency { limit } => write!(f, "at its concurrency limit of {limit}"),
            Wait::Stopped { why } => write!(f, "stopped: {why}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limiter {
    config: LimiterConfig,
    allowed: f64,
    in_flight: usize,
    blocked_until: Micros,
    consecutive_errors: u32,
    /// Why the model is stopped, and since when.
    stopped: Option<(String, Micros)>,
}

/// How long a quota or credit stop lasts before one call may find out whether it still
/// holds (credits get topped up; a long-running server must not refuse a model forever).
pub const STOP_FOR: Micros = 10 * 60 * 1_000_000;

impl Limiter {
    /// Take new bounds (a later job of the model brought other settings): what the
    /// limiter has learnt is kept, within the new bounds; the back-off state stays.
    pub fn reconfigure(&mut self, config: LimiterConfig) {
        let config = config.sanitized();
        if config != self.config {
            self.allowed = self.allowed.clamp(config.min, config.max);
            self.config = config;
        }
    }

    pub fn new(config: LimiterConfig) -> Self {
        let config = config.sanitized();
        Limiter {
            allowed: config.initial.clamp(config.min, config.max),
            config,
            in_flight: 0,
            blocked_until: 0,
            consecutive_errors: 0,
            stopped: None,
        }
    }

    pub fn allowed(&self) -> usize {
        self.allowed.floor().max(1.0) as usize
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Take a slot, or say why not.
    pub fn try_acquire(&mut self, now: Micros) -> Result<(), Wait> {
        if self
            .stopped
            .as_ref()
            .is_some_and(|(_, at)| now - at >= STOP_FOR)
        {
            self.stopped = None;
        }
        self.check(now)?;
        self.in_flight += 1;
        Ok(())
    }

    /// Whether a call could start now, without taking a slot.
    pub fn check(&self, now: Micros) -> Result<(), Wait> {
        if let Some((why, at)) = &self.stopped {
            if now - at < STOP_FOR {
                return Err(Wait::Stopped { why: why.clone() });
            }
        }
        if now < self.blocked_until {
            return Err(Wait::BackingOff {
                until: self.blocked_until,
            });
        }
        if self.in_flight >= self.allowed() {
            return Err(Wait::AtConcurrency {
                limit: self.allowed(),
            });
        }
        Ok(())
    }

    /// Give back a slot whose call was never heard of again (its worker died): it
    /// teaches nothing about the provider.
    pub fn abandon(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Give the slot back with how the call went.
    pub fn release(&mut self, outcome: &CallOutcome, now: Micros) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.observe(outcome, now);
    }

    /// Learn from a call's outcome without giving back a slot (its slot was already
    /// reclaimed).
    pub fn observe(&mut self, outcome: &CallOutcome, now: Micros) {
        let c = self.config;
        match outcome {
            CallOutcome::Success => {
                self.consecutive_errors = 0;
                self.allowed = (self.allowed + c.increase_step).min(c.max);
            }
            CallOutcome::RateLimited { retry_after_ms } => {
                self.allowed = (self.allowed / 2.0).max(c.min);
                let wait = retry_after_ms.unwrap_or(c.backoff_base_ms).max(0);
                self.blocked_until = self.blocked_until.max(now + wait * MICROS_PER_MS);
            }
            CallOutcome::ServerError | CallOutcome::Timeout => {
                self.consecutive_errors += 1;
                let exp = (self.consecutive_errors - 1).min(16);
                let wait = (c.backoff_base_ms << exp).min(c.backoff_max_ms);
                self.blocked_until = self.blocked_until.max(now + wait * MICROS_PER_MS);
                self.allowed = (self.allowed * 0.75).max(c.min);
            }
            CallOutcome::QuotaExhausted { reason } => {
                self.stopped = Some((reason.clone(), now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_settings_move_the_bounds_and_keep_what_was_learnt() {
        let mut l = Limiter::new(LimiterConfig {
            initial: 8.0,
            ..Default::default()
        });
        assert_eq!(l.allowed(), 8);
        l.reconfigure(LimiterConfig {
            initial: 1.0,
            max: 2.0,
            ..Default::default()
        });
        assert_eq!(l.allowed(), 2, "clamped into the new bounds");
        l.reconfigure(LimiterConfig {
            initial: 1.0,
            max: 16.0,
            ..Default::default()
        });
        assert_eq!(
            l.allowed(),
            2,
            "a wider bound does not reset what was learnt"
        );
    }

    const SEC: Micros = 1_000_000;

    #[test]
    fn rate_limits_halve_concurrency_and_honour_retry_after() {
        let mut l = Limiter::new(LimiterConfig {
            initial: 8.0,
            ..Default::default()
        });
        for _ in 0..8 {
            l.try_acquire(0).unwrap();
        }
        assert_eq!(l.try_acquire(0), Err(Wait::AtConcurrency { limit: 8 }));
        l.release(
            &CallOutcome::RateLimited {
                retry_after_ms: Some(7_000),
            },
            0,
        );
        assert_eq!(l.allowed(), 4);
        assert_eq!(l.try_acquire(SEC), Err(Wait::BackingOff { until: 7 * SEC }));
        assert_eq!(
            Wait::BackingOff { until: 7 * SEC }.to_string(),
            "backing off until 00:00:07.000Z"
        );
        for _ in 0..7 {
            l.release(&CallOutcome::Success, 8 * SEC);
        }
        assert_eq!(l.in_flight(), 0);
        assert!(
            l.allowed() >= 5,
            "successes earn slots back: {}",
            l.allowed()
        );
        assert!(l.try_acquire(8 * SEC).is_ok());
    }

    #[test]
    fn server_errors_back_off_exponentially_and_success_resets() {
        let mut l = Limiter::new(LimiterConfig::default());
        l.try_acquire(0).unwrap();
        l.release(&CallOutcome::ServerError, 0);
        assert_eq!(l.try_acquire(0), Err(Wait::BackingOff { until: SEC }));
        l.try_acquire(SEC).unwrap();
        l.release(&CallOutcome::Timeout, SEC);
        assert_eq!(
            l.try_acquire(SEC),
            Err(Wait::BackingOff { until: 3 * SEC }),
            "1 s, then 2 s"
        );
        l.try_acquire(3 * SEC).unwrap();
        l.release(&CallOutcome::Success, 3 * SEC);
        l.try_acquire(3 * SEC).unwrap();
        l.release(&CallOutcome::ServerError, 3 * SEC);
        assert_eq!(
            l.try_acquire(3 * SEC),
            Err(Wait::BackingOff { until: 4 * SEC }),
            "back to 1 s"
        );
    }

    #[test]
    fn quota_exhaustion_stops_the_model_with_its_reason() {
        let mut l = Limiter::new(LimiterConfig::default());
        l.try_acquire(0).unwrap();
        l.release(
            &CallOutcome::QuotaExhausted {
                reason: "insufficient credits".into(),
            },
            0,
        );
        let wait = l.try_acquire(100 * SEC).unwrap_err();
        assert_eq!(wait.to_string(), "stopped: insufficient credits");
        assert!(
            l.try_acquire(STOP_FOR).is_ok(),
            "after a while one call may find out whether credits were topped up"
        );
    }

    #[test]
    fn nonsense_settings_cannot_break_the_limiter() {
        for config in [
            LimiterConfig {
                max: 0.5,
                ..Default::default()
            },
            LimiterConfig {
                initial: f64::NAN,
                min: f64::INFINITY,
                max: -3.0,
                increase_step: f64::NAN,
                backoff_base_ms: -5,
                backoff_max_ms: i64::MIN,
            },
        ] {
            let mut l = Limiter::new(config);
            assert!(l.allowed() >= 1);
            l.try_acquire(0).unwrap();
            l.release(&CallOutcome::ServerError, 0);
            assert!(matches!(l.check(0), Err(Wait::BackingOff { .. })));
        }
    }

    #[test]
    fn concurrency_stays_within_bounds() {
        let mut l = Limiter::new(LimiterConfig {
            initial: 2.0,
            min: 1.0,
            max: 3.0,
            ..Default::default()
        });
        for _ in 0..10 {
            l.try_acquire(0).ok();
            l.release(
                &CallOutcome::RateLimited {
                    retry_after_ms: Some(0),
                },
                0,
            );
        }
        assert_eq!(l.allowed(), 1);
        for _ in 0..100 {
            l.try_acquire(0).ok();
            l.release(&CallOutcome::Success, 0);
        }
        assert_eq!(l.allowed(), 3);
    }
}
