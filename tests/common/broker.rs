//! An Apache Kafka broker of a test's own (restarts, SASL users, TLS
//! listeners), started, stopped and killed through `scripts/broker.sh` (the
//! same script the test command uses for the shared broker).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How a test's own broker is set up beyond a plain single node.
#[derive(Default, Clone)]
pub struct BrokerSetup {
    /// The client listener's security protocol (`SSL`, `SASL_PLAINTEXT`, ...);
    /// PLAINTEXT when empty.
    pub protocol: String,
    /// Server properties, `key=value`, appended to the generated ones.
    pub props: Vec<String>,
    /// SCRAM users written when the storage is formatted: `MECH:USER:PASSWORD`.
    pub scram: Vec<String>,
}

/// A single-node Apache Kafka (KRaft) of a test's own in `dir` (or a cluster
/// of several nodes, [`Broker::start_cluster`]), stopped when dropped. Its log is `cluster-PORT/node-1/broker.log` in `dir`.
pub struct Broker {
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    nodes: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/broker.sh")
}

fn run_script(args: &[String]) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("bash runs scripts/broker.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/broker.sh {}: {text}",
        args.join(" ")
    );
    text
}

impl Broker {
    /// Starts a plaintext single-node broker in `dir` and waits until it
    /// answers a metadata request.
    pub fn start(dir: &Path) -> Broker {
        Self::start_with(dir, &BrokerSetup::default())
    }

    /// Like [`Broker::start`], set up as `setup` says.
    pub fn start_with(dir: &Path, setup: &BrokerSetup) -> Broker {
        Self::start_cluster(dir, 1, setup)
    }

    /// A cluster of `nodes` nodes, each a broker and a KRaft controller (ids
    /// 1..=N on client ports PORT..PORT+N-1), set up as `setup` says; returns
    /// when every node answers a metadata request listing all of them.
    pub fn start_cluster(dir: &Path, nodes: u16, setup: &BrokerSetup) -> Broker {
        let nodes = nodes.max(1);
        let port = free_port_block_of(nodes);
        let mut args = vec![
            port.to_string(),
            "--dir".to_string(),
            dir.display().to_string(),
        ];
        if !setup.protocol.is_empty() {
            args.extend(["--protocol".to_string(), setup.protocol.clone()]);
        }
        if !setup.props.is_empty() {
            let file = dir.join(format!("extra-{port}.properties"));
            std::fs::write(&file, setup.props.join("\n") + "\n").unwrap();
            args.extend(["--props".to_string(), file.display().to_string()]);
        }
        for user in &setup.scram {
            args.extend(["--scram".to_string(), user.clone()]);
        }
        if nodes > 1 {
            args.extend(["--nodes".to_string(), nodes.to_string()]);
        }
        // Built before the launch: if the launch panics, dropping it stops
        // whatever did start.
        let broker = Broker {
            dir: dir.to_path_buf(),
            port,
            args,
            nodes,
        };
        broker.launch();
        broker
    }

    fn launch(&self) {
        let mut args = vec!["start".to_string()];
        args.extend(self.args.iter().cloned());
        run_script(&args);
    }

    /// The client port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `VERB PORT --dir DIR`: a script command aimed at this broker.
    fn at(&self, verb: &str) -> Vec<String> {
        let mut args = vec![verb.to_string()];
        args.extend([
            self.port.to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
        ]);
        args
    }

    /// Runs a Kafka command-line tool by class name (`scripts/broker.sh tool`)
    /// and returns its output; panics if it fails.
    pub fn kafka_tool(&self, args: &[&str]) -> String {
        let mut all = vec!["tool".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        run_script(&all)
    }

    /// Stops the broker with SIGTERM (a controlled shutdown) and waits for it to exit.
    fn stop(&mut self) {
        run_script(&self.at("stop"));
    }

    /// Stops the broker with SIGTERM, waits `down`, and starts it again on the
    /// same storage; returns when it answers metadata requests again.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.launch();
    }
}

/// A cluster of several nodes ([`Broker::start_cluster`]): node ids are 1..=N.
impl Broker {
    /// How many nodes the cluster has.
    pub fn nodes(&self) -> u16 {
        self.nodes
    }

    /// Node `id`'s client port (127.0.0.1).
    pub fn node_port(&self, id: u16) -> u16 {
        assert!((1..=self.nodes).contains(&id), "no node {id}");
        self.port + id - 1
    }

    /// Every node's `127.0.0.1:PORT`, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap_all(&self) -> String {
        (1..=self.nodes)
            .map(|id| format!("127.0.0.1:{}", self.node_port(id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `VERB NODE PORT --dir DIR`: a script command aimed at one node.
    fn at_node(&self, verb: &str, id: u16) -> Vec<String> {
        let mut args = self.at(verb);
        args.insert(1, id.to_string());
        args
    }

    /// Kills node `id` with SIGKILL and waits until its process has exited.
    pub fn kill_node(&self, id: u16) {
        run_script(&self.at_node("kill", id));
    }

    /// Starts node `id` again (stopping it first if it runs) on its storage;
    /// returns when every node answers a metadata request listing all of them.
    pub fn restart_node(&self, id: u16) {
        run_script(&self.at_node("restart", id));
    }

    /// Node `id`'s folder (`broker.log`, `server.properties`, `data/`).
    pub fn node_dir(&self, id: u16) -> PathBuf {
        self.dir.join(format!("cluster-{}/node-{id}", self.port))
    }

    /// Node `id`'s log.
    pub fn node_log(&self, id: u16) -> PathBuf {
        self.node_dir(id).join("broker.log")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(self.at("stop"))
            .output();
    }
}

/// A port P with P+100 and P+200 free too (scripts/broker.sh puts the
/// controller and the internal listener there), below Linux's ephemeral range
/// (32768 and up) so that no outgoing connection takes one before the broker
/// binds it, and different for each broker a test binary starts.
/// For a cluster of `nodes`, P..P+nodes-1 are free, and the same at +100 and +200.
fn free_port_block_of(nodes: u16) -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 21_000 + (std::process::id() % 40) as u16 * 25;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = base + n % 1_000;
        if [0, 100, 200].iter().all(|d| {
            (0..nodes).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + d + i)).is_ok())
        }) {
            return port;
        }
    }
}
