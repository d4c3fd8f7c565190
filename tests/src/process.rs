//! Child processes owned by a test (killed on drop) and polling with deadlines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test never
/// leaves a dataplane or apiserver behind. Its stdout/stderr go to a log file.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        cmd.stdout(out)
            .stderr(err)
            .stdin(std::process::Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("spawn {name} ({cmd:?}): {e}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The log file of this process.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends a signal (e.g. `libc::SIGHUP` as 1) with `kill -<sig>`.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.id().to_string())
            .status()?;
        anyhow::ensure!(
            st.success(),
            "kill -{sig} {} ({}) failed",
            self.id(),
            self.name
        );
        Ok(())
    }

    /// Kills and reaps the process now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every `every` until it returns `Ok(Some(v))` or `deadline` passes; the error names
/// `what` and the last failure. Use generous deadlines: CI is a busy 2-core machine.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    let mut last = String::from("condition not met");
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}: {last}");
        }
        std::thread::sleep(every);
    }
}

/// The status code of an HTTP response's first line (`HTTP/1.1 200 OK` -> 200).
pub fn http_status_line(response: &str) -> Option<u16> {
    response
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0): the status code, or `None` when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_status_line(&http_get(port, path)?)
}

/// `GET path` on `127.0.0.1:port` (HTTP/1.0): the whole response (status line, headers,
/// body), or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Sets the nice value of the calling thread (Linux: per thread); threads and processes it
/// starts afterwards inherit it. A measurement raises its priority with this so that other
/// work on a busy machine (builds, other tests) does not set the figures it measures.
pub fn set_thread_nice(nice: i32) -> anyhow::Result<()> {
    // SAFETY: gettid and setpriority on this thread's id; no memory is passed.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        anyhow::bail!("setpriority({nice}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread in the round-robin real-time class (`SCHED_RR`) at `priority`
/// (1 = the lowest); threads and processes it starts afterwards inherit it. Stronger than
/// [`set_thread_nice`]: no ordinary (CFS) work can delay such a thread, whatever its nice
/// value or its session's autogroup, while the kernel still keeps 5 % of every CPU for
/// ordinary work (`sched_rt_runtime_us`). For measurements that time packets: on a busy
/// 2-core machine, threads at nice -10 were runnable yet not run for up to 0.9 s.
pub fn set_thread_realtime(priority: i32) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rc != 0 {
        anyhow::bail!(
            "sched_setscheduler(SCHED_RR, {priority}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
