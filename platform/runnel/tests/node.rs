//! End-to-end tests of the `runnel` binary: each runs the real executable as a child process
//! on a temporary data directory, with the HTTP listener on a free port read off the banner.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use runnel_log::{BatchBuilder, LogManager, LogMetrics, NewRecord, TopicPartition};

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_to_exit(dir.path(), &["--version"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("runnel {}\n", env!("CARGO_PKG_VERSION"))
    );

    let output = run_to_exit(dir.path(), &["--help"]);
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for expected in ["dev", "start", "RUNNEL_<SECTION>__<KEY>", "RUST_LOG"] {
        assert!(help.contains(expected), "{expected:?} not in:\n{help}");
    }
}

#[test]
fn dev_serves_health_and_metrics_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut node = Node::start(dir.path(), &as_strs(&dev_args(&data_dir)));

    // Banner: the version first, the listeners this build does not serve marked as such.
    assert_eq!(
        node.banner[0],
        format!("runnel {}, node 1", env!("CARGO_PKG_VERSION"))
    );
    assert!(node.banner_line("data: ").contains("0 partitions open"));
    let kafka = node.banner_line("kafka: ").trim_start_matches("kafka: ");
    let kafka: SocketAddr = kafka.parse().expect("kafka: <bound address>");
    assert_ne!(kafka.port(), 0);
    let grpc = node.banner_line("grpc: ").trim_start_matches("grpc: ");
    let grpc: SocketAddr = grpc.parse().expect("grpc: <bound address>");
    assert_ne!(grpc.port(), 0);
    let ready_ms: u64 = node
        .banner_line("ready in ")
        .trim_start_matches("ready in ")
        .trim_end_matches(" ms")
        .parse()
        .expect("ready in N ms");
    assert!(ready_ms < 1000, "startup took {ready_ms} ms");

    let live = node.get("/health/live");
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    let ready = node.get("/health/ready");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    assert_eq!(node.get("/nothing-here").status, 404);

    let metrics = node.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    for expected in [
        "runnel_log_partitions 0\n",
        "# TYPE runnel_log_fsync_duration_seconds histogram",
        &format!(
            "runnel_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ),
        "runnel_uptime_seconds ",
        "runnel_log_appended_bytes_total",
        "runnel_log_segments",
    ] {
        assert!(
            metrics.body.contains(expected),
            "{expected:?} not in:\n{}",
            metrics.body
        );
    }

    node.signal(libc::SIGTERM);
    let status = node.wait_for_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", node.stderr());
    assert!(data_dir.join("partitions").is_dir());
    assert!(node.stderr().contains("stopped"), "{}", node.stderr());
}

#[test]
fn ctrl_c_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &as_strs(&dev_args(&dir.path().join("data"))));
    node.signal(libc::SIGINT);
    let status = node.wait_for_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", node.stderr());
}

#[test]
fn an_existing_partition_is_opened_counted_and_closed_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let partition_dir = data_dir.join("partitions").join("orders-0");
    let marker = partition_dir.join(".clean-shutdown");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let manager = LogManager::open(
            &data_dir,
            runnel_config::TopicConfig::default(),
            std::sync::Arc::new(LogMetrics::default()),
        )
        .await
        .unwrap();
        let log = manager
            .create(
                &TopicPartition::new("orders", 0),
                manager.defaults().clone(),
            )
            .await
            .unwrap();
        let batch = BatchBuilder::default()
            .build(&[NewRecord {
                timestamp: runnel_log::now_ms(),
                key: Some(b"order-1".to_vec()),
                value: Some(b"{\"amount\": 3}".to_vec()),
                headers: Vec::new(),
            }])
            .unwrap();
        log.append_durable(batch).await.unwrap();
        manager.close_all().await.unwrap();
    });
    drop(runtime);
    assert!(marker.is_file(), "closing the log writes the marker");

    let mut node = Node::start(dir.path(), &as_strs(&dev_args(&data_dir)));
    assert!(node.banner_line("data: ").contains("(1 partition open)"));
    let metrics = node.get("/metrics");
    assert!(
        metrics.body.contains("runnel_log_partitions 1\n"),
        "{}",
        metrics.body
    );
    assert!(
        !marker.exists(),
        "opening the partition consumes the marker"
    );

    node.signal(libc::SIGTERM);
    let status = node.wait_for_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", node.stderr());
    assert!(marker.is_file(), "a clean shutdown writes the marker again");
}

/// Asserts the run failed with `code` and exactly one `error: ...` line naming `needle`.
fn assert_fails_with(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in {:?}",
        errors[0]
    );
}

#[test]
fn a_bad_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runnel.toml");
    std::fs::write(&config, "[log]\nsegment_bytes = 3\n").unwrap();
    let config = config.display().to_string();

    let output = run_to_exit(dir.path(), &["start", "--config", &config]);
    assert_fails_with(&output, 2, "log.segment_bytes");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).lines().count(),
        1,
        "one line on stderr"
    );

    let missing = dir.path().join("missing.toml").display().to_string();
    let output = run_to_exit(dir.path(), &["start", "--config", &missing]);
    assert_fails_with(&output, 2, "missing.toml");

    let output = run_to_exit(dir.path(), &["dev", "--set", "kafka.lisen=127.0.0.1:1"]);
    assert_fails_with(&output, 2, "kafka.lisen");

    let output = run_to_exit(dir.path(), &["dev", "--set", "node.id=0"]);
    assert_fails_with(&output, 2, "node.id");
    assert!(
        !dir.path().join("runnel-data").exists(),
        "nothing is created for a bad config"
    );
}

#[test]
fn an_http_port_in_use_exits_1_naming_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let data_dir = dir.path().join("data").display().to_string();
    let listen = format!("http.listen={address}");
    let output = run_to_exit(
        dir.path(),
        &["dev", "--data-dir", &data_dir, "--set", &listen],
    );
    assert_fails_with(&output, 1, "http.listen");
}

#[test]
fn a_data_dir_that_is_a_file_exits_1_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let data_dir = file.display().to_string();
    let output = run_to_exit(
        dir.path(),
        &[
            "dev",
            "--data-dir",
            &data_dir,
            "--set",
            "http.listen=127.0.0.1:0",
        ],
    );
    assert_fails_with(&output, 1, "node.data_dir");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("(os error").count(),
        1,
        "each cause once:\n{stderr}"
    );
}

#[test]
fn topics_created_through_the_admin_api_get_partitions_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let args = dev_args(&data_dir);
    let mut node = Node::start(dir.path(), &as_strs(&args));

    let created = node.request(
        "POST",
        "/v1/topics",
        Some(r#"{"name": "Usuarios", "partitions": 2, "configs": {"cleanup.policy": "compact"}}"#),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created.body.contains("\"Usuarios\""), "{}", created.body);
    let again = node.request(
        "POST",
        "/v1/topics",
        Some(r#"{"name": "Usuarios", "partitions": 2}"#),
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("already exists"), "{}", again.body);
    for (body, needle) in [
        (
            r#"{"name": "bad name", "partitions": 1}"#,
            "invalid topic name",
        ),
        (r#"{"name": "t", "partitions": 0}"#, "partition"),
        (
            r#"{"name": "t", "partitions": 1, "replication_factor": 3}"#,
            "replication factor",
        ),
        (
            r#"{"name": "t", "partitions": 1, "configs": {"retention.ms": "soon"}}"#,
            "retention.ms",
        ),
        (r#"{"partitions": 1}"#, "name"),
    ] {
        let refused = node.request("POST", "/v1/topics", Some(body));
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert!(refused.body.contains(needle), "{body}: {}", refused.body);
    }

    // The broker reconciles: both partitions exist on disk.
    let partition = |p: u32| data_dir.join("partitions").join(format!("Usuarios-{p}"));
    wait_until(
        || partition(0).is_dir() && partition(1).is_dir(),
        "partitions created",
    );
    // Each partition directory records the topic's UUID.
    let created: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let metadata_file = partition(1).join("partition.metadata");
    wait_until(
        || std::fs::read_to_string(&metadata_file).is_ok_and(|text| text.contains(&id)),
        "the topic id recorded",
    );
    let metrics = node.get("/metrics").body;
    for name in [
        "runnel_controller_term",
        "runnel_controller_is_leader 1",
        "runnel_controller_applied_index",
        "runnel_controller_commit_index",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
    let cluster = node.get("/v1/cluster");
    assert_eq!(cluster.status, 200);
    assert!(cluster.body.contains("\"leader\":1"), "{}", cluster.body);

    node.signal(libc::SIGTERM);
    assert_eq!(
        node.wait_for_exit().code(),
        Some(0),
        "stderr:\n{}",
        node.stderr()
    );

    // After a restart the metadata comes back from the controller's disk.
    let mut node = Node::start(dir.path(), &as_strs(&args));
    let topics = node.get("/v1/topics");
    assert_eq!(topics.status, 200);
    assert!(
        topics.body.contains("\"Usuarios\"") && topics.body.contains("compact"),
        "{}",
        topics.body
    );
    assert!(
        node.banner_line("data: ").contains("(2 partitions open)"),
        "{}",
        node.banner_line("data: ")
    );

    let deleted = node.request("DELETE", "/v1/topics/Usuarios", None);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    wait_until(
        || !partition(0).exists() && !partition(1).exists(),
        "partitions deleted",
    );
    let unknown = node.request("DELETE", "/v1/topics/Usuarios", None);
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // A client that names the UUID can retry: the same creation succeeds again.
    let retried =
        r#"{"name": "retried", "partitions": 1, "id": "0f8fad5b-d9cb-469f-a165-70867728950e"}"#;
    for attempt in 0..2 {
        let response = node.request("POST", "/v1/topics", Some(retried));
        assert_eq!(response.status, 201, "attempt {attempt}: {}", response.body);
    }

    node.signal(libc::SIGTERM);
    assert_eq!(
        node.wait_for_exit().code(),
        Some(0),
        "stderr:\n{}",
        node.stderr()
    );
}

#[test]
fn a_three_voter_cluster_agrees_survives_its_leader_and_refuses_without_quorum() {
    let mut cluster = Cluster::new(3, 3);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    cluster.read_banners(&[1, 2, 3]);

    // A topic created through any node appears on all, with its partitions on disk.
    cluster.create_and_see_everywhere(
        2,
        r#"{"name": "a", "partitions": 3, "replication_factor": 3}"#,
        "a-2",
    );

    // Kill the leader: a survivor accepts changes again within 5 s.
    let leader = cluster.leader(1);
    cluster.kill(leader);
    let survivor = if leader == 1 { 2 } else { 1 };
    let killed_at = Instant::now();
    loop {
        let attempt = cluster.node(survivor).request(
            "POST",
            "/v1/topics",
            Some(r#"{"name": "b", "partitions": 1, "replication_factor": 2}"#),
        );
        // 409: an earlier attempt that timed out was committed after all.
        if attempt.status == 201 || attempt.status == 409 {
            break;
        }
        assert_eq!(attempt.status, 503, "{}", attempt.body);
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "no new leader within 5 s: {}",
            attempt.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let recovered_in = killed_at.elapsed();
    eprintln!("changes accepted again {recovered_in:?} after killing the leader");

    // The new leader fences the silent node once its session expires; placement skips it.
    let alive = |cluster: &Cluster, asking: usize, id: usize| {
        cluster
            .node_info(asking, id)
            .is_some_and(|node| node["alive"] == true)
    };
    let fence_deadline = Instant::now() + Duration::from_secs(15);
    while alive(&cluster, survivor, leader) {
        assert!(
            Instant::now() < fence_deadline,
            "node {leader} never fenced"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let too_wide = cluster.node(survivor).request(
        "POST",
        "/v1/topics",
        Some(r#"{"name": "wide", "partitions": 1, "replication_factor": 3}"#),
    );
    assert_eq!(too_wide.status, 400, "{}", too_wide.body);
    assert!(too_wide.body.contains("2 live broker"), "{}", too_wide.body);

    // The killed node restarts, catches up, and is alive again.
    cluster.spawn(leader);
    cluster.read_banners(&[leader]);
    wait_until(
        || topic_names(&cluster.topics(leader)) == ["a", "b"],
        "the restarted node caught up",
    );
    wait_until(
        || alive(&cluster, survivor, leader),
        "the restarted node unfenced",
    );

    // Two of three down, the leader left alone: changes fail with a clear error after the
    // proposal timeout, and nothing committed is lost.
    let remaining = cluster.leader(leader);
    let others: Vec<usize> = (1..=3).filter(|id| *id != remaining).collect();
    for id in &others {
        cluster.kill(*id);
    }
    let refused = cluster.node(remaining).request(
        "POST",
        "/v1/topics",
        Some(r#"{"name": "c", "partitions": 1}"#),
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("quorum") || refused.body.contains("leader"),
        "{}",
        refused.body
    );
    let names = topic_names(&cluster.topics(remaining));
    assert!(
        names.starts_with(&["a".to_string(), "b".to_string()]),
        "{names:?}"
    );

    // All three restarted: the metadata is identical on each (with or without `c`, which
    // the lone leader logged but could not commit, and may commit now).
    for id in &others {
        cluster.spawn(*id);
    }
    cluster.read_banners(&others);
    wait_until(
        || {
            let first = cluster.topics(1);
            first == cluster.topics(2) && first == cluster.topics(3)
        },
        "the same metadata on all three",
    );
    cluster.stop_all();
}

#[test]
fn a_broker_only_node_joins_as_a_learner_and_hosts_partitions() {
    let mut cluster = Cluster::new(2, 1);
    cluster.spawn(1);
    cluster.spawn(2);
    cluster.read_banners(&[1, 2]);
    let learner = cluster.node_info(1, 2).expect("the learner registered");
    assert_eq!(learner["roles"]["controller"], false, "{learner}");

    // Created through the learner (forwarded to the leader), placed on both brokers.
    cluster.create_and_see_everywhere(
        2,
        r#"{"name": "events", "partitions": 2, "replication_factor": 2}"#,
        "events-1",
    );

    // The learner restarts and comes back with the metadata.
    cluster.kill(2);
    cluster.spawn(2);
    cluster.read_banners(&[2]);
    assert_eq!(topic_names(&cluster.topics(2)), ["events"]);
    cluster.stop_all();
}
