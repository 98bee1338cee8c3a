//! Creates isolators by the name the module manifest gives them.

use rein_core::isolator::Error;
use rein_core::Isolator;

use crate::blkio::BlkioIsolator;
use crate::disk::DiskIsolator;
use crate::net_cls::NetClsIsolator;

/// The isolators this library provides, by kind.
pub const KINDS: &[&str] = &["blkio", "disk", "net_cls"];

/// Creates an isolator of a kind from its module parameters.
pub fn create(kind: &str, params: &[(String, String)]) -> Result<Box<dyn Isolator>, Error> {
    match kind {
        "blkio" => Ok(Box::new(BlkioIsolator::from_params(params)?)),
        "disk" => Ok(Box::new(DiskIsolator::from_params(params)?)),
        "net_cls" => Ok(Box::new(NetClsIsolator::from_params(params)?)),
        other => Err(format!(
            "unknown isolator kind '{other}' (known: {})",
            KINDS.join(", ")
        )
        .into()),
    }
}
