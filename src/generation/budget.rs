//! What LLM calls cost and the limit a pipeline sets on it. Pure: the store sums the
//! calls, the server asks [`Budget::reached`] before letting a new call start.

use serde::{Deserialize, Serialize};

/// A pipeline's spending limit: in US dollars, in tokens, or both. Whichever is reached
/// first stops new calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
}

/// How one LLM call ended, as recorded for accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallResult {
    /// Answered by the provider and paid.
    Paid,
    /// Answered from the response cache: nothing was paid.
    Cached,
    /// The provider failed or refused; tokens are zero unless it billed anyway.
    Failed,
}

impl CallResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Paid => "paid",
            CallResult::Cached => "cached",
            CallResult::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "paid" => Some(CallResult::Paid),
            "cached" => Some(CallResult::Cached),
            "failed" => Some(CallResult::Failed),
            _ => None,
        }
    }
}

/// Sums over a set of calls. Tokens and cost count what was billed (paid calls, and
/// failed ones a provider billed anyway); cached answers cost nothing, and `saved_usd` is
/// what they cost when they were first paid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub calls: i64,
    pub paid_calls: i64,
    pub cached_calls: i64,
    pub failed_calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub saved_usd: f64,
}

impl UsageTotals {
    pub fn total_tokens(&self) -> i64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn add(&mut self, other: &UsageTotals) {
        self.calls += other.calls;
        self.paid_calls += other.paid_calls;
        self.cached_calls += other.cached_calls;
        self.failed_calls += other.failed_calls;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd += other.cost_usd;
        self.saved_usd += other.saved_usd;
    }

    /// `12,345 tokens · $0.0123 · 3 of 9 calls cached`
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} tokens · ${:.4} · {} call{}",
            group_thousands(self.total_tokens()),
            self.cost_usd,
            self.calls,
            if self.calls == 1 { "" } else { "s" }
        );
        if self.cached_calls > 0 {
            s.push_str(&format!(
                " ({} cached, ${:.4} saved)",
                self.cached_calls, self.saved_usd
            ));
        }
        if self.failed_calls > 0 {
            s.push_str(&format!(" ({} failed)", self.failed_calls));
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.usd.is_none() && self.tokens.is_none()
    }

    /// Why no new call may start, once `spent` has reached the budget. The budget is
    /// checked before each call and stops new calls, not the ones in flight: with N calls
    /// running at once, spending can pass the limit by up to N calls.
    pub fn reached(&self, spent: &UsageTotals) -> Option<String> {
        if let Some(usd) = self.usd {
            if spent.cost_usd >= usd {
                return Some(format!(
                    "the pipeline budget of ${usd:.4} is reached (${:.4} spent)",
                    spent.cost_usd
                ));
            }
        }
        if let Some(tokens) = self.tokens {
            if spent.total_tokens() >= tokens {
                return Some(format!(
                    "the pipeline budget of {} tokens is reached ({} spent)",
                    group_thousands(tokens),
                    group_thousands(spent.total_tokens())
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_reached_by_cost_or_tokens_whichever_comes_first() {
        let spent = UsageTotals {
            paid_calls: 2,
            calls: 2,
            prompt_tokens: 700,
            completion_tokens: 300,
            cost_usd: 0.02,
            ..Default::default()
        };
        assert_eq!(Budget::default().reached(&spent), None);
        let by_usd = Budget {
            usd: Some(0.02),
            tokens: None,
        };
        assert_eq!(
            by_usd.reached(&spent).unwrap(),
            "the pipeline budget of $0.0200 is reached ($0.0200 spent)"
        );
        let by_tokens = Budget {
            usd: Some(1.0),
            tokens: Some(1_000),
        };
        assert_eq!(
            by_tokens.reached(&spent).unwrap(),
            "the pipeline budget of 1,000 tokens is reached (1,000 spent)"
        );
        assert_eq!(
            Budget {
                usd: Some(1.0),
                tokens: Some(1_001)
            }
            .reached(&spent),
            None
        );
    }

    #[test]
    fn totals_add_up_and_read_well() {
        let mut t = UsageTotals::default();
        t.add(&UsageTotals {
            calls: 3,
            paid_calls: 2,
            cached_calls: 1,
            prompt_tokens: 10_000,
            completion_tokens: 2_345,
            cost_usd: 0.0123,
            saved_usd: 0.004,
            ..Default::default()
        });
        t.add(&UsageTotals {
            calls: 1,
            failed_calls: 1,
            ..Default::default()
        });
        assert_eq!(t.calls, 4);
        assert_eq!(
            t.summary(),
            "12,345 tokens · $0.0123 · 4 calls (1 cached, $0.0040 saved) (1 failed)"
        );
    }
}
