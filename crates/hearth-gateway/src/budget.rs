//! Per-task token budgets.
//!
//! A call is admitted while the task has spent less than its budget, and the `usage.total_tokens`
//! of its response is added when it finishes. How many tokens a call will use is only known
//! afterwards, so a task can overshoot: by at most the usage of the calls in flight when the
//! budget ran out. Those are capped at `max_in_flight` per task (the agent makes one call at a
//! time, so it never meets the cap), which bounds the overshoot without serialising calls.

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

/// Why a call was refused before reaching the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("task budget of {max_tokens} tokens spent ({spent_tokens} used)")]
    Exhausted { max_tokens: u64, spent_tokens: u64 },
    #[error("task already has {limit} model calls in flight; retry when one finishes")]
    TooManyInFlight { limit: u32 },
}

/// A task's budget as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetUsage {
    pub max_tokens: u64,
    pub spent_tokens: u64,
    pub in_flight: u32,
}

#[derive(Debug)]
pub(crate) struct Budget {
    max_tokens: u64,
    max_in_flight: u32,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    spent: u64,
    in_flight: u32,
}

impl Budget {
    pub(crate) fn new(max_tokens: u64, max_in_flight: u32) -> Self {
        Self {
            max_tokens,
            max_in_flight: max_in_flight.max(1),
            state: Mutex::default(),
        }
    }

    /// Admits one call, or says why not. The returned guard releases the in-flight slot when
    /// dropped, also when the call fails or its connection is dropped mid-way.
    pub(crate) fn admit(&self) -> Result<Admission<'_>, BudgetError> {
        let mut state = self.lock();
        if state.spent >= self.max_tokens {
            return Err(BudgetError::Exhausted {
                max_tokens: self.max_tokens,
                spent_tokens: state.spent,
            });
        }
        if state.in_flight >= self.max_in_flight {
            return Err(BudgetError::TooManyInFlight {
                limit: self.max_in_flight,
            });
        }
        state.in_flight += 1;
        Ok(Admission { budget: self })
    }

    pub(crate) fn usage(&self) -> BudgetUsage {
        let state = self.lock();
        BudgetUsage {
            max_tokens: self.max_tokens,
            spent_tokens: state.spent,
            in_flight: state.in_flight,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        // Nothing panics while holding the lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted call's in-flight slot.
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    budget: &'a Budget,
}

impl Admission<'_> {
    /// Charges the tokens the call used.
    pub(crate) fn charge(&self, tokens: u64) {
        let mut state = self.budget.lock();
        state.spent = state.spent.saturating_add(tokens);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_spent_then_refuses() {
        let budget = Budget::new(100, 4);
        budget.admit().unwrap().charge(60);
        budget.admit().unwrap().charge(60); // admitted below the budget, overshoots it
        assert_eq!(
            budget.admit().unwrap_err(),
            BudgetError::Exhausted {
                max_tokens: 100,
                spent_tokens: 120
            }
        );
        assert_eq!(budget.usage().in_flight, 0);
    }

    #[test]
    fn in_flight_calls_are_capped_and_released_on_drop() {
        let budget = Budget::new(1_000, 2);
        let first = budget.admit().unwrap();
        let second = budget.admit().unwrap();
        assert_eq!(
            budget.admit().unwrap_err(),
            BudgetError::TooManyInFlight { limit: 2 }
        );
        drop(first);
        let third = budget.admit().unwrap();
        assert_eq!(budget.usage().in_flight, 2);
        drop((second, third));
        assert_eq!(budget.usage().in_flight, 0);
    }
}
