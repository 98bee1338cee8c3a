//! `LoggerHandle`: what the shim's `ContainerLogger` subclass holds and forwards to.

use std::os::fd::IntoRawFd;

use cxx::UniquePtr;
use rein_logger::module::LoggerModule;

use crate::actor::{construct, error_chain, Actor, Completer, CxxCompleter, Outcome};
use crate::bridge::ffi::{Completion, ContainerConfigView, ContainerIoView, KeyValue};
use crate::convert;

/// One logger instance (the Docker containerizer makes a second one in the same
/// process; instances share nothing but the shipper they talk to).
pub struct LoggerHandle {
    actor: Actor<LoggerModule>,
}

/// Creates the logger; a bad parameter is an error the shim reports to the agent.
pub fn create_logger(parameters: &[KeyValue]) -> Result<Box<LoggerHandle>, String> {
    let params = convert::parameters(parameters).map_err(|e| format!("rein logger: {e}"))?;
    let module = construct("logger", || {
        LoggerModule::new(&params).map_err(|err| error_chain(&err))
    })?;
    let actor = Actor::spawn("logger", Box::new(module))
        .map_err(|e| format!("rein logger: starting its thread: {e}"))?;
    Ok(Box::new(LoggerHandle { actor }))
}

impl LoggerHandle {
    /// `prepare()`, completing any [`Completer`] with the container's descriptors.
    pub fn prepare_with(&self, config: ContainerConfigView, done: Box<dyn Completer>) {
        let text = config.container.text();
        self.actor.call("prepare", text, done, move |logger| {
            let spec = match convert::container_spec(config) {
                Ok(spec) => spec,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            match logger.prepare(&spec) {
                Ok(io) => Outcome::ContainerIo(ContainerIoView {
                    stdout_fd: io.stdout.into_raw_fd(),
                    stderr_fd: io.stderr.into_raw_fd(),
                }),
                Err(e) => Outcome::Failed(error_chain(&e)),
            }
        });
    }

    pub(crate) fn prepare(&self, config: ContainerConfigView, done: UniquePtr<Completion>) {
        self.prepare_with(config, CxxCompleter::boxed(done));
    }
}
