//! The record pipeline: bytes of a container stream -> lines -> (multiline)
//! records -> Elastic Common Schema JSON documents.
//!
//! Everything here is pure (no I/O) so that it can be tested with golden
//! bytes and benchmarked alone (`rein-log-bench`).

pub mod encode;
pub mod frame;
pub mod json;
pub mod multiline;
pub mod pipeline;
pub mod rebuild;
pub mod time;

pub use encode::{BinaryMode, EncodeOptions};
pub use encode::{SourceMeta, StreamEncoder};
pub use frame::{Framer, Line, SplitPart};
pub use multiline::{Multiline, MultilineConfig, Record, StartRule};
pub use pipeline::{Encoded, PipelineMark, StreamPipeline};
pub use rebuild::{rebuild, RebuildError, Rebuilt};

/// Where a record came from: one of the container's two output streams, or
/// a log file the task named (`rein.log.files`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A log file in the sandbox.
    File,
}

impl Stream {
    /// `"stdout"` or `"stderr"` (also the sandbox file name), or `"file"`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::File => "file",
        }
    }

    /// One-byte tag used in ids and the disk buffer.
    pub fn tag(self) -> u8 {
        match self {
            Stream::Stdout => b'o',
            Stream::Stderr => b'e',
            Stream::File => b'f',
        }
    }

    /// Inverse of [`Stream::tag`].
    pub fn from_tag(t: u8) -> Option<Stream> {
        match t {
            b'o' => Some(Stream::Stdout),
            b'e' => Some(Stream::Stderr),
            b'f' => Some(Stream::File),
            _ => None,
        }
    }
}
