//! The server's view of every provider and model the workers call: one adaptive
//! [`Limiter`] each, shared by all workers, so that a 429 seen by one worker slows all of
//! them and a quota exhaustion stops the model everywhere. A slot is a permit with an
//! expiry: a worker that dies mid-call cannot leak it.

use crate::domain::{Micros, MICROS_PER_MS};
use crate::generation::limiter::{CallOutcome, Limiter, LimiterConfig, Wait};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
struct Entry {
    limiter: Limiter,
    /// The job whose settings the limiter has: a newer job's (a newer pipeline's) win, an
    /// older one's do not flip them back.
    configured_by: i64,
    /// Permit id → the job holding it and when it expires.
    permits: HashMap<u64, (i64, Micros)>,
}

/// The live state of one provider and model, for `explain` and progress output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimiterState {
    pub provider: String,
    pub model: String,
    pub allowed: usize,
    pub in_flight: usize,
    /// Why a new call would wait now, if it would.
    pub wait: Option<Wait>,
    /// `backing off until 12:03:10.000Z`, `calls flowing`, ...
    pub status: String,
}

#[derive(Debug, Default)]
pub struct LlmGate {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    next_permit: std::sync::atomic::AtomicU64,
    /// Signalled whenever a slot is given back, so waiting acquires re-check.
    released: Notify,
}

impl LlmGate {
    /// The limiters. A panic while the lock was held cannot leave them inconsistent (every
    /// update is a few plain assignments), so a poisoned lock is used as it is rather than
    /// failing every model call from then on.
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take a slot for one call of `job_id` to `model` at `provider`, held at most
    /// `hold_ms` (clamped to between a second and ten minutes).
    #[allow(clippy::too_many_arguments)]
    pub fn try_acquire(
        &self,
        job_id: i64,
        provider: &str,
        model: &str,
        config: Option<LimiterConfig>,
        hold_ms: i64,
        now: Micros,
    ) -> Result<u64, Wait> {
        let mut entries = self.lock();
        let entry = entries
            .entry((provider.to_string(), model.to_string()))
            .or_insert_with(|| Entry {
                limiter: Limiter::new(config.unwrap_or_default()),
                configured_by: if config.is_some() { job_id } else { 0 },
                permits: HashMap::new(),
            });
        // The newest job's settings win (a spec edited for a new run); an older pipeline
        // still running does not flip them back, and a caller without settings (the
        // judge) leaves them as they are.
        if let Some(config) = config {
            if job_id > entry.configured_by {
                entry.limiter.reconfigure(config);
                entry.configured_by = job_id;
            }
        }
        // A job makes one call at a time, so a permit it still holds when it asks again
        // belongs to an attempt that died mid-call: reclaim it now rather than at expiry.
        let expired: Vec<u64> = entry
            .permits
            .iter()
            .filter(|(_, (job, at))| *at <= now || *job == job_id)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            entry.permits.remove(&id);
            entry.limiter.abandon();
        }
        entry.limiter.try_acquire(now)?;
        let id = self
            .next_permit
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let hold_ms = hold_ms.clamp(1_000, 600_000);
        entry
            .permits
            .insert(id, (job_id, now + hold_ms * MICROS_PER_MS));
        Ok(id)
    }

    /// Give a permit of `job_id` back with how its call went (`None`: the call's outcome
    /// is unknown, the slot is only freed). A permit that expired, or that belongs to
    /// another job, frees nothing, but its outcome still teaches the limiter.
    pub fn release(
        &self,
        job_id: i64,
        provider: &str,
        model: &str,
        permit: u64,
        outcome: Option<&CallOutcome>,
        now: Micros,
    ) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&(provider.to_string(), model.to_string())) {
            let held = entry
                .permits
                .get(&permit)
                .is_some_and(|(job, _)| *job == job_id);
            if held {
                entry.permits.remove(&permit);
                match outcome {
                    Some(outcome) => entry.limiter.release(outcome, now),
                    None => entry.limiter.abandon(),
                }
            } else if let Some(outcome) = outcome {
                entry.limiter.observe(outcome, now);
            }
        }
        drop(entries);
        self.released.notify_waiters();
    }

    /// Wait until some slot is given back or `timeout` passes.
    pub async fn released(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.released.notified()).await;
    }

    pub fn states(&self, now: Micros) -> Vec<LimiterState> {
        let entries = self.lock();
        entries
            .iter()
            .map(|((provider, model), e)| {
                let wait = e.limiter.check(now).err();
                let status = match &wait {
                    Some(w) => w.to_string(),
                    None => format!(
                        "calls flowing ({} of {} slots in use)",
                        e.limiter.in_flight(),
                        e.limiter.allowed()
                    ),
                };
                LimiterState {
                    provider: provider.clone(),
                    model: model.clone(),
                    allowed: e.limiter.allowed(),
                    in_flight: e.limiter.in_flight(),
                    wait,
                    status,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Micros = 1_000_000;

    #[test]
    fn the_latest_settings_bound_a_model_and_none_leaves_them() {
        let gate = LlmGate::default();
        gate.try_acquire(1, "p", "m", config(4.0), 60_000, 0)
            .unwrap();
        gate.try_acquire(2, "p", "m", None, 60_000, 0)
            .expect("no settings: the model's stay (4 slots)");
        let one_slot = Some(LimiterConfig {
            initial: 1.0,
            max: 1.0,
            ..Default::default()
        });
        assert!(
            gate.try_acquire(3, "p", "m", one_slot, 60_000, 0).is_err(),
            "a spec that lowers the bound is obeyed at once"
        );
        assert!(
            gate.try_acquire(1, "p", "m", config(4.0), 60_000, 0)
                .is_err(),
            "an older job's settings do not flip the bounds back"
        );
    }

    fn config(initial: f64) -> Option<LimiterConfig> {
        Some(LimiterConfig {
            initial,
            ..Default::default()
        })
    }

    #[test]
    fn models_are_limited_separately_and_a_429_slows_every_caller() {
        let gate = LlmGate::default();
        let a = gate
            .try_acquire(1, "p", "a", config(1.0), 60_000, 0)
            .unwrap();
        assert_eq!(
            gate.try_acquire(2, "p", "a", config(1.0), 60_000, 0),
            Err(Wait::AtConcurrency { limit: 1 })
        );
        gate.try_acquire(2, "p", "b", config(1.0), 60_000, 0)
            .expect("another model has its own slots");
        gate.release(
            1,
            "p",
            "a",
            a,
            Some(&CallOutcome::RateLimited {
                retry_after_ms: Some(5_000),
            }),
            SEC,
        );
        assert_eq!(
            gate.try_acquire(2, "p", "a", config(1.0), 60_000, 2 * SEC),
            Err(Wait::BackingOff { until: 6 * SEC })
        );
        let states = gate.states(2 * SEC);
        assert_eq!(states[0].status, "backing off until 00:00:06.000Z");
        assert!(gate
            .try_acquire(2, "p", "a", config(1.0), 60_000, 6 * SEC)
            .is_ok());
    }

    #[test]
    fn a_permit_whose_caller_vanished_expires() {
        let gate = LlmGate::default();
        gate.try_acquire(1, "p", "a", config(1.0), 2_000, 0)
            .unwrap();
        assert!(gate
            .try_acquire(2, "p", "a", config(1.0), 2_000, SEC)
            .is_err());
        assert!(
            gate.try_acquire(2, "p", "a", config(1.0), 2_000, 2 * SEC)
                .is_ok(),
            "the first permit expired"
        );
    }

    #[test]
    fn a_late_report_on_a_reclaimed_permit_frees_nobody_elses_slot() {
        let gate = LlmGate::default();
        let old = gate
            .try_acquire(1, "p", "a", config(1.0), 1_000, 0)
            .unwrap();
        let current = gate
            .try_acquire(2, "p", "a", config(1.0), 60_000, SEC)
            .unwrap();
        gate.release(1, "p", "a", old, Some(&CallOutcome::ServerError), SEC);
        assert_eq!(
            gate.states(SEC)[0].in_flight,
            1,
            "job 2 still holds its slot"
        );
        gate.release(1, "p", "a", current, Some(&CallOutcome::Success), SEC);
        assert_eq!(
            gate.states(SEC)[0].in_flight,
            1,
            "job 1 cannot free job 2's permit"
        );
        gate.release(2, "p", "a", current, None, SEC);
        assert_eq!(gate.states(SEC)[0].in_flight, 0);
    }

    #[test]
    fn a_job_asking_again_reclaims_the_slot_its_dead_attempt_held() {
        let gate = LlmGate::default();
        gate.try_acquire(7, "p", "a", config(1.0), 600_000, 0)
            .unwrap();
        assert!(gate
            .try_acquire(8, "p", "a", config(1.0), 600_000, 0)
            .is_err());
        gate.try_acquire(7, "p", "a", config(1.0), 600_000, SEC)
            .expect("job 7's new attempt takes over its old slot");
        assert_eq!(gate.states(SEC)[0].in_flight, 1);
    }

    #[test]
    fn quota_exhaustion_stops_the_model_for_everyone() {
        let gate = LlmGate::default();
        let p = gate
            .try_acquire(1, "p", "a", config(4.0), 60_000, 0)
            .unwrap();
        gate.release(
            1,
            "p",
            "a",
            p,
            Some(&CallOutcome::QuotaExhausted {
                reason: "no credits left".into(),
            }),
            0,
        );
        assert_eq!(
            gate.try_acquire(1, "p", "a", config(4.0), 60_000, 100 * SEC),
            Err(Wait::Stopped {
                why: "no credits left".into()
            })
        );
    }
}
