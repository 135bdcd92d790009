//! Per-client caps on what a client holds open: long-polls (claims, event waits) and
//! event streams. Each costs the server a task and a wake-up on every change; without a
//! cap, one client opening thousands of them slows everyone (500 idle long-polls made a
//! 300-job pipeline 46× slower). A client is its token; without tokens (a loopback server)
//! all requests are one client.

use super::routes::ApiError;
use crate::api::ErrorCode;
use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Long-polls one client may hold at once: a worker holds one per pool, a CLI or page one
/// each, so this leaves room for dozens of workers sharing a token.
pub const LONG_POLLS_PER_CLIENT: usize = 256;
/// Event streams one client may hold at once (a dashboard tab holds one).
pub const STREAMS_PER_CLIENT: usize = 64;

#[derive(Debug)]
pub struct Held {
    what: &'static str,
    max: usize,
    counts: Mutex<HashMap<i64, usize>>,
}

/// One held connection; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    held: Arc<Held>,
    client: i64,
}

impl Held {
    pub fn new(what: &'static str, max: usize) -> Arc<Held> {
        Arc::new(Held {
            what,
            max,
            counts: Mutex::default(),
        })
    }

    /// Take a place for `client` (a token id; `None`: no tokens), or 429 when it holds
    /// its cap already.
    pub fn enter(self: &Arc<Self>, client: Option<i64>) -> Result<Slot, ApiError> {
        let client = client.unwrap_or(0);
        let mut counts = self.counts.lock().expect("caps lock");
        let n = counts.entry(client).or_default();
        if *n >= self.max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                format!(
                    "this client holds {} {} already, the most one may (close some, or give \
                     each worker machine its own token)",
                    self.max, self.what
                ),
            ));
        }
        *n += 1;
        Ok(Slot {
            held: self.clone(),
            client,
        })
    }

    /// How many `client` holds now.
    pub fn held_by(&self, client: Option<i64>) -> usize {
        let counts = self.counts.lock().expect("caps lock");
        counts.get(&client.unwrap_or(0)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.held.counts.lock().expect("caps lock");
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_cap_and_gets_places_back() {
        let held = Held::new("long-polls", 2);
        let a = held.enter(Some(7)).unwrap();
        let _b = held.enter(Some(7)).unwrap();
        let refused = held.enter(Some(7)).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            refused.message.contains("2 long-polls"),
            "{}",
            refused.message
        );
        assert!(
            held.enter(Some(8)).is_ok(),
            "another client is not held back"
        );
        drop(a);
        assert_eq!(held.held_by(Some(7)), 1);
        assert!(held.enter(Some(7)).is_ok());
    }
}
