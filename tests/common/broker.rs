//! A Nisshi broker of a test's own (persistent storage, authentication, TLS,
//! or a listener that advertises another port), and ports.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The broker the tests run: Nisshi 0.8.1 (Tansu's renamed successor;
/// `scripts/broker.sh install` installs it).
pub const BROKER_BIN: &str = "nisshi";

/// A Nisshi broker of a test's own, killed when dropped. Its first rebalance of
/// a new group does not wait for more members (Nisshi waits 3 s by default),
/// so a test with one group member starts at once. Its log goes to
/// `nisshi-<listen>.log` in its directory.
pub struct Broker {
    child: Child,
    dir: std::path::PathBuf,
    listen: u16,
    advertise: u16,
    storage: String,
    extra: Vec<String>,
}

impl Broker {
    /// Starts `nisshi broker` in `dir` on 127.0.0.1:`listen`, advertising
    /// 127.0.0.1:`advertise`, with `storage` (`memory://nisshi/`, or
    /// `sqlite://nisshi.db`, relative to `dir`), and waits until it accepts connections.
    pub fn start(dir: &std::path::Path, listen: u16, advertise: u16, storage: &str) -> Broker {
        Self::start_with(dir, listen, advertise, storage, &[])
    }

    /// Like [`Broker::start`], with more `nisshi broker` flags (e.g. `--authentication`).
    pub fn start_with(
        dir: &std::path::Path,
        listen: u16,
        advertise: u16,
        storage: &str,
        extra: &[&str],
    ) -> Broker {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("nisshi-{listen}.log")))
            .unwrap();
        let child = Command::new(BROKER_BIN)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertise}"),
                "--group-initial-rebalance-delay",
                "0ms",
                "--storage-engine",
                storage,
            ])
            .args(extra)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("NISSHI_LOG").unwrap_or("warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nisshi on PATH (scripts/broker.sh install)");
        let mut broker = Broker {
            child,
            dir: dir.to_path_buf(),
            listen,
            advertise,
            storage: storage.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("nisshi exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nisshi does not listen on 127.0.0.1:{}; its log:\n{}",
                self.listen,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("nisshi-{}.log", self.listen)))
            .unwrap_or_default()
    }

    /// Stops the broker with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Stops the broker with SIGTERM, waits `down`, and starts it again on the same storage.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        *self = Broker::start_with(
            &self.dir,
            self.listen,
            self.advertise,
            &self.storage,
            &extra,
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
