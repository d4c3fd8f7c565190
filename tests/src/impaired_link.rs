//! An impaired link between a host and a test underlay, in userspace: the stand-in for
//! `tc netem`, which this project's CI kernel does not have (no `sch_netem`, no modules).
//!
//! ```text
//!  host ns            link ns (fb-lnk-*)                    underlay ns
//!  [dev] ==veth== [host0] -> AF_PACKET -> LinkModel -> [net0] ==veth== [pN]--br0
//!                 [host0] <- LinkModel <- AF_PACKET <- [net0]
//! ```
//!
//! Two threads, one per direction, read whole Ethernet frames from one side with a raw
//! `AF_PACKET` socket, pass them through a [`LinkModel`] and write them out on the other side
//! when due. Frames must be real frames of at most the MTU with complete checksums, so
//! [`disable_offloads`] must be applied to every interface whose frames cross the link (the
//! host's and the other underlay hosts'): a GSO super-frame would be one "packet" to the
//! model and too large to send, and a partial checksum would be wrong once copied.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::link_impairment::{Impairment, ImpairmentCounts, LinkModel};
use crate::netns::{Netns, Underlay, veth};

/// Longest a forwarding thread sleeps before it looks at its stop flag again.
const IDLE_WAKE: Duration = Duration::from_millis(50);
/// Kernel receive buffer of each raw socket: frames wait there while a thread is descheduled
/// on a busy machine (what still overflows it is counted in `kernel_dropped`).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// What the link did in one direction, with what the kernel dropped before the model saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounts {
    /// The model's decisions.
    pub model: ImpairmentCounts,
    /// Frames the kernel dropped from the raw socket's receive queue (not impairment).
    pub kernel_dropped: u64,
    /// Frames the model handed on that could not be sent.
    pub send_errors: u64,
}

struct Direction {
    model: Mutex<LinkModel>,
    kernel_dropped: Mutex<u64>,
    send_errors: Mutex<u64>,
}

impl Direction {
    fn counts(&self) -> DirectionCounts {
        DirectionCounts {
            model: self.model.lock().unwrap().counts(),
            kernel_dropped: *self.kernel_dropped.lock().unwrap(),
            send_errors: *self.send_errors.lock().unwrap(),
        }
    }
}

/// A host attached to an underlay through an impaired link. Dropping it stops the threads
/// and deletes the link's namespace (the host's interface goes with it).
pub struct ImpairedLink {
    /// Frames from the host to the underlay.
    up: Arc<Direction>,
    /// Frames from the underlay to the host.
    down: Arc<Direction>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ns: Netns,
}

impl ImpairedLink {
    /// Attaches `host` to `underlay` with interface `dev` carrying `cidrs`, through a link
    /// that starts as `imp` in both directions.
    pub fn attach(
        underlay: &Underlay,
        host: &Netns,
        dev: &str,
        cidrs: &[&str],
        imp: Impairment,
    ) -> anyhow::Result<Self> {
        let ns = Netns::new("lnk")?;
        // The link namespace only forwards frames: no addresses, no packets of its own.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6=1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6=1")?;
        veth(host, dev, &ns, "host0")?;
        underlay.attach(&ns, "net0", &[])?;
        for side in ["host0", "net0"] {
            disable_offloads(&ns, side)?;
            ns.ip(&["link", "set", side, "promisc", "on"])?;
        }
        disable_offloads(host, dev)?;
        for c in cidrs {
            host.addr_add(dev, c)?;
        }
        let (a, b) = open_sockets(&ns)?;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let new_dir = || {
            Arc::new(Direction {
                model: Mutex::new(LinkModel::new(imp.clone())),
                kernel_dropped: Mutex::new(0),
                send_errors: Mutex::new(0),
            })
        };
        let (up, down) = (new_dir(), new_dir());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (name, from, to, dir) in [
            ("link-up", a.clone(), b.clone(), up.clone()),
            ("link-down", b, a, down.clone()),
        ] {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || forward(&from, &to, &dir, &stop))?,
            );
        }
        Ok(Self {
            up,
            down,
            stop,
            threads,
            ns,
        })
    }

    /// Sets both directions to `imp` (each direction's random decisions restart from the
    /// seed; the downward direction uses `seed + 1` so the two differ).
    pub fn set(&self, imp: &Impairment) {
        self.up.model.lock().unwrap().set(imp.clone());
        let mut down = imp.clone();
        down.seed = imp.seed.wrapping_add(1);
        self.down.model.lock().unwrap().set(down);
    }

    /// The impairment in force (upward direction).
    pub fn impairment(&self) -> Impairment {
        self.up.model.lock().unwrap().impairment().clone()
    }

    /// What the link did so far: (host to underlay, underlay to host).
    pub fn counts(&self) -> (DirectionCounts, DirectionCounts) {
        (self.up.counts(), self.down.counts())
    }

    /// The link's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Drop for ImpairedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Turns off checksum offload, segmentation and receive coalescing on `dev` in `ns`, so every
/// frame on it is a complete frame of at most the MTU.
pub fn disable_offloads(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    ns.exec(
        "ethtool",
        &[
            "-K", dev, "tx", "off", "sg", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    )
    .with_context(|| format!("ethtool -K {dev} in {}", ns.name()))?;
    Ok(())
}

/// Raw sockets on `host0` and `net0`, opened by a thread inside the link namespace.
fn open_sockets(ns: &Netns) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let path = format!("/run/netns/{}", ns.name());
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with a valid namespace fd affects only this scoped thread, which
            // only opens sockets and ends; a socket stays in the namespace it was made in.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok((raw_socket("host0")?, raw_socket("net0")?))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the socket thread panicked"))
    })?
    .context("opening the link's raw sockets")
}

/// An `AF_PACKET` raw socket bound to `dev` (all protocols), ignoring frames it sends.
fn raw_socket(dev: &str) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, SOCKET_BUFFER)?;
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SOCKET_BUFFER)?;
    set_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
    // The kernel's arrival time of every frame, so a forwarding thread that runs late still
    // offers frames to the model at the times they arrived (see `recv_frame`).
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_opt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: v is a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Frames the kernel dropped from `fd`'s receive queue since the last call.
fn kernel_drops(fd: &OwnedFd) -> u64 {
    // SAFETY: tpacket_stats is plain data; getsockopt fills at most `len` bytes.
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 { u64::from(st.tp_drops) } else { 0 }
}

/// Waits until `fd` is readable or `timeout` passes (microsecond resolution).
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}

/// Reads one frame from `fd` into `buf` without waiting: its length and when it arrived.
///
/// The arrival is the kernel's receive timestamp (`SO_TIMESTAMPNS`, wall clock) mapped onto
/// [`Instant`]. Taking `Instant::now()` at read time instead would bunch up every frame that
/// queued in the socket while this thread was not running (a busy machine deschedules it
/// for tens of milliseconds, sometimes far longer): the model would see a burst the host
/// never sent and drop from the bottleneck queue frames that a real link would have carried.
fn recv_frame(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, Instant)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements: aligned for cmsghdr; room for one timespec control message.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid value, the pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at a valid iovec over buf and a valid control buffer.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n <= 0 {
        return None;
    }
    let now = Instant::now();
    let mut arrived = now;
    // SAFETY: walking the control messages the kernel wrote into `control` with the CMSG_*
    // helpers, which stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let at = std::time::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                let age = std::time::SystemTime::now()
                    .duration_since(at)
                    .unwrap_or_default();
                arrived = now.checked_sub(age).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some((n as usize, arrived))
}

/// One direction: frames read from `from` go through the model and out on `to`.
fn forward(from: &OwnedFd, to: &OwnedFd, dir: &Direction, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let timeout = dir
            .model
            .lock()
            .unwrap()
            .next_due()
            .map(|at| at.saturating_duration_since(Instant::now()))
            .unwrap_or(IDLE_WAKE)
            .min(IDLE_WAKE);
        if !timeout.is_zero() {
            wait_readable(from, timeout);
        }
        while let Some((n, arrived)) = recv_frame(from, &mut buf) {
            let frame = buf[..n].to_vec();
            dir.model.lock().unwrap().offer(arrived, frame);
        }
        let dropped = kernel_drops(from);
        if dropped > 0 {
            *dir.kernel_dropped.lock().unwrap() += dropped;
        }
        loop {
            let Some(frame) = dir.model.lock().unwrap().pop_due(Instant::now()) else {
                break;
            };
            // SAFETY: frame is valid for frame.len() bytes.
            let n = unsafe { libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n != frame.len() as isize {
                *dir.send_errors.lock().unwrap() += 1;
            }
        }
    }
}
