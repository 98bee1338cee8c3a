//! Creates isolators by the name the module manifest gives them.

use rein_core::isolator::Error;
use rein_core::Isolator;

use crate::blkio::BlkioIsolator;
use crate::disk::DiskIsolator;
use crate::net_cls::NetClsIsolator;

/// The isolators this library provides, by kind.
pub const KINDS: &[&str] = &["blkio", "disk", "net_cls"];

/// A kind the manifest names that this library does not provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown isolator kind '{kind}' (known: {})", KINDS.join(", "))]
pub struct UnknownKind {
    /// The kind asked for.
    pub kind: String,
}

/// Creates an isolator of a kind from its module parameters.
pub fn create(kind: &str, params: &[(String, String)]) -> Result<Box<dyn Isolator>, Error> {
    match kind {
        "blkio" => Ok(Box::new(BlkioIsolator::from_params(params)?)),
        "disk" => Ok(Box::new(DiskIsolator::from_params(params)?)),
        "net_cls" => Ok(Box::new(NetClsIsolator::from_params(params)?)),
        other => Err(UnknownKind {
            kind: other.to_owned(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_names_the_known_ones() {
        let err = create("cpu", &[]).err().expect("no cpu isolator");
        assert_eq!(
            err.to_string(),
            "unknown isolator kind 'cpu' (known: blkio, disk, net_cls)"
        );
    }
}
