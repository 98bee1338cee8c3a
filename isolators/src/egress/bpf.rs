//! The classifier programs, hand-assembled and loaded with the bpf(2) syscall (no
//! compiler, no object files), and the map that maps cgroup v2 ids to classes.
//!
//! Both run as cls_bpf programs in classid mode: the return value is the HTB class,
//! 0 means "no match" (HTB then uses its default class).
//! - cgroup v1: `return bpf_get_cgroup_classid(skb)`: the net_cls classid of the
//!   sending socket *is* the class id, so one program serves every container.
//! - cgroup v2: `id = bpf_skb_ancestor_cgroup_id(skb, LEVEL); return map[id] or 0`,
//!   where LEVEL is the depth of the containers' cgroups, so processes in nested
//!   cgroups below a container's cgroup are classified as the container.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_GET_CGROUP_CLASSID: i32 = 17;
const FN_SKB_ANCESTOR_CGROUP_ID: i32 = 83;

/// The programs use no GPL-only helper; this names the programs' own license.
const LICENSE: &[u8] = b"Apache-2.0\0";

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
const MOV64_REG: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const JEQ_IMM: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const PSEUDO_MAP_FD: u8 = 1;

/// `return bpf_get_cgroup_classid(skb);`
pub fn classid_program() -> Vec<Insn> {
    vec![
        insn(CALL, 0, 0, 0, FN_GET_CGROUP_CLASSID),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// `key = bpf_skb_ancestor_cgroup_id(skb, level); v = lookup(map, &key); return v ? *v : 0;`
pub fn cgroup_map_program(level: i32, map_fd: RawFd) -> Vec<Insn> {
    vec![
        insn(MOV64_IMM, 2, 0, 0, level),
        insn(CALL, 0, 0, 0, FN_SKB_ANCESTOR_CGROUP_ID),
        insn(STX_DW, 10, 0, -8, 0),
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -8),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, FN_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, 1, 0),
        insn(LDX_W, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// bpf(2) with an attribute block; returns the non-negative result.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed; the kernel
    // reads (and for some commands writes) only within it, and pointers inside it
    // point to buffers the callers keep alive across the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(a: &mut [u8; 128], at: usize, v: u32) {
    a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8; 128], at: usize, v: u64) {
    a[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn owned(rc: i64) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(rc).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads a classifier program; the verifier's log is in the error on refusal.
pub fn load_program(insns: &[Insn], name: &str) -> io::Result<OwnedFd> {
    let mut a = [0u8; 128];
    put_u32(&mut a, 0, BPF_PROG_TYPE_SCHED_CLS);
    put_u32(&mut a, 4, u32::try_from(insns.len()).unwrap_or(u32::MAX));
    put_u64(&mut a, 8, insns.as_ptr() as u64);
    put_u64(&mut a, 16, LICENSE.as_ptr() as u64);
    let n = name.len().min(15);
    a[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    if let Ok(rc) = bpf(BPF_PROG_LOAD, &mut a.clone()) {
        return owned(rc);
    }
    // Refused: load again with the verifier's log, for the error message.
    let mut log = vec![0u8; 16 * 1024];
    put_u32(&mut a, 24, 1); // log_level
    put_u32(&mut a, 28, u32::try_from(log.len()).unwrap_or_default());
    put_u64(&mut a, 32, log.as_mut_ptr() as u64);
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(rc) => owned(rc),
        Err(e) => {
            let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "loading the BPF classifier: {e}; verifier: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ),
            ))
        }
    }
}

/// The ids of the BPF programs and maps named `name` the kernel holds, system-wide
/// (leak checks: rein's objects are all named [`super::FILTER_NAME`]; ids only
/// grow, so a check compares against the ids it saw first and is not fooled by an
/// earlier owner's objects still on their way out).
pub fn loaded_objects(name: &str) -> io::Result<(BTreeSet<u32>, BTreeSet<u32>)> {
    // (get-next-id command, get-fd-by-id command, offset of the name in the info).
    let count = |next_cmd, fd_cmd, name_at: usize| -> io::Result<BTreeSet<u32>> {
        let (mut id, mut n) = (0u32, BTreeSet::new());
        loop {
            let mut a = [0u8; 128];
            put_u32(&mut a, 0, id);
            match bpf(next_cmd, &mut a) {
                Ok(_) => id = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
                Err(e) => return Err(e),
            }
            let mut a = [0u8; 128];
            put_u32(&mut a, 0, id);
            let Ok(fd) = bpf(fd_cmd, &mut a).and_then(owned) else {
                continue; // Freed in between.
            };
            let mut info = [0u8; 256];
            let mut a = [0u8; 128];
            put_u32(&mut a, 0, u32::try_from(fd.as_raw_fd()).unwrap_or_default());
            put_u32(&mut a, 4, u32::try_from(info.len()).unwrap_or_default());
            put_u64(&mut a, 8, info.as_mut_ptr() as u64);
            bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
            let raw = &info[name_at..name_at + 16];
            let end = raw.iter().position(|&c| c == 0).unwrap_or(16);
            if &raw[..end]
                == name
                    .as_bytes()
                    .get(..name.len().min(15))
                    .unwrap_or_default()
            {
                n.insert(id);
            }
        }
    };
    Ok((
        count(BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, 64)?,
        count(BPF_MAP_GET_NEXT_ID, BPF_MAP_GET_FD_BY_ID, 24)?,
    ))
}

/// A hash map from cgroup id (`u64`) to class id (`u32`).
#[derive(Debug)]
pub struct CgroupClassMap {
    fd: OwnedFd,
}

impl CgroupClassMap {
    /// Creates a map for up to `max_entries` containers.
    pub fn create(max_entries: u32) -> io::Result<Self> {
        let mut a = [0u8; 128];
        put_u32(&mut a, 0, BPF_MAP_TYPE_HASH);
        put_u32(&mut a, 4, 8);
        put_u32(&mut a, 8, 4);
        put_u32(&mut a, 12, max_entries.max(1));
        let name = b"rein_egress";
        a[28..28 + name.len()].copy_from_slice(name);
        Ok(Self {
            fd: owned(bpf(BPF_MAP_CREATE, &mut a)?)?,
        })
    }

    /// The map's descriptor, for the program's relocation.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn elem(&self, key: &u64, value: u64, flags: u64) -> [u8; 128] {
        let mut a = [0u8; 128];
        put_u32(
            &mut a,
            0,
            u32::try_from(self.fd.as_raw_fd()).unwrap_or_default(),
        );
        put_u64(&mut a, 8, std::ptr::from_ref(key) as u64);
        put_u64(&mut a, 16, value);
        put_u64(&mut a, 24, flags);
        a
    }

    /// Maps a cgroup to a class (insert or overwrite).
    pub fn insert(&self, cgroup_id: u64, classid: u32) -> io::Result<()> {
        let mut a = self.elem(&cgroup_id, std::ptr::from_ref(&classid) as u64, 0);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }

    /// Forgets a cgroup; a missing entry is fine.
    pub fn remove(&self, cgroup_id: u64) -> io::Result<()> {
        let mut a = self.elem(&cgroup_id, 0, 0);
        match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The class of a cgroup.
    pub fn get(&self, cgroup_id: u64) -> io::Result<Option<u32>> {
        let mut value = 0u32;
        let mut a = self.elem(&cgroup_id, std::ptr::from_mut(&mut value) as u64, 0);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every cgroup id in the map.
    pub fn keys(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut next = 0u64;
        let mut key: Option<u64> = None;
        loop {
            // A null key asks for the first entry.
            let key_ptr = key.as_ref().map_or(0, |k| std::ptr::from_ref(k) as u64);
            let mut a = [0u8; 128];
            put_u32(
                &mut a,
                0,
                u32::try_from(self.fd.as_raw_fd()).unwrap_or_default(),
            );
            put_u64(&mut a, 8, key_ptr);
            put_u64(&mut a, 16, std::ptr::from_mut(&mut next) as u64);
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => {
                    out.push(next);
                    key = Some(next);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_encoded_as_the_kernel_expects() {
        let p = classid_program();
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(p[0], insn(0x85, 0, 0, 0, 17));
        let q = cgroup_map_program(2, 7);
        // ld_imm64 with the map fd takes two slots; src 1 marks a map fd.
        assert_eq!(q[5].regs, 0x11);
        assert_eq!(q[5].imm, 7);
        assert_eq!(q[2].regs, 0x0a);
        assert_eq!(q.last().unwrap().code, EXIT);
    }
}
