//! Attaching a container: its two streams opened on its sandbox files, the
//! supervisor given duplicates of every descriptor, the parser given the
//! parse halves, the pipes armed. Also the previous worker's staged bytes,
//! written out before anything newer.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::bucket::Bucket;
use super::container::{Container, Unsaved};
use super::{control, epoll, Worker};
use crate::module::compile_pattern;
use crate::proto::{MultilineSpec, Registration, SinkKind};
use crate::record::{MultilineConfig, StartRule, Stream, StreamPipeline};
use crate::sandbox::SandboxDir;
use crate::shipper::logfiles::{self, FileEncoding, FileSources, FilesCheckpoint};
use crate::shipper::parser::{Checkpoint, ParseJob};
use crate::shipper::stream::{self, FileRecord, ParseStream, StreamState};

/// Why a container could not be attached (nothing was handed to the
/// supervisor yet).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The registration or adoption did not carry the two pipes.
    #[error("two pipes expected")]
    TwoPipes,
    /// The sandbox directory could not be opened.
    #[error("sandbox {}: {source}", path.display())]
    Sandbox {
        /// The sandbox directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A stream's sandbox file or record could not be opened or created.
    #[error("{}: {source}", path.display())]
    Stream {
        /// The sandbox file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl Worker {
    /// Takes a container's two pipes (`fds[0..2]`), after an adoption with the
    /// previous worker's two staging pipes (`fds[2..4]`, written out first), and
    /// gives the supervisor duplicates of the pipes and of the new staging pipes.
    /// The sandbox files are those of `records` (saved by the previous
    /// worker), never whatever their names hold; without, new ones.
    /// Fails only before the supervisor is told of the container: from then
    /// on a state directory that takes no write (the registration message
    /// `unsaved_registration`, the first checkpoint if `first_checkpoint`)
    /// leaves the container attached, its state saved later.
    pub(super) fn attach(
        &mut self,
        reg: Registration,
        fds: Vec<OwnedFd>,
        cp: Option<Checkpoint>,
        records: [Option<FileRecord>; 2],
        unsaved_registration: Option<Vec<u8>>,
        first_checkpoint: bool,
    ) -> Result<u64, AttachError> {
        let mut fds = fds.into_iter();
        let (Some(out), Some(err)) = (fds.next(), fds.next()) else {
            return Err(AttachError::TwoPipes);
        };
        let old_stages: Vec<OwnedFd> = fds.collect();
        let wal = self
            .sinks
            .iter()
            .find(|(k, _)| *k == reg.options.sink)
            .map(|(_, s)| s.wal.clone());
        if wal.is_none() && reg.options.sink != SinkKind::None {
            tracing::warn!(
                container = reg.key,
                sink = reg.options.sink.name(),
                "sink not configured in this shipper: sandbox files only"
            );
        }
        // Taken once, by a walk that follows no symlink a task controls; every
        // sandbox file is then reached relative to it.
        let sandbox =
            Arc::new(
                SandboxDir::open(&reg.sandbox).map_err(|source| AttachError::Sandbox {
                    path: reg.sandbox.clone(),
                    source,
                })?,
            );
        let dir = self.container_dir(&reg.key);
        let cid = reg.meta.container_id().into_bytes();
        let route = reg.options.route.clone().into_bytes();
        // One encoding for its streams and its log files.
        let encode = self.cfg.encode.with_binary(reg.options.binary);
        let multiline = reg.options.multiline.as_ref().and_then(multiline_config);
        // The task's log files: followed only where records are made.
        let sinks: Vec<_> = self
            .sinks
            .iter()
            .map(|(k, s)| (*k, s.wal.clone()))
            .collect();
        let (files, file_wals) = logfiles::for_container(
            &reg,
            FileEncoding {
                meta: reg.meta.clone(),
                encode: encode.clone(),
                max_line: self.cfg.max_line_bytes,
                multiline: multiline.clone(),
            },
            wal.is_some(),
            &sinks,
            sandbox.clone(),
            cp.as_ref().and_then(|c| c.files.clone()),
            self.counters.log_files.clone(),
        );
        let mut streams = Vec::with_capacity(2);
        let mut parse_streams = Vec::with_capacity(2);
        for (((stream, fd), scp), record) in [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .zip([out, err])
            .zip([cp.as_ref().map(|c| c.stdout), cp.as_ref().map(|c| c.stderr)])
            .zip(records)
        {
            let pipeline = wal.as_ref().map(|_| {
                StreamPipeline::new(
                    &reg.meta,
                    stream,
                    &encode,
                    self.cfg.max_line_bytes,
                    multiline.clone(),
                )
            });
            let (st, ps) = stream::open(stream, sandbox.clone(), &dir, fd, pipeline, scp, record)
                .map_err(|source| AttachError::Stream {
                path: reg.sandbox.join(stream.name()),
                source,
            })?;
            streams.push(st);
            parse_streams.push(ps);
        }
        // The previous worker's staged bytes go first. A sandbox disk that
        // refuses them (full, say) makes the container wait, as while running.
        let mut undrained = false;
        for (st, old) in streams.iter_mut().zip(&old_stages) {
            undrained |= !self.write_out_stage(&reg.key, st, old);
        }
        // Nothing below fails: the supervisor holds the pipes from here on.
        let mut unsaved = Unsaved {
            registration: unsaved_registration,
            checkpoint: None,
        };
        if first_checkpoint {
            // The log files' part as the parser starts from (what a previous
            // worker saved of them): one killed before its own first checkpoint
            // must not leave the next worker without them (it would follow the
            // files anew, numbering them from 0 again, and miss rotated ones).
            let files_cp = files
                .as_ref()
                .map(FileSources::checkpoint)
                .or_else(|| cp.as_ref().and_then(|c| c.files.clone()));
            let body = checkpoint_body(&parse_streams, files_cp);
            let path = dir.join("checkpoint.json");
            let saved = self.reserve.save(&dir, body.len() as u64, || {
                crate::private::write_atomic(&path, &body)
            });
            if let Err(e) = saved {
                self.state_unsaved(&reg.key, "checkpoint", &e);
                unsaved.checkpoint = Some(body);
            }
        }
        if unsaved.any() {
            self.counters
                .containers_state_unsaved
                .fetch_add(1, Ordering::Relaxed);
        }
        let old_stages = if undrained {
            // The supervisor keeps the old staging pipes until they are written out.
            let mut fds: Vec<RawFd> = control::pipe_fds(&streams);
            fds.extend(old_stages.iter().map(AsRawFd::as_raw_fd));
            control::send_add(&self.control, &reg.key, &fds);
            Some(old_stages)
        } else {
            control::hand_to_supervisor(&self.control, &reg.key, &mut streams);
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        let finished = Arc::new(AtomicBool::new(false));
        let parser = self.parser.add(
            ParseJob::new(
                reg.key.clone(),
                dir.clone(),
                cid,
                route,
                wal.clone(),
                parse_streams,
                finished.clone(),
            )
            .with_files(files, file_wals),
        );
        let mut c = Container {
            parser,
            key: reg.key.clone(),
            dir,
            streams,
            wal,
            paused: false,
            bucket: Bucket::for_rate(reg.options.rate_limit),
            finished,
            unsaved,
            old_stages,
        };
        if c.old_stages.is_none() {
            for (i, st) in c.streams.iter_mut().enumerate() {
                if let Some(p) = &st.pipe {
                    // Not armed: the next tick tries again.
                    match self.epoll.add(p, epoll::pipe_token(id, i)) {
                        Ok(()) => st.armed = true,
                        Err(e) => tracing::warn!(container = reg.key, "epoll: {e}"),
                    }
                }
            }
        }
        self.keys.insert(reg.key.clone(), id);
        self.containers.insert(id, c);
        self.counters
            .containers_live
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .containers_registered
            .fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Writes out a previous worker's staging pipe `old` into `st`'s file;
    /// false if the file refused it (retried by the tick).
    fn write_out_stage(&self, key: &str, st: &mut StreamState, old: &OwnedFd) -> bool {
        match st.drain(old) {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        container = key,
                        bytes = n,
                        "wrote out the previous worker's staged bytes"
                    );
                }
                st.stalled = None;
                true
            }
            Err(e) => {
                let d = st.stall();
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %st.path.display(), "writing the previous worker's staged bytes: {e}; retrying in {d:?} (the container's pipe is not read until then)");
                false
            }
        }
    }

    /// Retries the staged bytes of a previous worker; once all are written,
    /// the container is read again with staging pipes of this worker.
    pub(super) fn retry_old_stages(&mut self) {
        let ids: Vec<u64> = self
            .containers
            .iter()
            .filter(|(_, c)| {
                c.old_stages.is_some() && !c.streams.iter().any(StreamState::stalled_now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(mut c) = self.containers.remove(&id) else {
                continue;
            };
            let olds = c.old_stages.take().unwrap_or_default();
            let mut done = true;
            for (st, old) in c.streams.iter_mut().zip(&olds) {
                done &= self.write_out_stage(&c.key, st, old);
            }
            if done {
                tracing::info!(
                    container = c.key,
                    "the previous worker's staged bytes are written: reading again"
                );
                control::hand_to_supervisor(&self.control, &c.key, &mut c.streams);
            } else {
                c.old_stages = Some(olds);
            }
            self.containers.insert(id, c);
        }
    }
}

/// `checkpoint.json` of a container's two streams and its log files.
fn checkpoint_body(streams: &[ParseStream], files: Option<FilesCheckpoint>) -> Vec<u8> {
    let cp = Checkpoint {
        stdout: streams[0].checkpoint(),
        stderr: streams[1].checkpoint(),
        files,
    };
    serde_json::to_vec(&cp).unwrap_or_default()
}

/// The multiline rule of a registration (`None`, logged, for a pattern the
/// shipper refuses: the stream is framed line by line).
pub(crate) fn multiline_config(spec: &MultilineSpec) -> Option<MultilineConfig> {
    let rule = match &spec.pattern {
        None => StartRule::Indented,
        Some(p) => match compile_pattern(p) {
            Ok(re) => StartRule::Pattern(re),
            Err(e) => {
                tracing::warn!("multiline pattern refused: {e}");
                return None;
            }
        },
    };
    Some(MultilineConfig {
        rule,
        max_lines: spec.max_lines.max(1),
        max_bytes: usize::try_from(spec.max_bytes).unwrap_or(usize::MAX).max(1),
        timeout: Duration::from_millis(spec.timeout_ms.max(1)),
    })
}
