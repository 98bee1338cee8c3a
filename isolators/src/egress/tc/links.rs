//! The devices of a namespace and the default route's device, over rtnetlink.

use super::super::netlink::{attr_string, find_attr, u32_at, Msg, Netlink, NlError};

const RTM_GETLINK: u16 = 18;
const RTM_GETROUTE: u16 = 26;
const IFLA_IFNAME: u16 = 3;
const IFF_LOOPBACK: u32 = 0x8;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;

/// One network device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Whether it is a loopback device.
    pub loopback: bool,
}

/// Lists the devices of the socket's network namespace.
pub fn links(nl: &mut Netlink) -> Result<Vec<Link>, NlError> {
    let mut m = Msg::new(RTM_GETLINK, 0, "listing network devices");
    m.header(&[0u8; 16]);
    let mut out = Vec::new();
    for r in nl.dump(m)? {
        let p = &r.payload;
        let (Some(index), Some(flags)) = (u32_at(p, 4), u32_at(p, 8)) else {
            continue;
        };
        let name = p
            .get(16..)
            .and_then(|a| find_attr(a, IFLA_IFNAME))
            .map(attr_string)
            .unwrap_or_default();
        out.push(Link {
            index,
            name,
            loopback: flags & IFF_LOOPBACK != 0,
        });
    }
    Ok(out)
}

/// The index of the device with this name.
pub fn link_index(nl: &mut Netlink, name: &str) -> Result<Option<u32>, NlError> {
    Ok(links(nl)?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index))
}

/// The output device of the IPv4 (else IPv6) default route of the main table.
pub fn default_route_device(nl: &mut Netlink) -> Result<Option<u32>, NlError> {
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut m = Msg::new(RTM_GETROUTE, 0, "listing routes");
        let mut rtmsg = [0u8; 12];
        rtmsg[0] = u8::try_from(family).unwrap_or_default();
        m.header(&rtmsg);
        for r in nl.dump(m)? {
            let p = &r.payload;
            let (Some(&dst_len), Some(&table)) = (p.get(1), p.get(4)) else {
                continue;
            };
            let a = p.get(12..).unwrap_or_default();
            let table = find_attr(a, RTA_TABLE)
                .and_then(|d| u32_at(d, 0))
                .unwrap_or(u32::from(table));
            if dst_len != 0 || table != RT_TABLE_MAIN {
                continue;
            }
            if let Some(oif) = find_attr(a, RTA_OIF).and_then(|d| u32_at(d, 0)) {
                return Ok(Some(oif));
            }
        }
    }
    Ok(None)
}
