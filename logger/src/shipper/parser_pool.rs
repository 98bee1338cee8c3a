//! The parser threads (`parser_threads` of them): each container is parsed
//! by one thread for its whole life (its streams' order, checkpoints and
//! panic rewind stay that thread's), new containers going to the thread
//! following the fewest; all of them feed the shared disk buffers. A panic
//! is contained in its thread: the others go on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::counters::Counters;
use super::parser::{ParseJob, Parser, ParserConfig};
use crate::wal::Wal;

/// The running parser threads.
#[derive(Debug)]
pub struct ParserPool {
    threads: Vec<Parser>,
}

impl ParserPool {
    /// Starts `n` threads (at least one); `wals` are every sink's buffer.
    pub fn start(
        n: usize,
        cfg: &ParserConfig,
        wals: &[Arc<Wal>],
        counters: &Arc<Counters>,
    ) -> std::io::Result<ParserPool> {
        let mut pool = ParserPool {
            threads: Vec::with_capacity(n.max(1)),
        };
        for i in 0..n.max(1) {
            match Parser::start(i, cfg.clone(), wals.to_vec(), counters.clone()) {
                Ok(p) => pool.threads.push(p),
                Err(e) => {
                    pool.stop();
                    return Err(e);
                }
            }
        }
        counters
            .parser_threads
            .store(pool.threads.len() as u64, Ordering::Relaxed);
        Ok(pool)
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Never true (at least one thread runs).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// The threads, by index.
    pub fn threads(&self) -> &[Parser] {
        &self.threads
    }

    /// Hands a container to the thread following the fewest; returns that
    /// thread's index (to wake it when the container's files grow).
    pub fn add(&self, job: ParseJob) -> usize {
        let i = least_loaded(self.threads.iter().map(Parser::live));
        self.threads[i].add(job);
        i
    }

    /// New bytes for thread `i`'s containers.
    pub fn wake(&self, i: usize) {
        if let Some(t) = self.threads.get(i) {
            t.wake();
        }
    }

    /// Stops every thread where it is (synced records, then saved offsets);
    /// they all stop at once, then are waited for.
    pub fn stop(&mut self) {
        self.threads.iter().for_each(Parser::ask_stop);
        self.threads.iter_mut().for_each(Parser::join);
    }
}

/// Index of the smallest load (the first of equals).
fn least_loaded(loads: impl Iterator<Item = usize>) -> usize {
    loads
        .enumerate()
        .min_by_key(|&(i, n)| (n, i))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_containers_go_to_the_least_loaded_thread_first_of_equals() {
        assert_eq!(least_loaded([3, 1, 2].into_iter()), 1);
        assert_eq!(least_loaded([2, 2, 2].into_iter()), 0);
        assert_eq!(least_loaded([5, 0, 0].into_iter()), 1);
        assert_eq!(least_loaded(std::iter::empty()), 0);
    }
}
