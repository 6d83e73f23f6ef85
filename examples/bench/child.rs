//! The router as users run it: the release binary in its own process, with its
//! metrics endpoint on a free local port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::common::{bootstrap, free_port, metric_sum, metrics_text};

pub struct RouterProcess {
    child: Option<Child>,
    /// HOST:PORT of its /metrics endpoint.
    pub addr: String,
}

impl RouterProcess {
    /// Starts `kafka-delay-router run` with the given topics file and group;
    /// its output goes to `log` (or nowhere).
    pub fn start(bin: &Path, config: &Path, group: &str, log: Option<&Path>) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let (out, err) = match log {
            Some(path) => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                (Stdio::from(f.try_clone()?), Stdio::from(f))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .args([
                "--bootstrap-servers",
                &bootstrap(),
                "--group-id",
                group,
                "--metrics-addr",
                &addr,
                "--log",
                if log.is_some() { "warn" } else { "error" },
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(RouterProcess {
            child: Some(child),
            addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until the sum of `family` reaches `want`; fails after `timeout`.
    pub async fn wait_metric(&self, family: &str, want: f64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = metrics_text(&self.addr)
                .await
                .map_or(0.0, |t| metric_sum(&t, family));
            if now >= want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the router's {family} is {now}, not {want}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until it owns `partitions` tier partitions; fails after
    /// `timeout` with the tail of its log (`log`).
    pub async fn wait_assigned(
        &self,
        partitions: i32,
        timeout: Duration,
        log: &std::path::Path,
    ) -> Result<()> {
        let family = "kafka_delay_router_partitions_assigned";
        if let Err(e) = self
            .wait_metric(family, f64::from(partitions), timeout)
            .await
        {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{e}; router log {}:\n{tail}", log.display());
        }
        Ok(())
    }

    /// Stops it with SIGTERM (a graceful drain) and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            tokio::task::spawn_blocking(move || child.wait()).await??;
        }
        Ok(())
    }
}

impl Drop for RouterProcess {
    /// A router left behind by an error is killed, not left running.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
