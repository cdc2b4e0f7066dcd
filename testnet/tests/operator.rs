//! End-to-end tests of the operator commands against real parts: `shoal containerd configure`
//! and `shoal containerd check` with a real containerd, `shoal status` on a node that has served
//! a pull, and the one-line explanation a request for an unconfigured registry gets.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use shoal_testnet::cli;
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::image::{push_image, ImageSpec};
use shoal_testnet::node::{LogsOnFailure, Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::REGISTRY_HOST;

/// Nothing listens here: a pull that succeeds did not go to these hosts.
const UNREACHABLE: &str = "http://127.0.0.1:1";
const OTHER_HOST: &str = "http://127.0.0.1:2";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_merges_hosts_files_idempotently_and_ctr_pulls_through_the_node() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/configure", "v1", 31).layer(300 << 10, 50),
    )
    .await?;
    let node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    let hosts = tempfile::tempdir()?;
    let hosts_dir = hosts.path().to_string_lossy().into_owned();
    let admin = node.admin_url();
    let no_containerd_config = hosts.path().join("absent-config.toml");
    let no_containerd_config = no_containerd_config.to_string_lossy();

    // An existing hosts file whose server and other host cannot serve the pull: if the pull
    // succeeds, it went through the node, and the merge kept both.
    let file = hosts.path().join(REGISTRY_HOST).join("hosts.toml");
    std::fs::create_dir_all(file.parent().unwrap())?;
    let existing = format!(
        "# written by hand\nserver = \"{UNREACHABLE}\"\n\n[host.\"{OTHER_HOST}\"]\n  capabilities = [\"pull\"]\n"
    );
    std::fs::write(&file, &existing)?;

    let configure = [
        "containerd",
        "configure",
        "--admin",
        &admin,
        "--hosts-dir",
        &hosts_dir,
        "--containerd-config",
        &no_containerd_config,
    ];
    let dry = cli::shoal(&[&configure[..], &["--dry-run"]].concat()).await?;
    ensure!(dry.status.success(), "dry run failed: {}", describe(&dry));
    ensure!(
        std::fs::read_to_string(&file)? == existing,
        "--dry-run changed the file"
    );
    let diff = stdout(&dry);
    ensure!(
        diff.contains(&format!("+[host.\"{}\"]", node.registry_url())),
        "the dry run shows no added mirror:\n{diff}"
    );

    let first = cli::shoal(&configure).await?;
    ensure!(
        first.status.success(),
        "configure failed: {}",
        describe(&first)
    );
    // containerd's CRI plugin is not configured here: configure says what to change.
    let stderr = String::from_utf8_lossy(&first.stderr);
    ensure!(
        stderr.contains("config_path = ") && stderr.contains("restart containerd"),
        "no advice about config_path: {stderr}"
    );
    let merged = std::fs::read_to_string(&file)?;
    let parsed: toml::Table = toml::from_str(&merged)?;
    ensure!(
        parsed["server"].as_str() == Some(UNREACHABLE),
        "server not kept:\n{merged}"
    );
    ensure!(
        parsed["host"].get(OTHER_HOST).is_some(),
        "other host lost:\n{merged}"
    );
    ensure!(
        merged.starts_with("# written by hand"),
        "comment lost:\n{merged}"
    );
    ensure!(
        merged.find(&node.registry_url()) < merged.find(OTHER_HOST),
        "the node is not the first host:\n{merged}"
    );

    let second = cli::shoal(&configure).await?;
    ensure!(
        second.status.success(),
        "second configure failed: {}",
        describe(&second)
    );
    ensure!(
        std::fs::read_to_string(&file)? == merged,
        "a second run changed the file"
    );
    ensure!(
        stdout(&second).contains("0 of 1 hosts files changed"),
        "second run: {}",
        stdout(&second)
    );

    let containerd = Containerd::start().await?;
    containerd.pull_ok(&image.reference, hosts.path()).await?;
    containerd.ensure_holds(&image).await?;
    node.wait_for_stored_blobs(image.blobs().count()).await?;
    ensure!(node.metric("shoal_http_requests_total").await? > 0.0);

    // `check` fetches the metadata again through containerd's resolver and sees the node answer.
    let address = containerd.socket().to_string_lossy().into_owned();
    let containerd_config = containerd.config_path().to_string_lossy().into_owned();
    let check = cli::shoal(&[
        "containerd",
        "check",
        &image.reference,
        "--address",
        &address,
        "--hosts-dir",
        &hosts_dir,
        "--admin",
        &admin,
        "--containerd-config",
        &containerd_config,
    ])
    .await?;
    ensure!(check.status.success(), "check failed: {}", describe(&check));
    ensure!(stdout(&check).contains("mirror used"), "{}", stdout(&check));

    // With a hosts directory that does not name the node, check says the mirror was not used.
    let empty = tempfile::tempdir()?;
    let empty_dir = empty.path().to_string_lossy().into_owned();
    let unused = cli::shoal(&[
        "containerd",
        "check",
        &image.reference,
        "--address",
        &address,
        "--hosts-dir",
        &empty_dir,
        "--admin",
        &admin,
        "--containerd-config",
        &containerd_config,
    ])
    .await?;
    ensure!(
        unused.status.code() == Some(1),
        "check without the mirror: {}",
        describe(&unused)
    );
    logs.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_a_pull_did_and_an_unknown_registry_is_explained() -> Result<()> {
    let origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/status", "v1", 32)
            .layer(200 << 10, 50)
            .layer(2 << 20, 50),
    )
    .await?;
    let node = Node::start(NodeConfig::for_origin(&origin)).await?;
    let mut logs = LogsOnFailure::new([&node]);
    node.pull_and_store(&image).await?;

    let admin = node.admin_url();
    let output = cli::shoal(&["status", "--json", "--admin", &admin]).await?;
    ensure!(output.status.success(), "{}", describe(&output));
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("status JSON")?;
    ensure!(
        status["disk"]["blobs"] == image.blobs().count() as u64,
        "{status}"
    );
    ensure!(
        status["since_start"]["misses"].as_u64() > Some(0),
        "{status}"
    );
    ensure!(
        status["last_hour"]["bytes_received_origin"].as_u64() > Some(0),
        "{status}"
    );
    let largest = &status["largest_blobs"][0];
    ensure!(
        largest["digest"] == image.largest_layer().digest.as_str(),
        "{status}"
    );
    ensure!(largest["bytes"] == image.largest_layer().size, "{status}");
    let text = cli::shoal(&["status", "--admin", &admin]).await?;
    let text = stdout(&text);
    ensure!(text.contains(&image.largest_layer().digest), "{text}");
    ensure!(text.contains("from the origin"), "{text}");

    // containerd names the registry in `ns`; one the node does not mirror gets a 404 that says
    // which registries it does mirror and the key to add.
    let url = format!(
        "{}/v2/library/alpine/manifests/3.19?ns=ghcr.io",
        node.registry_url()
    );
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    ensure!(response.status() == 404);
    let body = response.text().await?;
    ensure!(body.contains(REGISTRY_HOST), "{body}");
    ensure!(body.contains("[upstreams.\\\"ghcr.io\\\"]"), "{body}");
    ensure!(origin.request_count() > 0);
    logs.passed();
    Ok(())
}
