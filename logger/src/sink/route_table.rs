//! Per-route failure state of one sink ([`RouteTable`]) and of the batch
//! it is shipping ([`BatchRoutes`]): what `route_failure` decides is kept
//! here (see `route` for the policy itself).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use super::route::RouteFailure;

/// Counters of one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCounters {
    /// Records the route stored.
    pub shipped: u64,
    /// Refusals for good (one per record and attempt).
    pub refused: u64,
    /// Records of the route written to the dead-letter file after refusals.
    pub dead_lettered: u64,
    /// 1 while the route is marked failing.
    pub failing: u64,
    /// Records answered with a transient error (429, 5xx) while other routes
    /// of the same request were stored.
    pub stalled: u64,
}

/// Routes tracked per sink; beyond, they are counted under [`OTHER_ROUTES`]
/// (a task cannot grow the shipper's memory by naming routes).
pub const MAX_ROUTES: usize = 1000;
/// Name under which routes past [`MAX_ROUTES`] are counted.
pub const OTHER_ROUTES: &str = "(other)";

#[derive(Debug, Default)]
struct RouteState {
    first_refusal: Option<Instant>,
    attempts: u32,
    counters: RouteCounters,
}

impl RouteState {
    /// Counts one more failed attempt of the route (the first one starts its
    /// clock): true once `policy` gives up on it.
    fn attempt_gives_up(&mut self, policy: RouteFailure) -> bool {
        let now = Instant::now();
        let first = *self.first_refusal.get_or_insert(now);
        self.attempts = self.attempts.saturating_add(1);
        match policy {
            RouteFailure::Wait => false,
            RouteFailure::DeadLetterAfterAttempts(n) => self.attempts >= n,
            RouteFailure::DeadLetterAfter(d) => now.duration_since(first) >= d,
        }
    }
}

/// Failure state and counters of every route of one sink.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Mutex<BTreeMap<String, RouteState>>,
}

impl RouteTable {
    /// A snapshot of every route's counters.
    pub fn snapshot(&self) -> BTreeMap<String, RouteCounters> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.counters.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RouteState>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, route: &str, f: impl FnOnce(&mut RouteState) -> T) -> T {
        let mut m = self.lock();
        let key = if m.contains_key(route) || m.len() < MAX_ROUTES {
            route
        } else {
            OTHER_ROUTES
        };
        f(m.entry(key.to_string()).or_default())
    }

    /// A record of `route` was stored: a failing route recovers.
    pub fn stored(&self, sink: &str, route: &str) {
        self.with(route, |s| {
            s.counters.shipped += 1;
            if s.first_refusal.take().is_some() && s.counters.failing == 1 {
                tracing::warn!(sink, route, "route accepts records again");
            }
            s.attempts = 0;
            s.counters.failing = 0;
        });
    }

    /// A record of `route` was refused for good (`reason`); true if it must
    /// go to the dead-letter file now, false to resend it.
    pub fn refused(&self, sink: &str, route: &str, policy: RouteFailure, reason: &str) -> bool {
        self.with(route, |s| {
            s.counters.refused += 1;
            if s.counters.failing == 1 {
                s.counters.dead_lettered += 1;
                return true;
            }
            let give_up = s.attempt_gives_up(policy);
            if give_up {
                s.counters.failing = 1;
                s.counters.dead_lettered += 1;
                tracing::error!(
                    sink,
                    route,
                    "route refuses records for good ({reason}): its records go to the \
                     dead-letter file until it accepts one again; other routes ship on"
                );
            } else if s.attempts == 1 {
                tracing::warn!(
                    sink,
                    route,
                    ?policy,
                    "route refused a record for good ({reason}); resending"
                );
            }
            give_up
        })
    }

    /// `items` records of `route` got a transient error in a request where
    /// other routes' records were stored (`others_stored`), or the route is
    /// already failing: true if they must go to the dead-letter file now.
    /// One call per request and route: the bound counts requests (attempts)
    /// or the time since the first such request. Without other routes stored
    /// and while not failing, false (a sink-wide retry, nothing counted).
    pub fn transient(
        &self,
        sink: &str,
        route: &str,
        policy: RouteFailure,
        others_stored: bool,
        items: u64,
        reason: &str,
    ) -> bool {
        self.with(route, |s| {
            if s.counters.failing == 1 {
                s.counters.dead_lettered += items;
                if others_stored {
                    s.counters.stalled += items;
                }
                return true;
            }
            if !others_stored {
                return false;
            }
            s.counters.stalled += items;
            let give_up = s.attempt_gives_up(policy);
            if give_up {
                s.counters.failing = 1;
                s.counters.dead_lettered += items;
                tracing::error!(
                    sink,
                    route,
                    attempts = s.attempts,
                    "route keeps failing ({reason}) while other routes are stored: its \
                     records go to the dead-letter file until it accepts one again; \
                     other routes ship on"
                );
            } else if s.attempts == 1 {
                tracing::warn!(
                    sink,
                    route,
                    ?policy,
                    "route failed ({reason}) while other routes were stored; resending"
                );
            }
            give_up
        })
    }

    /// A record whose route no destination can have (a name the rules refuse)
    /// went to the dead-letter file.
    pub fn invalid(&self, sink: &str, route: &str, reason: &str) {
        self.with(route, |s| {
            s.counters.refused += 1;
            s.counters.dead_lettered += 1;
            if s.counters.refused == 1 {
                tracing::error!(
                    sink,
                    route,
                    "refused route ({reason}): its records go to the dead-letter file"
                );
            }
        });
    }

    /// True while `route` is marked failing.
    pub fn is_failing(&self, route: &str) -> bool {
        self.lock()
            .get(route)
            .is_some_and(|s| s.counters.failing == 1)
    }
}

/// The routes of the batch a sink is shipping: which stored records, and
/// which answered transient errors in the last attempt. [`BatchRoutes::settle`]
/// decides, once per attempt, which of those go to the dead-letter file
/// (their route keeps failing while others of the batch are stored, past
/// `route_failure`) and which are resent.
#[derive(Debug)]
pub struct BatchRoutes<T> {
    stored: std::collections::HashSet<String>,
    transient: BTreeMap<String, (String, Vec<T>)>,
}

impl<T> Default for BatchRoutes<T> {
    fn default() -> Self {
        BatchRoutes {
            stored: Default::default(),
            transient: BTreeMap::new(),
        }
    }
}

impl<T> BatchRoutes<T> {
    /// A record of `route` was stored (or already was).
    pub fn stored(&mut self, route: &str) {
        if !self.stored.contains(route) {
            self.stored.insert(route.to_string());
        }
    }

    /// `item` of `route` got a transient error (`reason` of the first is kept).
    pub fn transient(&mut self, route: String, reason: impl FnOnce() -> String, item: T) {
        self.transient
            .entry(route)
            .or_insert_with(|| (reason(), Vec::new()))
            .1
            .push(item);
    }

    /// Ends one attempt: the items to dead-letter now (with the reason) and
    /// the items to resend. A route that stored records in this batch is
    /// resent (the destination is merely busy); so is everything when no
    /// other route stored any (nothing tells a route from the destination).
    pub fn settle(
        &mut self,
        table: &RouteTable,
        sink: &str,
        policy: RouteFailure,
    ) -> (Vec<(T, String)>, Vec<T>) {
        let (mut dead, mut again) = (Vec::new(), Vec::new());
        for (route, (reason, items)) in std::mem::take(&mut self.transient) {
            let ours = self.stored.contains(&route);
            let others = self.stored.len() > usize::from(ours);
            if !ours && table.transient(sink, &route, policy, others, items.len() as u64, &reason) {
                let why = format!(
                    "{reason}, while other routes were stored: route failing (route_failure)"
                );
                dead.extend(items.into_iter().map(|i| (i, why.clone())));
            } else {
                again.extend(items);
            }
        }
        (dead, again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_fails_after_its_bound_and_recovers() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(2);
        assert!(!t.refused("es", "bad", p, "403"));
        assert!(t.refused("es", "bad", p, "403"));
        assert!(t.is_failing("bad"));
        // Failing: dead-lettered at the first refusal.
        assert!(t.refused("es", "bad", p, "403"));
        t.stored("es", "good");
        assert!(!t.is_failing("good"));
        t.stored("es", "bad");
        assert!(!t.is_failing("bad"));
        assert!(!t.refused("es", "bad", p, "403"));
        let snap = t.snapshot();
        assert_eq!(snap["bad"].refused, 4);
        assert_eq!(snap["bad"].dead_lettered, 2);
        assert_eq!(snap["good"].shipped, 1);
        assert!(!t.refused("es", "w", RouteFailure::Wait, "x"));
        assert!(!t.refused("es", "w", RouteFailure::Wait, "x"));
    }

    #[test]
    fn a_route_failing_transiently_beside_others_fails_after_its_bound() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(3);
        // Nothing else stored: the destination as a whole, not counted.
        for _ in 0..10 {
            assert!(!t.transient("es", "red", p, false, 5, "503"));
        }
        assert!(!t.transient("es", "red", p, true, 5, "503"));
        assert!(!t.transient("es", "red", p, true, 5, "503"));
        assert!(t.transient("es", "red", p, true, 5, "503"));
        assert!(t.is_failing("red"));
        // Failing: at once, even alone in a request.
        assert!(t.transient("es", "red", p, false, 2, "503"));
        let snap = t.snapshot();
        assert_eq!(snap["red"].stalled, 15);
        assert_eq!(snap["red"].dead_lettered, 7);
        t.stored("es", "red");
        assert!(!t.is_failing("red"));
        assert!(!t.transient("es", "red", p, true, 1, "503"));
        let w = RouteFailure::Wait;
        for _ in 0..10 {
            assert!(!t.transient("es", "w", w, true, 1, "429"));
        }
    }

    #[test]
    fn a_batch_settles_per_route() {
        let t = RouteTable::default();
        let p = RouteFailure::DeadLetterAfterAttempts(2);
        let mut b = BatchRoutes::default();
        // Alone: resent, not counted.
        b.transient("red".into(), || "503".into(), 1);
        assert_eq!(b.settle(&t, "es", p), (vec![], vec![1]));
        b.stored("ok");
        // A route busy in part (some of its records stored) is resent.
        b.stored("busy");
        b.transient("busy".into(), || "429".into(), 5);
        b.transient("red".into(), || "503".into(), 1);
        assert_eq!(b.settle(&t, "es", p), (vec![], vec![5, 1]));
        b.transient("red".into(), || "503".into(), 1);
        b.transient("red".into(), || "503".into(), 2);
        let (dead, again) = b.settle(&t, "es", p);
        assert_eq!(dead.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
        assert!(dead[0].1.contains("503"), "{}", dead[0].1);
        assert!(again.is_empty());
        assert!(t.is_failing("red"));
    }

    #[test]
    fn routes_are_bounded() {
        let t = RouteTable::default();
        for i in 0..MAX_ROUTES + 10 {
            t.stored("es", &format!("r{i}"));
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), MAX_ROUTES + 1);
        assert_eq!(snap[OTHER_ROUTES].shipped, 10);
    }
}
