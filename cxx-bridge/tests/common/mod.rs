//! What the bridge's tests share: a completer that sends the outcome down a
//! channel, an isolator that does nothing but count its `status()` calls, and
//! one that journals its `prepare`s and `cleanup`s.

#![allow(dead_code)]

use std::sync::{mpsc, Arc, Mutex};

use rein_core::isolator::Error;
use rein_core::{ContainerId, ContainerSpec, Isolator, LaunchInfo, RecoveredContainer, Status};
use rein_modules::{Completer, IsolatorHandle, Outcome};

/// Sends its outcome.
pub struct Channel(pub mpsc::Sender<Outcome>);

impl Completer for Channel {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let _ = self.0.send(outcome);
    }
}

/// A completer and where its outcome arrives.
pub fn completer() -> (Box<dyn Completer>, mpsc::Receiver<Outcome>) {
    let (tx, rx) = mpsc::channel();
    (Box::new(Channel(tx)), rx)
}

/// Succeeds at everything; reports how many times `status()` was asked as the
/// classid.
pub struct Quiet {
    name: &'static str,
    asked: u32,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet::named("quiet")
    }
}

impl Quiet {
    /// One that gives `name` as its name (the bridge treats "disk" apart).
    pub fn named(name: &'static str) -> Self {
        Quiet { name, asked: 0 }
    }
}

impl Isolator for Quiet {
    fn name(&self) -> &'static str {
        self.name
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, _: &ContainerSpec) -> Result<LaunchInfo, Error> {
        Ok(LaunchInfo::default())
    }
    fn isolate(&mut self, _: &ContainerId, _: i32) -> Result<(), Error> {
        Ok(())
    }
    fn status(&mut self, _: &ContainerId) -> Result<Status, Error> {
        self.asked += 1;
        Ok(Status {
            net_cls_classid: Some(self.asked),
        })
    }
    fn cleanup(&mut self, _: &ContainerId) -> Result<(), Error> {
        Ok(())
    }
}

pub type Journal = Arc<Mutex<Vec<String>>>;

/// Writes each `prepare` (with the container's first label) and `cleanup` it gets
/// to the journal, and gives its name as the launch info's environment.
pub struct Journaling {
    pub name: &'static str,
    pub journal: Journal,
}

impl Isolator for Journaling {
    fn name(&self) -> &'static str {
        self.name
    }
    fn recover(&mut self, _: &[RecoveredContainer], _: &[ContainerId]) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&mut self, spec: &ContainerSpec) -> Result<LaunchInfo, Error> {
        let label = spec
            .task_labels
            .first()
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} prepare {} {label}", self.name, spec.id));
        Ok(LaunchInfo {
            environment: vec![(self.name.to_uppercase(), "1".into())],
            ..LaunchInfo::default()
        })
    }
    fn isolate(&mut self, _: &ContainerId, _: i32) -> Result<(), Error> {
        Ok(())
    }
    fn cleanup(&mut self, id: &ContainerId) -> Result<(), Error> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{} cleanup {id}", self.name));
        Ok(())
    }
}

/// Journaling isolators by these names, started as the agent's (early prepares
/// on), writing to one journal.
pub fn journaling_in_agent(names: &[&'static str], journal: &Journal) -> Vec<IsolatorHandle> {
    names
        .iter()
        .map(|&name| {
            let iso = Journaling {
                name,
                journal: journal.clone(),
            };
            IsolatorHandle::start_in_agent(Box::new(iso)).unwrap()
        })
        .collect()
}
