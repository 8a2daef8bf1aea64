//! The kernel's process-events connector (netlink, `NETLINK_CONNECTOR`, `CN_IDX_PROC`): one
//! message for each `exec` on the machine, as it happens, so that the daemon looks at a new
//! process at once instead of walking `/proc` now and then. Listening needs `CAP_NET_ADMIN`;
//! without it [`ProcEvents::open`] fails and the caller polls `/proc` instead.
//!
//! The kernel queues the events in the socket's buffer; a reader too slow for them loses some
//! (`ENOBUFS`), which [`ProcEvents::next`] reports as [`Event::Lost`]: the caller then walks
//! `/proc` once to catch up.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::sys::socket::{bind, recv, sendto, setsockopt, sockopt, MsgFlags, NetlinkAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `linux/connector.h`, `linux/cn_proc.h`.
const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x2;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr`, then `struct cn_msg`.
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

/// What the connector said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Process `pid` (its thread group) ran `exec`.
    Exec { pid: i32 },
    /// Events were dropped (the reader was too slow): look at every process.
    Lost,
}

/// A subscription to the process-events connector.
pub struct ProcEvents {
    fd: OwnedFd,
}

impl ProcEvents {
    /// Subscribes; fails without `CAP_NET_ADMIN` or on a kernel built without the connector.
    pub fn open() -> Result<ProcEvents> {
        use nix::libc;
        // SAFETY: socket takes three integers and returns a new descriptor or -1 with errno;
        // no memory is passed.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_CONNECTOR) };
        let fd = Errno::result(fd).map_err(|e| Error::Other(format!("process-events connector: socket: {e}")))?;
        // SAFETY: `fd` was just created by socket for this call alone: nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        let err = |what: &str, e: Errno| Error::Other(format!("process-events connector: {what}: {e}"));
        // Room for a burst of events (each about 60 bytes) while the daemon applies a patch.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(4 << 20));
        bind(raw, &NetlinkAddr::new(0, CN_IDX_PROC)).map_err(|e| err("bind", e))?;
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
        let len = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len of the payload
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        sendto(raw, &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty()).map_err(|e| err("subscribe", e))?;
        Ok(ProcEvents { fd })
    }

    /// The events that came within `wait` (none when nothing did, or a signal came).
    pub fn next(&self, wait: Duration) -> Result<Vec<Event>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) => return Err(Error::Other(format!("process-events connector: poll: {e}"))),
        }
        let mut events = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => parse(&buf[..n], &mut events),
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => break,
                Err(Errno::ENOBUFS) => events.push(Event::Lost),
                Err(e) => return Err(Error::Other(format!("process-events connector: recv: {e}"))),
            }
        }
        Ok(events)
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The exec events in one datagram (one or more netlink messages, each a `cn_msg` holding a
/// `proc_event`); anything short or of another kind is skipped.
fn parse(b: &[u8], out: &mut Vec<Event>) {
    let mut at = 0;
    while let Some(len) = u32_at(b, at).map(|l| l as usize) {
        if len < NLMSG_HDR || len > b.len() - at {
            return;
        }
        let msg = &b[at..at + len];
        let cn = NLMSG_HDR;
        if u32_at(msg, cn) == Some(CN_IDX_PROC) && u32_at(msg, cn + 4) == Some(CN_VAL_PROC) {
            // proc_event: what, cpu, timestamp (8), then exec_proc_event { pid, tgid }.
            let ev = cn + CN_MSG_HDR;
            if u32_at(msg, ev) == Some(PROC_EVENT_EXEC) {
                if let Some(tgid) = u32_at(msg, ev + 20) {
                    out.push(Event::Exec { pid: tgid as i32 });
                }
            }
        }
        // Messages are 4-byte aligned.
        at += len.div_ceil(4) * 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, pid: u32, tgid: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let len = (NLMSG_HDR + CN_MSG_HDR + 24) as u32;
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&[0; 12]);
        m.extend_from_slice(&what.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u64.to_ne_bytes());
        m.extend_from_slice(&pid.to_ne_bytes());
        m.extend_from_slice(&tgid.to_ne_bytes());
        m
    }

    #[test]
    fn exec_events_parsed_others_skipped() {
        let mut b = message(PROC_EVENT_EXEC, 12, 10);
        b.extend(message(0x1, 13, 13));
        b.extend(message(PROC_EVENT_EXEC, 14, 14));
        let mut out = Vec::new();
        parse(&b, &mut out);
        assert_eq!(out, vec![Event::Exec { pid: 10 }, Event::Exec { pid: 14 }]);
    }

    #[test]
    fn short_or_lying_lengths_never_panic() {
        let m = message(PROC_EVENT_EXEC, 1, 1);
        for cut in 0..m.len() {
            let mut out = Vec::new();
            parse(&m[..cut], &mut out);
            assert!(out.is_empty());
        }
        let mut bad = m.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        parse(&bad, &mut Vec::new());
        bad[..4].copy_from_slice(&3u32.to_ne_bytes());
        parse(&bad, &mut Vec::new());
    }
}
