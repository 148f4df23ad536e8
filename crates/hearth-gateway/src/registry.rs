//! The tasks the gateway serves: token -> task, each with its budget.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::budget::{Budget, BudgetUsage};
use crate::task::{GatewayToken, TaskId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("task {0} is already registered with the gateway")]
    AlreadyRegistered(TaskId),
}

#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) task_id: TaskId,
    token: GatewayToken,
    pub(crate) budget: Budget,
}

impl TaskEntry {
    /// The token's text, only to scrub it from recorded bodies.
    pub(crate) fn token_text(&self) -> String {
        self.token.expose()
    }
}

#[derive(Debug, Default)]
pub(crate) struct TaskRegistry {
    tasks: RwLock<HashMap<TaskId, Arc<TaskEntry>>>,
}

impl TaskRegistry {
    pub(crate) fn register(
        &self,
        task_id: TaskId,
        max_tokens: u64,
        max_in_flight: u32,
    ) -> Result<GatewayToken, RegistryError> {
        let mut tasks = self.tasks.write().unwrap_or_else(PoisonError::into_inner);
        if tasks.contains_key(&task_id) {
            return Err(RegistryError::AlreadyRegistered(task_id));
        }
        let token = GatewayToken::generate();
        let entry = TaskEntry {
            task_id: task_id.clone(),
            token: token.clone(),
            budget: Budget::new(max_tokens, max_in_flight),
        };
        tasks.insert(task_id, Arc::new(entry));
        Ok(token)
    }

    pub(crate) fn revoke(&self, task_id: &TaskId) -> Option<BudgetUsage> {
        let mut tasks = self.tasks.write().unwrap_or_else(PoisonError::into_inner);
        tasks.remove(task_id).map(|entry| entry.budget.usage())
    }

    pub(crate) fn usage(&self, task_id: &TaskId) -> Option<BudgetUsage> {
        let tasks = self.tasks.read().unwrap_or_else(PoisonError::into_inner);
        tasks.get(task_id).map(|entry| entry.budget.usage())
    }

    /// The task whose token is `bearer`. Every registered token is compared, each in constant
    /// time, with no early exit: a host runs tens of tasks, so the scan is cheap, and timing
    /// reveals neither a token's bytes nor where in the table it sits.
    pub(crate) fn authenticate(&self, bearer: &str) -> Option<Arc<TaskEntry>> {
        let presented = GatewayToken::decode(bearer)?;
        let tasks = self.tasks.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for entry in tasks.values() {
            if entry.token.matches(&presented) {
                found = Some(Arc::clone(entry));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_task_until_revoked() {
        let registry = TaskRegistry::default();
        let a = TaskId::parse("a").unwrap();
        let token_a = registry.register(a.clone(), 10, 1).unwrap();
        let token_b = registry
            .register(TaskId::parse("b").unwrap(), 10, 1)
            .unwrap();
        let found = registry.authenticate(&token_a.expose()).unwrap();
        assert_eq!(found.task_id, a);
        assert_ne!(token_a.expose(), token_b.expose());
        assert_eq!(
            registry.register(a.clone(), 10, 1).unwrap_err(),
            RegistryError::AlreadyRegistered(a.clone())
        );
        assert!(registry.revoke(&a).is_some());
        assert!(registry.authenticate(&token_a.expose()).is_none());
        assert!(registry.authenticate("hgt_nonsense").is_none());
    }
}
