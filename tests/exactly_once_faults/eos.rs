//! The router binary in exactly-once mode as a child process: started,
//! signalled (kill -9, SIGSTOP, SIGCONT, SIGTERM), its `/metrics` scraped, its
//! log kept.

use std::io::{Read, Write};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::common::*;

pub const TRANSACTIONS: &str = "kafka_delay_router_transactions_total";

pub const ASSIGNED: &str = "kafka_delay_router_partitions_assigned";

/// A router binary in exactly-once mode, with its metrics on a port of its own.
pub struct Eos {
    child: Child,
    port: u16,
}

impl Eos {
    pub fn start(env: &Env, extra: &[&str]) -> Eos {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args = vec!["--exactly-once"];
        args.extend_from_slice(extra);
        let child = spawn_router_at(env, &format!("127.0.0.1:{port}"), &args);
        Eos { child, port }
    }

    /// `/metrics`, or None while it does not answer (starting, stopped).
    pub fn scrape(&self) -> Option<String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// The sum of `family`'s samples whose labels include `labels`; 0 when it does not answer.
    pub fn metric(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.scrape()
            .map_or(0.0, |text| sample_sum(&text, family, labels))
    }

    pub fn transactions(&self, outcome: &str) -> f64 {
        self.metric(TRANSACTIONS, &[("outcome", outcome)])
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig}");
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        wait_exit(&mut self.child, Duration::from_secs(30))
    }

    /// Waits until `f` holds of it, or panics after `timeout` with `what`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&Eos) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(Instant::now() < deadline, "{what}, not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Eos {
    /// A router left running by a failed assertion is resumed and killed.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sums the samples of `family` in Prometheus text whose labels include `labels`.
pub fn sample_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(family)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None => ("", rest),
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum::<f64>()
        + 0.0
}

/// Copies the routers' log out of the test's folder (removed at its end) and says where.
pub fn keep_log(env: &Env) {
    let log = env.config_path.with_file_name("router.log");
    let kept = std::env::temp_dir().join(format!("{}-router.log", env.prefix));
    if std::fs::copy(&log, &kept).is_ok() {
        println!("the routers' log is kept in {}", kept.display());
    }
}
