//! The files of `deploy/` for running the MinIO-backed stack: the compose file's structure
//! (parsed by PyYAML), and `deploy/local-stack.sh` run for real: moto's S3 server and a
//! node, which tiers a topic into the server's bucket.

mod common;

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn yaml(path: &Path) -> serde_json::Value {
    let output = python_client("yaml_to_json.py")
        .arg(path)
        .output()
        .expect("run yaml_to_json.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from yaml_to_json.py")
}

#[test]
fn the_compose_file_runs_a_node_on_minio_with_its_bucket_and_console() {
    let deploy = repository().join("deploy");
    let compose = yaml(&deploy.join("docker-compose.yml"));
    let services = &compose["services"];
    let minio = &services["minio"];
    let command = minio["command"].to_string();
    assert!(command.contains("--console-address"), "{command}");
    let ports = minio["ports"].to_string();
    assert!(
        ports.contains("9000:9000") && ports.contains("9001:9001"),
        "{ports}"
    );
    assert!(minio["healthcheck"]["test"].is_array());

    let bucket = &services["create-bucket"];
    assert_eq!(
        bucket["depends_on"]["minio"]["condition"],
        "service_healthy"
    );
    let script = bucket["entrypoint"].to_string();
    assert!(
        script.contains("mc mb") && script.contains("local/runnel"),
        "{script}"
    );

    let runnel = &services["runnel"];
    assert_eq!(
        runnel["depends_on"]["create-bucket"]["condition"],
        "service_completed_successfully"
    );
    let dockerfile = runnel["build"]["dockerfile"].as_str().unwrap();
    let context = deploy.join(runnel["build"]["context"].as_str().unwrap());
    assert!(context.join(dockerfile).is_file(), "{dockerfile}");
    let environment = runnel["environment"].as_object().unwrap();
    assert_eq!(environment["RUNNEL_TIER__ENDPOINT"], "http://minio:9000");
    assert_eq!(environment["RUNNEL_TIER__ALLOW_HTTP"], "true");
    assert!(
        environment["RUNNEL_TIER__URL"]
            .as_str()
            .unwrap()
            .starts_with("s3://runnel/")
    );
    // Every RUNNEL_ variable is a real configuration key, so the file cannot drift.
    for name in environment.keys() {
        if let Some(key) = name.strip_prefix("RUNNEL_") {
            let key = key.to_lowercase().replacen("__", ".", 1);
            assert!(
                runnel_config::NODE_CONFIG_KEYS.contains(&key.as_str()),
                "{name} sets no configuration key"
            );
        }
    }
    let ports = runnel["ports"].to_string();
    assert!(ports.contains("9092:9092"), "{ports}");
    assert!(
        compose["volumes"]["minio-data"].is_null() || compose["volumes"]["minio-data"].is_object()
    );
}

#[test]
fn the_local_stack_script_runs_a_node_tiering_to_a_local_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let venv = clients()
        .python
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let runnel_dir = Path::new(env!("CARGO_BIN_EXE_runnel")).parent().unwrap();
    let path = format!(
        "{}:{}",
        runnel_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut stack = Command::new(repository().join("deploy/local-stack.sh"))
        .env("STACK_DIR", dir.path())
        .env("STACK_S3_PORT", s3_port.to_string())
        .env("STACK_VENV", &venv)
        .env(
            "STACK_NODE_ARGS",
            "--set kafka.listen=127.0.0.1:0 --set grpc.listen=127.0.0.1:0 \
             --set http.listen=127.0.0.1:0 --set cluster.listen=127.0.0.1:0",
        )
        .env("PATH", path)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stack.stderr")).unwrap())
        .process_group(0)
        .spawn()
        .expect("run deploy/local-stack.sh");
    // The node's banner names its Kafka and gRPC listeners.
    let mut lines = std::io::BufReader::new(stack.stdout.take().unwrap()).lines();
    let mut kafka = None;
    let mut grpc = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let address = |prefix: &str| line.strip_prefix(prefix).and_then(|a| a.parse().ok());
        kafka = kafka.or_else(|| address("kafka: "));
        grpc = grpc.or_else(|| address("grpc: "));
        if line.starts_with("ready in ") {
            break;
        }
    }
    let stop = |stack: &mut std::process::Child| {
        // SAFETY: signalling the script's own process group, started above.
        unsafe { libc::kill(-(stack.id() as i32), libc::SIGTERM) };
        let _ = stack.wait();
    };
    let (Some(kafka), Some(grpc)) = (kafka, grpc) else {
        stop(&mut stack);
        panic!(
            "no banner from the stack:\n{}",
            std::fs::read_to_string(dir.path().join("stack.stderr")).unwrap_or_default()
        );
    };
    let grpc: std::net::SocketAddr = grpc;
    let created = runnel(dir.path())
        .args([
            "topic",
            "create",
            "stacked",
            "--config",
            "segment.bytes=4096",
        ])
        .env("RUNNEL_SERVER", grpc.to_string())
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Several rounds, so several batches and so sealed segments however the client
    // batches.
    for round in 0..4 {
        finish(produce_keyed(
            kafka,
            "stacked",
            round * 300,
            (round + 1) * 300,
        ));
    }
    // The bucket lists the topic's Parquet files (moto answers unsigned listings).
    let s3 = std::net::SocketAddr::from(([127, 0, 0, 1], s3_port));
    let listed = || {
        http_get(s3, "/runnel?list-type=2&prefix=cluster/topics/stacked/")
            .body
            .contains(".parquet")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !listed() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let uploaded = listed();
    stop(&mut stack);
    assert!(
        uploaded,
        "no Parquet file in the bucket:\n{}",
        std::fs::read_to_string(dir.path().join("stack.stderr")).unwrap_or_default()
    );
}
