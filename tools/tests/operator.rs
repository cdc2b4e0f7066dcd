//! The operator's surface against a real node started in this process: every metric the README
//! lists is exported and the other way round, every query of the Grafana dashboard names an
//! exported metric, `/status` and `shoal status` answer, and the deployment files in `deploy/`
//! are well-formed (the systemd unit passes `systemd-analyze verify`; the Kubernetes manifests
//! have what the README promises).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_node::admin::status::NodeStatus;
use shoal_node::config::{Config, FileConfig, Overrides};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ is inside the workspace")
        .to_path_buf()
}

/// A node running in this process on loopback ports, with an upstream nothing listens on.
struct RunningNode {
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl RunningNode {
    async fn start() -> RunningNode {
        let data = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            data_dir: Some(data.path().to_path_buf()),
            upstreams: vec!["origin.shoal.test=http://127.0.0.1:9".into()],
            ..Overrides::default()
        };
        let config = Config::from_parts(FileConfig::default(), &overrides).unwrap();
        let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            shoal_node::run(config, registry, admin_listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        RunningNode {
            admin,
            stop: Some(stop),
            task: Some(task),
            _data: data,
        }
    }

    fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.admin_url());
        for _ in 0..100 {
            if let Ok(response) = reqwest::get(&url).await {
                return response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the node never answered {url}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// Exported names as a query writes them: counters with `_total`, histograms by base name,
/// from the `# TYPE` lines of an OpenMetrics exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            }
        })
        .collect()
}

/// The metric names in the README's "Metrics reference" table (first column).
fn readme_metric_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme
        .find("### Metrics reference")
        .expect("README has a Metrics reference section");
    let section = &readme[start..];
    let end = section[4..].find("\n#").map_or(section.len(), |i| i + 4);
    section[..end]
        .lines()
        .filter_map(|line| line.strip_prefix("| `shoal_"))
        .map(|rest| format!("shoal_{}", rest.split('`').next().unwrap()))
        .collect()
}

/// The `shoal_*` names a PromQL expression uses, histogram series mapped to their base name.
fn query_metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("shoal_") {
        let start = i + found;
        let preceded_by_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded_by_word {
            let name = &expr[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(base.to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn the_readme_the_dashboard_and_the_node_agree_on_metric_names() {
    let node = RunningNode::start().await;
    let response = node.get("/metrics").await;
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"));
    let exported = exported_names(&text);
    let documented = readme_metric_names();
    assert!(exported.len() > 30, "{exported:?}");
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let missing: Vec<_> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && missing.is_empty(),
        "exported but not in README's Metrics reference: {undocumented:?}; in README but not exported: {missing:?}"
    );
    // Histograms are histograms, with buckets, so they aggregate across nodes.
    assert!(text.contains("# TYPE shoal_http_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE shoal_shard_fetch_duration_seconds histogram"));

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/shoal-dashboard.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut queried = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = query_metric_names(expr);
            assert!(!names.is_empty(), "{expr} names no Shoal metric");
            for name in &names {
                assert!(
                    exported.contains(name),
                    "the dashboard queries {name}, which the node does not export ({expr})"
                );
            }
            queried.extend(names);
        }
    }
    for wanted in [
        "shoal_cache_hits_total",
        "shoal_bytes_served_total",
        "shoal_bytes_received_total",
        "shoal_p2p_members",
        "shoal_store_bytes",
        "shoal_http_request_duration_seconds",
    ] {
        assert!(
            queried.contains(wanted),
            "the dashboard has no panel over {wanted}"
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn status_answers_json_and_shoal_status_reads_it() {
    let node = RunningNode::start().await;
    let status: NodeStatus =
        serde_json::from_str(&node.get("/status").await.text().await.unwrap()).unwrap();
    assert_eq!(status.region, "default");
    assert!(!status.peer_network);
    assert_eq!(status.upstreams.len(), 1);
    assert_eq!(status.upstreams[0].name, "origin.shoal.test");
    assert_eq!(status.disk.used_bytes, 0);
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);

    let admin = node.admin_url();
    let shoal = env!("CARGO_BIN_EXE_shoal");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(shoal)
            .args(["status", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("region default"), "{stdout}");
    assert!(stdout.contains("origin.shoal.test"), "{stdout}");
    assert!(stdout.contains("peer network off"), "{stdout}");
    assert!(stdout.contains("no warnings"), "{stdout}");

    let admin = node.admin_url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(shoal)
            .args(["status", "--json", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let parsed: NodeStatus = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed.registry_listen, status.registry_listen);
    node.stop().await;
}

/// `systemd-analyze verify` is part of the test environment (test.sh installs systemd): its
/// absence fails this test rather than skipping the check.
#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/shoald.service")).unwrap();
    for line in [
        "StateDirectory=shoal",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LoadCredential=network.key:",
        "--network-key ${CREDENTIALS_DIRECTORY}/network.key",
        "--data-dir ${STATE_DIRECTORY}",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }
    // verify checks that ExecStart names an executable: point it at one that exists here.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoald.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/shoald", env!("CARGO_BIN_EXE_shoal")),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed for this test (test.sh installs the systemd package)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // verify reports unknown keys and bad values on stderr but still exits 0.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify complained:\n{stderr}"
    );
}

#[test]
fn the_kubernetes_manifests_run_shoald_on_every_node_as_the_readme_says() {
    let text = std::fs::read_to_string(repo_root().join("deploy/kubernetes/shoal.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in shoal.yaml"))
    };
    let daemonset = kind("DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&daemonset["spec"]["selector"]["matchLabels"], labels);
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(volume("data")["hostPath"]["path"], "/var/lib/shoal");
    assert!(volume("network-key")["secret"]["secretName"].is_string());
    assert_eq!(
        volume("containerd-config")["hostPath"]["path"],
        "/etc/containerd"
    );

    let shoald = &pod["containers"].as_array().unwrap()[0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(shoald[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(shoald[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(shoald["securityContext"]["runAsNonRoot"], true);
    let mounts = |container: &serde_json::Value| -> Vec<String> {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for needed in ["config", "network-key", "data"] {
        assert!(
            mounts(shoald).contains(&needed.to_owned()),
            "shoald lacks {needed}"
        );
    }

    let init = pod["initContainers"].as_array().unwrap();
    let configure = init
        .iter()
        .find(|c| {
            c["command"]
                .as_array()
                .is_some_and(|cmd| cmd.len() > 2 && cmd[1] == "containerd" && cmd[2] == "configure")
        })
        .expect("an init container runs `shoal containerd configure`");
    let command: Vec<&str> = configure["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command.contains(&"--hosts-dir=/etc/containerd/certs.d")
            && command.contains(&"--host-root=/host"),
        "{command:?}"
    );
    assert!(mounts(configure).contains(&"containerd-config".to_owned()));

    // The node config in the ConfigMap is one shoald accepts (with its files in place), and
    // the admin listener the probes reach beyond loopback has a token.
    let config_text = kind("ConfigMap")["data"]["shoald.toml"].as_str().unwrap();
    let file: toml::Table = toml::from_str(config_text).unwrap();
    assert!(file.contains_key("admin_token_file"));
    assert_eq!(file["admin_listen"].as_str(), Some("0.0.0.0:5051"));
    // Peers reach the node over both transports on one port number, as it listens by default.
    let listen: Vec<&str> = file["p2p_listen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        listen,
        ["/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/0.0.0.0/tcp/4001"]
    );
    let ports: Vec<(i64, &str)> = shoald["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            (p["containerPort"].as_i64().unwrap(), protocol)
        })
        .collect();
    assert!(
        ports.contains(&(4001, "UDP")) && ports.contains(&(4001, "TCP")),
        "{ports:?}"
    );

    let service = kind("Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let port = &service["spec"]["ports"].as_array().unwrap()[0];
    assert_eq!(port["port"], 5051);
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );
}

#[test]
fn the_dockerfile_builds_both_binaries_in_one_stage_and_runs_them_unprivileged_in_another() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].contains("cargo build --release --locked"));
    for binary in ["shoald", "shoal"] {
        assert!(stages[0].contains(&format!("--bin {binary}")));
        assert!(stages[1].contains(&format!("/src/target/release/{binary}")));
    }
    assert!(stages[1].starts_with("debian:bookworm-slim"));
    let user = stages[1]
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert_ne!(user.split(':').next(), Some("0"));
    assert_ne!(user, "root");
}
