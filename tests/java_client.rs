//! The Java client through the router, for real: a plain Java `KafkaProducer`
//! writes delayed records with the README's Java snippets (a fixed tier, an
//! absolute `delay-deliver-at`, a `delay-id` cancelled on the cancel topic and
//! one never cancelled) and a plain Java `KafkaConsumer` reads the targets;
//! the program (tests/java, built with Maven) checks that every record not
//! cancelled arrives once, on time, unchanged, in the partition the Java
//! producer's own partitioner picks for its key, and that the cancelled one
//! never arrives.
//!
//! The router runs in process on a topic set of the test's own (tiers of 1, 2
//! and 4 s, a cancel topic, a 6-partition and a 3-partition target).
//! `KDR_JAVA_KAFKA_VERSION=3.9.1` builds against another kafka-clients.
//! Maven and a JDK 17 are required: `scripts/test.sh` installs them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const TIERS_MS: [u64; 3] = [1_000, 2_000, 4_000];
const TIER_PARTITIONS: i32 = 2;
const WIDE_PARTITIONS: i32 = 6;
/// How late a record may arrive, in ms: the router is usually within tens of
/// ms; this leaves room for a loaded 2-core machine (the program prints each).
const MAX_LATE_MS: u64 = 1_000;
/// How long the whole Java run may take before it is killed.
const JAVA_TIMEOUT: Duration = Duration::from_secs(180);

fn java_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/java")
}

/// Fails (never skips) when a tool is missing.
fn require(tool: &str, version_flag: &str) {
    match Command::new(tool).arg(version_flag).output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: the Java client test needs Maven and a JDK 17; \
             run scripts/test.sh, which installs them"
        ),
        Err(e) => panic!("running `{tool} {version_flag}`: {e}"),
    }
}

/// Compiles tests/java and returns the classpath to run it with.
fn build_java() -> String {
    let dir = java_dir();
    let cp_file = dir.join("target/classpath.txt");
    let mut mvn = Command::new("mvn");
    mvn.args(["-q", "-B", "-f"])
        .arg(dir.join("pom.xml"))
        .args(["compile", "dependency:build-classpath"])
        .arg(format!("-Dmdep.outputFile={}", cp_file.display()));
    if let Ok(v) = std::env::var("KDR_JAVA_KAFKA_VERSION") {
        mvn.arg(format!("-Dkafka.version={v}"));
    }
    // Quiet Maven prints nothing but colour resets when all goes well.
    let out = mvn.output().expect("running mvn");
    assert!(
        out.status.success(),
        "the Maven build failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deps = std::fs::read_to_string(&cp_file).expect("the classpath Maven wrote");
    format!("{}:{}", dir.join("target/classes").display(), deps.trim())
}

/// Runs the Java program, printing its output as it comes; returns its exit
/// success and its standard output lines. Killed after [`JAVA_TIMEOUT`].
fn run_java(classpath: &str, args: &[String]) -> (bool, Vec<String>) {
    let mut child = Command::new("java")
        .arg("-cp")
        .arg(classpath)
        .arg("kdr.interop.DelayInterop")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting java");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + JAVA_TIMEOUT;
    let mut lines = Vec::new();
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                println!("java| {line}");
                lines.push(line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break child.wait().unwrap(),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Java program ran over {JAVA_TIMEOUT:?} and was killed");
        }
    };
    let err = err_reader.join().unwrap();
    for line in err.lines() {
        eprintln!("java! {line}");
    }
    (status.success(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_producer_and_consumer_through_the_router() {
    require("mvn", "-v");
    require("java", "-version");
    let started = Instant::now();
    let classpath = tokio::task::spawn_blocking(build_java).await.unwrap();
    let built = started.elapsed();
    println!("built tests/java in {:.1} s", built.as_secs_f64());

    let cancel = unique("java-cancel");
    let env = Env::with_extra(
        "java",
        &TIERS_MS,
        TIER_PARTITIONS,
        1,
        &format!("cancel: {{topic: {cancel}, partitions: 3, retention: 8d}}\n"),
    )
    .await;
    let wide = format!("{}-wide", env.prefix);
    let (servers, topic) = (bootstrap(), wide.clone());
    tokio::task::spawn_blocking(move || create_topic(&servers, &topic, WIDE_PARTITIONS))
        .await
        .unwrap();
    let router = env.start_router().await;
    wait_assigned(&router, (TIERS_MS.len() as i32 * TIER_PARTITIONS) as f64).await;

    let mut args = vec!["--bootstrap-servers".to_string(), bootstrap()];
    for (i, ms) in TIERS_MS.iter().enumerate() {
        args.push("--tier".into());
        args.push(format!("{}={ms}", env.tier(i)));
    }
    args.extend([
        "--cancel-topic".into(),
        cancel.clone(),
        "--target".into(),
        wide.clone(),
        "--target".into(),
        env.targets[0].clone(),
        "--max-late-ms".into(),
        MAX_LATE_MS.to_string(),
    ]);
    println!("java DelayInterop {}", args.join(" "));
    let ran = Instant::now();
    let (ok, lines) = tokio::task::spawn_blocking(move || run_java(&classpath, &args))
        .await
        .unwrap();
    println!(
        "Java build {:.1} s, run {:.1} s, in all {:.1} s",
        built.as_secs_f64(),
        ran.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let cancelled = metric(&router, "kafka_delay_router_records_cancelled_total", &[]);
    let dead_letters = high_watermarks(env.dlq(), 1)[&0];
    router.shutdown().await.unwrap();

    assert!(ok, "the Java program failed (its FAIL lines above say why)");
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("java interop: "))
        .expect("the Java program printed no summary line");
    let (delivered, of) = summary
        .split(" delivered")
        .next()
        .and_then(|s| s.split_once(" of "))
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .expect("summary starts with `N of M delivered`");
    assert_eq!(delivered, of, "{summary}");
    assert!(delivered >= 20, "too few records checked: {summary}");
    for want in [
        " 0 lost,",
        " 0 duplicated,",
        " 0 early,",
        " 0 late ",
        " 0 misplaced,",
        " 0 altered,",
        "cancelled 1 of 1 never arrived",
    ] {
        assert!(summary.contains(want), "summary lacks {want:?}: {summary}");
    }
    assert_eq!(cancelled, 1.0, "the router's records_cancelled_total");
    assert_eq!(dead_letters, 0, "records dead-lettered");
}
