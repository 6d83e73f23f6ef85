//! The set-up the router's broker tests share: the test's topics, a collector
//! reading the target from before anything is produced, the router (in
//! process and owning every tier partition, or the binary as a child
//! process), a plain producer and a DelayProducer. [`Setup`] says what a test
//! changes; [`Setup::topics`] stops before the collector and the router, for
//! a test that writes something first.

use std::process::Child;

use kafka_delay_router::router::{Router, RouterOptions};
use kafka_delay_router::DelayProducer;
use rdkafka::producer::FutureProducer;

use super::{kafka, producer, spawn_router_with, unique, wait_assigned, Collector, Env};

type Tweak = Box<dyn FnOnce(&mut RouterOptions) + Send>;

/// What a test's environment and router are: `name`'s tiers of `tier_ms`,
/// `partitions` partitions each, one target and the dead-letter topic unless
/// the builder says otherwise.
pub struct Setup {
    name: String,
    tier_ms: Vec<u64>,
    partitions: i32,
    targets: usize,
    extra_yaml: String,
    cancel_topic: bool,
    warm_cancel: bool,
    exactly_once: bool,
    dead_letters: bool,
    tweaks: Vec<Tweak>,
}

impl Setup {
    pub fn new(name: &str, tier_ms: &[u64], partitions: i32) -> Setup {
        Setup {
            name: name.to_string(),
            tier_ms: tier_ms.to_vec(),
            partitions,
            targets: 1,
            extra_yaml: String::new(),
            cancel_topic: false,
            warm_cancel: false,
            exactly_once: false,
            dead_letters: false,
            tweaks: Vec::new(),
        }
    }

    /// `n` target topics instead of one. With none, [`Rig::col`] reads the
    /// dead-letter topic and [`Rig::target`] is empty.
    pub fn targets(mut self, n: usize) -> Setup {
        self.targets = n;
        self
    }

    /// Lines added to the topics file (`max-delay: 1d\n`, say).
    pub fn extra_yaml(mut self, yaml: &str) -> Setup {
        self.extra_yaml.push_str(yaml);
        self
    }

    /// A cancel topic of its own: 3 partitions, kept 8 days.
    pub fn cancel_topic(mut self) -> Setup {
        self.cancel_topic = true;
        self
    }

    /// A first cancellation (id `warm-up`) through the DelayProducer before
    /// anything else, so that later ones do not wait for the cancel topic's
    /// metadata (one outstanding cancellation more).
    pub fn warm_cancel(mut self) -> Setup {
        self.warm_cancel = true;
        self
    }

    /// An in-process router in exactly-once mode ([`Env::exactly_once_options`]).
    pub fn exactly_once(mut self) -> Setup {
        self.exactly_once = true;
        self
    }

    /// A second collector, [`Rig::dead`], reading the dead-letter topic.
    pub fn dead_letters(mut self) -> Setup {
        self.dead_letters = true;
        self
    }

    /// Changes the in-process router's options (after [`Env::options`]).
    pub fn options(mut self, tweak: impl FnOnce(&mut RouterOptions) + Send + 'static) -> Setup {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Creates the topics and the DelayProducer (and the warm-up
    /// cancellation); no collector or router yet.
    pub async fn topics(self) -> Prepared {
        let mut extra = self.extra_yaml.clone();
        if self.cancel_topic {
            let topic = unique(&format!("{}-cancel", self.name));
            extra.push_str(&format!(
                "cancel: {{topic: {topic}, partitions: 3, retention: 8d}}\n"
            ));
        }
        let env = Env::with_extra(
            &self.name,
            &self.tier_ms,
            self.partitions,
            self.targets,
            &extra,
        )
        .await;
        let target = env.targets.first().cloned().unwrap_or_default();
        let dp = DelayProducer::new(&kafka(), env.config.clone()).unwrap();
        if self.warm_cancel {
            dp.cancel(b"warm-up", None).await.unwrap();
        }
        Prepared {
            env,
            target,
            dp,
            setup: self,
        }
    }

    /// [`Setup::topics`], then [`Prepared::start`].
    pub async fn start(self) -> Rig {
        self.topics().await.start().await
    }

    /// [`Setup::topics`], then [`Prepared::spawn`].
    pub async fn spawn(self, extra: &[&str]) -> Rig<Child> {
        self.topics().await.spawn(extra)
    }
}

/// The topics exist and the DelayProducer is ready; nothing reads yet.
pub struct Prepared {
    pub env: Env,
    pub target: String,
    pub dp: DelayProducer,
    setup: Setup,
}

impl Prepared {
    /// The collectors, then a router in this process, waited for until it
    /// owns every tier partition, then the plain producer.
    pub async fn start(self) -> Rig {
        let (col, dead) = self.collectors();
        let mut options = if self.setup.exactly_once {
            self.env.exactly_once_options()
        } else {
            self.env.options()
        };
        for tweak in self.setup.tweaks {
            tweak(&mut options);
        }
        let router = Router::start(self.env.config.clone(), options)
            .await
            .unwrap();
        let partitions: i32 = self
            .env
            .config
            .tiers
            .iter()
            .map(|t| t.spec.partitions)
            .sum();
        wait_assigned(&router, partitions as f64).await;
        Rig {
            env: self.env,
            target: self.target,
            col,
            dead,
            router,
            p: producer(),
            dp: self.dp,
        }
    }

    /// The collectors, then the router binary as a child process with the
    /// `extra` flags ([`spawn_router_with`]), then the plain producer. The
    /// caller waits for the router to join its group.
    pub fn spawn(self, extra: &[&str]) -> Rig<Child> {
        assert!(
            self.setup.tweaks.is_empty() && !self.setup.exactly_once,
            "router options apply to a router in this process: pass the binary flags"
        );
        let (col, dead) = self.collectors();
        let router = spawn_router_with(&self.env, extra);
        Rig {
            env: self.env,
            target: self.target,
            col,
            dead,
            router,
            p: producer(),
            dp: self.dp,
        }
    }

    fn collectors(&self) -> (Collector, Option<Collector>) {
        if self.target.is_empty() {
            assert!(
                !self.setup.dead_letters,
                "without a target, the collector reads the dead-letter topic"
            );
            return (Collector::start(self.env.dlq()), None);
        }
        let col = Collector::start(&self.target);
        let dead = self
            .setup
            .dead_letters
            .then(|| Collector::start(self.env.dlq()));
        (col, dead)
    }
}

/// A test's running set-up. `R` is the router: a [`Router`] in this process,
/// or the binary as a [`Child`].
pub struct Rig<R = Router> {
    pub env: Env,
    /// The first target topic (empty with [`Setup::targets`] 0).
    pub target: String,
    /// Reads the target (or, with no target, the dead-letter topic) from the beginning.
    pub col: Collector,
    /// Reads the dead-letter topic, with [`Setup::dead_letters`].
    pub dead: Option<Collector>,
    pub router: R,
    /// A plain producer, as a user's application would use.
    pub p: FutureProducer,
    pub dp: DelayProducer,
}
