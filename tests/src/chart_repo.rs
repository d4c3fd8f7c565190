//! FleetBoard's Helm chart repository as a user meets it: both charts packaged by
//! `scripts/chart-repo.sh` and served over HTTP on the loopback address, for `helm repo add`.
//!
//! The server is a few lines of blocking std networking on a thread of its own: GET of the
//! repository's flat files (`index.yaml`, `*.tgz`), nothing else. A real repository is any
//! static file server; Helm asks nothing more of it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
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
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ChartRepo {
    /// Packages this checkout's charts into `dir` with `scripts/chart-repo.sh` and serves them.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the chart repository")?;
        let addr = listener.local_addr()?;
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
            addr,
            stop,
            served,
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
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
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
