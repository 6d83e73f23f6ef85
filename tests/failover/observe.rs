//! The router binary under observation: its process, its `/metrics` address,
//! and the pollers of `/readyz` (every 100 ms) and `/metrics` (every second).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_delay_router::kafka::now_ms;

pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prometheus text as series (`name{labels}`) -> value.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What the pollers saw: `/readyz` every 100 ms, `/metrics` every second.
#[derive(Default)]
pub struct Observed {
    /// (time, status; 0 when the request failed)
    pub ready: Vec<(i64, u16)>,
    /// (time, series) of each successful scrape
    pub scrapes: Vec<(i64, BTreeMap<String, f64>)>,
    pub scrape_failures: Vec<i64>,
}

pub struct Pollers {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Observed>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pollers {
    pub fn start(addr: String) -> Pollers {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Observed::default()));
        let mut threads = Vec::new();
        {
            let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ms();
                    let status = http_get(&addr, "/readyz").map(|r| r.0).unwrap_or(0);
                    seen.lock().unwrap().ready.push((t, status));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }));
        }
        {
            let (stop, seen) = (stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ms();
                    match http_get(&addr, "/metrics") {
                        Ok((200, body)) => {
                            seen.lock().unwrap().scrapes.push((t, parse_metrics(&body)))
                        }
                        _ => seen.lock().unwrap().scrape_failures.push(t),
                    }
                    next += Duration::from_secs(1);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            }));
        }
        Pollers {
            stop,
            seen,
            threads,
        }
    }

    pub fn latest(&self) -> Option<BTreeMap<String, f64>> {
        self.seen
            .lock()
            .unwrap()
            .scrapes
            .last()
            .map(|s| s.1.clone())
    }

    pub fn finish(self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("pollers stopped")
            .into_inner()
            .unwrap()
    }
}

/// Sum of a family's series.
pub fn family_sum(scrape: &BTreeMap<String, f64>, family: &str) -> f64 {
    scrape
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(family))
        .map(|(_, v)| v)
        .sum()
}

/// The router binary, killed if the test ends without stopping it.
pub struct RouterProcess(pub std::process::Child);

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address the router binary serves /metrics on, from its log.
pub fn metrics_addr_from_log(log: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
        {
            return addr.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the router did not log its metrics address: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
