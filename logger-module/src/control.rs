//! The messages of the local protocol, typed: what a module asks the shipper
//! ([`Request`]) and what it answers ([`Reply`]); what the supervisor, its
//! worker and an orphaned worker say to one another ([`Control`]).
//!
//! The bytes on the wire are those of the earlier versions (a registration
//! in JSON, `probe`, `ok`, `error: ...`; `add\n<key>`, `del\n<key>`,
//! `adopt\n<key>`, `done`, `listen`): a module and a shipper, a supervisor
//! and a worker restarted from a newer binary, an orphaned worker and the
//! next supervisor may be of different versions and still understand each
//! other. Decoding never panics: an empty, unknown or malformed message is a
//! [`DecodeError`], which the receiver counts and logs.

use crate::proto::{Registration, REGISTRATION_VERSION};

/// Most bytes of an unknown message quoted in an error.
const QUOTE: usize = 32;

/// Why a message was not understood.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// No bytes: the peer closed (not a message).
    #[error("empty message")]
    Empty,
    /// A tag this version does not know (written by a newer one, or garbage).
    #[error("unknown message {0:?}")]
    Unknown(String),
    /// A container key that is not UTF-8.
    #[error("{tag}: the container key is not UTF-8")]
    Key {
        /// The message's tag.
        tag: &'static str,
    },
    /// A registration that does not parse.
    #[error("bad registration: {0}")]
    Registration(#[from] serde_json::Error),
    /// A registration of another major version.
    #[error("protocol version {0} not supported")]
    Version(u32),
}

fn quote(msg: &[u8]) -> String {
    String::from_utf8_lossy(&msg[..msg.len().min(QUOTE)]).into_owned()
}

/// What a module sends the shipper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// "Do you answer?": the shipper replies and registers nothing (an older
    /// shipper refuses it, which proves it alive as well).
    Probe,
    /// A container, with the read ends of its stdout and stderr attached.
    Register(Box<Registration>),
}

/// Wire form of [`Request::Probe`].
pub const PROBE: &[u8] = b"probe";

impl Request {
    /// The message's bytes.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Request::Probe => Ok(PROBE.to_vec()),
            Request::Register(r) => serde_json::to_vec(r),
        }
    }

    /// Reads a module's message; a registration of another major version is
    /// refused here.
    pub fn decode(msg: &[u8]) -> Result<Request, DecodeError> {
        if msg.is_empty() {
            return Err(DecodeError::Empty);
        }
        if msg == PROBE {
            return Ok(Request::Probe);
        }
        let reg: Registration = serde_json::from_slice(msg)?;
        if reg.version != REGISTRATION_VERSION {
            return Err(DecodeError::Version(reg.version));
        }
        Ok(Request::Register(Box::new(reg)))
    }
}

/// The answer to a [`Request`] or to a handover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Taken.
    Ok,
    /// Refused, and why.
    Error(String),
}

impl Reply {
    /// The message's bytes: `ok` or `error: <why>`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ok => b"ok".to_vec(),
            Reply::Error(why) => format!("error: {why}").into_bytes(),
        }
    }

    /// Reads an answer: anything but `ok` is a refusal (its text after
    /// `error: `, or the whole of it from a peer that does not say so).
    pub fn decode(msg: &[u8]) -> Reply {
        if msg == b"ok" {
            return Reply::Ok;
        }
        let why = msg.strip_prefix(b"error: ").unwrap_or(msg);
        Reply::Error(String::from_utf8_lossy(why).into_owned())
    }
}

/// What the supervisor, its worker and an orphaned worker say to one
/// another; descriptors travel beside the message (`SCM_RIGHTS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Worker to supervisor (and orphaned worker to the next supervisor):
    /// hold the attached descriptors for container `key`, replacing what was
    /// held (its two pipes, then the worker's two staging pipes if any).
    Hold(String),
    /// Worker to supervisor: container `key` ended or was released, close
    /// what is held for it.
    Release(String),
    /// Supervisor to a new worker: take container `key` back (descriptors
    /// attached as held).
    Adopt(String),
    /// End of a list (the adoptions, a handover).
    Done,
    /// Orphaned worker to the next supervisor, first: the modules' listening
    /// socket is attached.
    Listen,
}

impl Control {
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let keyed = |tag: &str, key: &str| format!("{tag}\n{key}").into_bytes();
        match self {
            Control::Hold(key) => keyed("add", key),
            Control::Release(key) => keyed("del", key),
            Control::Adopt(key) => keyed("adopt", key),
            Control::Done => b"done".to_vec(),
            Control::Listen => b"listen".to_vec(),
        }
    }

    /// Reads a message; unknown tags are an error the receiver skips.
    pub fn decode(msg: &[u8]) -> Result<Control, DecodeError> {
        match msg {
            [] => return Err(DecodeError::Empty),
            b"done" => return Ok(Control::Done),
            b"listen" => return Ok(Control::Listen),
            _ => {}
        }
        let (tag, key) = match msg.iter().position(|&b| b == b'\n') {
            Some(i) => (&msg[..i], &msg[i + 1..]),
            None => return Err(DecodeError::Unknown(quote(msg))),
        };
        let (tag, make): (&'static str, fn(String) -> Control) = match tag {
            b"add" => ("add", Control::Hold),
            b"del" => ("del", Control::Release),
            b"adopt" => ("adopt", Control::Adopt),
            _ => return Err(DecodeError::Unknown(quote(msg))),
        };
        let key = std::str::from_utf8(key).map_err(|_| DecodeError::Key { tag })?;
        Ok(make(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_in_the_earlier_wire_form() {
        for (m, wire) in [
            (Control::Hold("a.b".into()), &b"add\na.b"[..]),
            (Control::Release("a".into()), b"del\na"),
            (Control::Adopt("k".into()), b"adopt\nk"),
            (Control::Done, b"done"),
            (Control::Listen, b"listen"),
        ] {
            assert_eq!(m.encode(), wire);
            assert_eq!(Control::decode(wire).unwrap(), m);
        }
    }

    #[test]
    fn malformed_control_messages_are_typed_errors() {
        assert!(matches!(Control::decode(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            Control::decode(b"resize\nk"),
            Err(DecodeError::Unknown(m)) if m == "resize\nk"
        ));
        assert!(matches!(
            Control::decode(b"add"),
            Err(DecodeError::Unknown(_))
        ));
        assert!(matches!(
            Control::decode(b"add\n\xff"),
            Err(DecodeError::Key { tag: "add" })
        ));
        let long = vec![b'x'; 4096];
        let Err(DecodeError::Unknown(q)) = Control::decode(&long) else {
            panic!("a long unknown message is an error");
        };
        assert_eq!(q.len(), QUOTE, "the error quotes a bounded prefix");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every length to 64, every byte.
        const ALPHABET: &[u8] = b"adeltopnsu\n\xff{}\"0";
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..64 {
            for _ in 0..64 {
                let msg: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        ALPHABET[usize::try_from(x % ALPHABET.len() as u64).unwrap()]
                    })
                    .collect();
                let _ = Control::decode(&msg);
                let _ = Request::decode(&msg);
                let _ = Reply::decode(&msg);
            }
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        assert_eq!(Request::decode(PROBE).unwrap(), Request::Probe);
        assert_eq!(Request::Probe.encode().unwrap(), PROBE);
        let reg: Registration = serde_json::from_str(include_str!(
            "../../logger/tests/fixtures/registration-v1.json"
        ))
        .unwrap();
        let wire = Request::Register(Box::new(reg.clone())).encode().unwrap();
        assert_eq!(
            Request::decode(&wire).unwrap(),
            Request::Register(Box::new(reg.clone()))
        );
        let mut v2 = reg;
        v2.version = 2;
        let wire = serde_json::to_vec(&v2).unwrap();
        assert_eq!(
            Request::decode(&wire).unwrap_err().to_string(),
            "protocol version 2 not supported"
        );
        assert!(Request::decode(b"{")
            .unwrap_err()
            .to_string()
            .starts_with("bad registration: "));
        assert_eq!(Reply::decode(&Reply::Ok.encode()), Reply::Ok);
        let refused = Reply::Error("full".into()).encode();
        assert_eq!(refused, b"error: full");
        assert_eq!(Reply::decode(&refused), Reply::Error("full".into()));
        assert_eq!(Reply::decode(b"no"), Reply::Error("no".into()));
    }
}
