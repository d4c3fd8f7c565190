//! FleetBoard's Helm chart repository as a user meets it: both charts packaged by
//! `scripts/chart-repo.sh` and served over HTTP on the loopback address, for `helm repo add`.
//!
//! The server is a few lines of blocking std networking on a thread of its own: GET of the
//! repository's flat files (`index.yaml`, `*.tgz`), nothing else. A real repository is any
//! static file server; Helm asks nothing more of it.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;

use crate::kube::Tool;
use crate::netns::run;

/// A chart repository served on `127.0.0.1:<port>` until dropped.
pub struct ChartRepo {
    dir: PathBuf,
    url: String,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    /// The listening socket, shut down to wake the accept loop (it may live in another
    /// network namespace, where no connect from here would reach it).
    waker: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl ChartRepo {
    /// Packages this checkout's charts into `dir` with `scripts/chart-repo.sh` and serves them
    /// on the host's loopback address.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the chart repository")?;
        Self::spawn(dir, listener)
    }

    /// As [`ChartRepo::start`], on the loopback address of network namespace `netns` (a
    /// user's laptop on the test internet: helm runs there).
    pub fn start_in(dir: &Path, netns: &str) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // A socket stays in the namespace it was made in; setns changes only this thread.
        let listener = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns with a valid namespace fd affects only this scoped thread,
                // which only binds a socket and ends.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpListener::bind("127.0.0.1:0")
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the binding thread panicked"))
        })?
        .with_context(|| format!("binding the chart repository in {netns}"))?;
        Self::spawn(dir, listener)
    }

    fn spawn(dir: &Path, listener: TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let url = format!("http://{addr}");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/chart-repo.sh");
        run(Command::new(&script)
            .arg(dir)
            .arg(&url)
            .env("HELM", Tool::Helm.path()?))
        .context("scripts/chart-repo.sh")?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (dir, stop, served) = (dir.to_path_buf(), stop.clone(), served.clone());
            std::thread::Builder::new()
                .name("chart-repo".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(conn) = conn
                            && serve(&dir, conn)
                        {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })?
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            url,
            stop,
            served,
            waker,
            thread: Some(thread),
        })
    }

    /// The repository's URL (`http://127.0.0.1:<port>`), for `helm repo add`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The folder served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many files were served (Helm really fetched from here).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for ChartRepo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown of a socket this struct owns; a blocked accept() returns an error.
        unsafe { libc::shutdown(self.waker.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request: GET of a file directly in `dir`. True when a file was sent.
fn serve(dir: &Path, conn: TcpStream) -> bool {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return false;
    }
    // Drain the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let name = path.trim_start_matches('/');
    let file = (method == "GET"
        && !name.is_empty()
        && !name.contains('/')
        && !name.contains("..")
        && !name.starts_with('.'))
    .then(|| std::fs::read(dir.join(name)).ok())
    .flatten();
    let mut out = &conn;
    match file {
        Some(body) => {
            let kind = if name.ends_with(".yaml") {
                "application/x-yaml"
            } else {
                "application/gzip"
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())
                .and_then(|_| out.write_all(&body))
                .is_ok()
        }
        None => {
            let _ = out.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            false
        }
    }
}
