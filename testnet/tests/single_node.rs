//! End-to-end tests of one `shoald` between a real containerd and a real
//! origin registry: cold and warm pulls, the origin going down, concurrent
//! cold pulls, a lying origin, `kill -9` mid-pull, a stop mid-fetch, a
//! corrupted shard on disk and hostile requests.
//!
//! Every test starts its own origin, node and containerd instances on their
//! own ports and directories, so the tests run in parallel. Each ends by
//! checking that the node still answers `/healthz`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use shoal_testnet::containerd::{describe, Containerd};
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, sha256_digest, ImageInfo, ImageSpec, ManifestFormat};
use shoal_testnet::node::{Node, NodeConfig};
use shoal_testnet::origin::Origin;
use shoal_testnet::{cli, raw_http, REGISTRY_HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One origin with one pushed image, one node in front of it, and the hosts
/// directory that sends containerd to the node.
struct Net {
    origin: Origin,
    node: Node,
    hosts: HostsDir,
    image: ImageInfo,
    /// Set by [`Net::finish`]; until then, dropping the net prints the logs.
    passed: bool,
}

async fn net_with(spec: ImageSpec) -> Result<Net> {
    net_with_config(spec, NodeConfig::for_origin).await
}

async fn net_with_config(spec: ImageSpec, config: impl Fn(&Origin) -> NodeConfig) -> Result<Net> {
    let origin = Origin::start().await?;
    let image = push_image(&origin, spec).await?;
    let node = Node::start(config(&origin)).await?;
    let hosts = HostsDir::for_test_registry(node.registry_addr())?;
    Ok(Net {
        origin,
        node,
        hosts,
        image,
        passed: false,
    })
}

impl Net {
    /// A fresh containerd (cold content store) pulls the image through the
    /// node; its content store must then hold every digest of the image.
    async fn pull_fresh(&self) -> Result<Containerd> {
        let containerd = Containerd::start().await?;
        containerd
            .pull_ok(&self.image.reference, self.hosts.path())
            .await?;
        containerd.ensure_holds(&self.image).await?;
        Ok(containerd)
    }

    /// Origin GETs per blob (config and layers), once the origin's log has
    /// settled.
    async fn blob_gets(&self) -> BTreeMap<String, usize> {
        self.origin.settle().await;
        self.image
            .blobs()
            .map(|b| (b.digest.clone(), self.origin.blob_gets(&b.digest)))
            .collect()
    }

    fn ns_query(&self) -> String {
        format!("ns={REGISTRY_HOST}")
    }

    /// Every test ends here: the node must still answer `/healthz`.
    async fn finish(mut self) -> Result<()> {
        self.node.healthz().await?;
        self.passed = true;
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.passed {
            return;
        }
        // A test that returns an error does not panic, so the parts' own
        // panic-time log dumps do not fire: print the node's log here.
        eprintln!(
            "--- test failed; shoald log {} (last lines):\n{}\n--- origin log: {}",
            self.node.log_path().display(),
            self.node.log_tail(60),
            self.origin.log_path().display(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_then_warm_pull_through_shoald() -> Result<()> {
    let net = net_with(ImageSpec::multi_layer("test/app", "v1", 11)).await?;
    ensure!(net.image.index.is_some(), "this test covers the index path");

    drop(net.pull_fresh().await.context("cold pull")?);
    let cold = net.blob_gets().await;
    for (digest, gets) in &cold {
        ensure!(
            *gets >= 1,
            "cold pull never fetched {digest} from the origin"
        );
    }

    drop(net.pull_fresh().await.context("warm pull")?);
    let warm = net.blob_gets().await;
    ensure!(
        warm == cold,
        "warm pull fetched blobs from the origin again: before {cold:?}, after {warm:?}"
    );
    let from_cache = net
        .node
        .metric_with("shoal_bytes_served_total", &[("source", "cache")])
        .await?;
    ensure!(
        from_cache > 0.0,
        "no bytes served from cache after a warm pull"
    );
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pull_succeeds_with_origin_down() -> Result<()> {
    // Docker schema 2, tagged directly: the other manifest path.
    let spec = ImageSpec::new("test/docker", "v2", 12)
        .layer(12 << 10, 0)
        .layer(3 << 20, 60)
        .format(ManifestFormat::Docker);
    let mut net = net_with(spec).await?;
    drop(net.pull_fresh().await.context("cold pull")?);

    net.origin.stop().await?;
    drop(
        net.pull_fresh()
            .await
            .context("warm pull with the origin down")?,
    );
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tag_is_served_stale_while_the_origin_is_down() -> Result<()> {
    // A tag TTL of zero: every tag request asks the origin first.
    let mut net = net_with_config(
        ImageSpec::new("test/stale", "v1", 14).layer(64 << 10, 30),
        |origin| {
            NodeConfig::for_origin(origin)
                .arg("--tag-ttl-secs")
                .arg("0")
        },
    )
    .await?;
    drop(net.pull_fresh().await.context("cold pull")?);
    net.origin.stop().await?;
    drop(
        net.pull_fresh()
            .await
            .context("pull with the origin down and the tag expired")?,
    );
    let stale = net.node.metric("shoal_stale_tags_served_total").await?;
    ensure!(stale >= 1.0, "shoal_stale_tags_served_total is {stale}");
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_pulls_fetch_each_blob_once() -> Result<()> {
    let net = net_with(ImageSpec::multi_layer("test/herd", "v1", 13)).await?;
    let instances = futures::future::try_join_all((0..5).map(|_| Containerd::start())).await?;
    let pulls = instances
        .iter()
        .map(|c| c.pull(&net.image.reference, net.hosts.path()));
    let outputs = futures::future::join_all(pulls).await;
    for (i, output) in outputs.into_iter().enumerate() {
        let output = output?;
        ensure!(
            output.status.success(),
            "pull {i} failed: {}",
            describe(&output)
        );
    }
    for containerd in &instances {
        containerd.ensure_holds(&net.image).await?;
    }
    let gets = net.blob_gets().await;
    for (digest, n) in &gets {
        ensure!(
            *n == 1,
            "five concurrent cold pulls caused {n} origin GETs of {digest} (all: {gets:?})"
        );
    }
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_serving_wrong_bytes_fails_cleanly_then_recovers() -> Result<()> {
    let spec = ImageSpec::new("test/liar", "v1", 14)
        .layer(8 << 10, 0)
        .layer(1 << 20, 50)
        .layer(3 << 20, 50);
    let mut net = net_with(spec).await?;
    let victim = net.image.layers[1].digest.clone();
    let corrupted = net.origin.corrupt_blob(&victim)?;

    let containerd = Containerd::start().await?;
    let output = containerd
        .pull_with_timeout(
            &net.image.reference,
            net.hosts.path(),
            Duration::from_secs(90),
        )
        .await
        .context("a pull of a corrupted blob must end, not hang")?;
    ensure!(
        !output.status.success(),
        "pull succeeded although the origin served wrong bytes for {victim}"
    );
    drop(containerd);
    let mismatches = net.node.metric("shoal_digest_mismatches_total").await?;
    ensure!(
        mismatches >= 1.0,
        "shoal_digest_mismatches_total is {mismatches}"
    );

    // The store is inspected offline: the node holds its index open.
    net.node.stop().await?;
    let inspect = cli::inspect(&net.node.data_dir(), &victim).await?;
    ensure!(
        inspect.status.code() == Some(1),
        "shoal inspect should report {victim} as not stored (exit 1): {}",
        describe(&inspect)
    );
    net.node.restart().await?;

    corrupted.restore()?;
    drop(
        net.pull_fresh()
            .await
            .context("pull after the origin blob was restored")?,
    );
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_mid_fetch_commits_the_blob_before_it_exits() -> Result<()> {
    let spec = ImageSpec::new("test/drain", "v1", 17).layer(200 << 20, 90);
    let mut net = net_with(spec).await?;
    let layer = net.image.largest_layer().clone();
    let target = format!(
        "/v2/{}/blobs/{}?{}",
        net.image.repo,
        layer.digest,
        net.ns_query()
    );
    // The first ten bytes are answered as soon as they arrive; the fetch behind them goes on,
    // and the node is told to stop while it does.
    let part = raw_http::request(
        net.node.registry_addr(),
        "GET",
        &target,
        &["Range: bytes=0-9"],
    )
    .await?;
    ensure!(part.status == 206, "the Range answered {}", part.status);
    let stopped = net.node.stop().await?;
    ensure!(stopped.success(), "shoald exited with {stopped}");
    let log = net.node.log_tail(400);
    ensure!(
        log.contains("store closed cleanly") && !log.contains("fetches still running at shutdown"),
        "the node did not wait for its fetch before closing the store"
    );

    net.node.restart().await?;
    ensure!(
        net.node.metric("shoal_store_blobs").await? >= 1.0,
        "the blob fetched when the node was told to stop was not committed"
    );
    ensure!(
        !net.node.log_tail(400).contains("index rebuilt"),
        "the stop was not clean"
    );
    net.node.stop().await?;
    let fsck = cli::fsck(&net.node.data_dir()).await?;
    ensure!(fsck.status.success(), "shoal fsck: {}", describe(&fsck));
    net.node.restart().await?;
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_large_cold_pull_then_restart_recovers() -> Result<()> {
    let spec = ImageSpec::new("test/large", "v1", 15)
        .layer(64 << 10, 20)
        .layer(200 << 20, 90);
    let mut net = net_with(spec).await?;
    let large = net.image.largest_layer().clone();
    let small_bytes: u64 = net
        .image
        .blobs()
        .filter(|b| b.digest != large.digest)
        .map(|b| b.size)
        .sum();

    let first = Arc::new(Containerd::start().await?);
    let pull = tokio::spawn({
        let containerd = first.clone();
        let reference = net.image.reference.clone();
        let hosts = net.hosts.path().to_path_buf();
        async move { containerd.pull(&reference, &hosts).await }
    });
    // Kill once part of the large layer is in (or, failing that, once
    // anything is in and the pull has ended).
    let threshold = (small_bytes + (4 << 20)) as f64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ingested = 0.0;
    loop {
        ingested = net
            .node
            .metric("shoal_ingested_bytes_total")
            .await
            .unwrap_or(ingested);
        if ingested > threshold || (pull.is_finished() && ingested > 0.0) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "shoal_ingested_bytes_total still {ingested} after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mid_pull = !pull.is_finished();
    net.node.kill9();
    let interrupted = tokio::time::timeout(Duration::from_secs(120), pull)
        .await
        .context("the interrupted pull did not end")??;
    eprintln!(
        "killed shoald at {ingested} ingested bytes (mid-pull: {mid_pull}); interrupted pull succeeded: {}",
        interrupted.map(|o| o.status.success()).unwrap_or(false)
    );
    drop(first);

    net.node.restart().await?;
    drop(net.pull_fresh().await.context("pull after restart")?);
    net.node.healthz().await?;

    net.node.stop().await?;
    let fsck = cli::fsck(&net.node.data_dir()).await?;
    ensure!(
        fsck.status.success(),
        "shoal fsck found problems after kill -9 and recovery: {}",
        describe(&fsck)
    );
    net.passed = true;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_shard_is_detected_and_healed_from_upstream() -> Result<()> {
    let net = net_with(ImageSpec::multi_layer("test/heal", "v1", 16)).await?;
    drop(net.pull_fresh().await.context("cold pull")?);
    net.node
        .wait_for_stored_blobs(net.image.blobs().count())
        .await?;

    let shards = net.node.shard_files()?;
    let (path, len) = shards
        .first()
        .context("no shard files under <data>/shards after a pull")?
        .clone();
    let mut bytes = std::fs::read(&path)?;
    let middle = (len / 2) as usize;
    let end = (middle + 4096).min(bytes.len());
    for b in &mut bytes[middle..end] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, &bytes)?;
    ensure!(std::fs::metadata(&path)?.len() == len);

    drop(
        net.pull_fresh()
            .await
            .with_context(|| format!("pull after corrupting {}", path.display()))?,
    );
    let metrics = net.node.metrics().await?;
    let failures = metrics.sum("shoal_shard_verify_failures_total");
    let healed = metrics.sum("shoal_shards_healed_total");
    ensure!(
        failures >= 1.0,
        "shoal_shard_verify_failures_total is {failures}"
    );
    ensure!(healed >= 1.0, "shoal_shards_healed_total is {healed}");
    net.finish().await
}

/// A one-layer image for the request-level tests.
async fn small_net() -> Result<Net> {
    net_with(ImageSpec::new("test/app", "v1", 17).layer(64 << 10, 50)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_names_is_refused() -> Result<()> {
    let net = small_net().await?;
    let ns = net.ns_query();
    let zeros = "0".repeat(64);
    let targets = [
        "/v2/../../etc/passwd/manifests/latest".to_string(),
        format!("/v2/../../etc/passwd/manifests/latest?{ns}"),
        format!("/v2/a/..%2F..%2Fx/blobs/sha256:{zeros}?{ns}"),
        format!("/v2/a/../../x/blobs/sha256:{zeros}?{ns}"),
        format!("/v2/test/%2E%2E/%2E%2E/app/manifests/v1?{ns}"),
    ];
    for target in &targets {
        let resp = raw_http::request(net.node.registry_addr(), "GET", target, &[]).await?;
        ensure!(
            resp.status == 400 || resp.status == 404,
            "GET {target} answered {} (want 400 or 404)",
            resp.status
        );
        ensure!(
            !resp.oci_error_codes().is_empty(),
            "GET {target}: body is not an OCI error: {:?}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    net.origin.settle().await;
    for entry in net.origin.access_log()? {
        ensure!(
            !entry.path.contains("..")
                && !entry.path.contains("passwd")
                && !entry.path.contains("%2"),
            "a traversal name reached the origin: {entry:?}"
        );
    }
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_digests_are_refused() -> Result<()> {
    let net = small_net().await?;
    let ns = net.ns_query();
    let upper = net.image.layers[0]
        .digest
        .to_uppercase()
        .replace("SHA256:", "sha256:");
    let targets = [
        format!("/v2/test/app/blobs/sha256:xyz?{ns}"),
        format!("/v2/test/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e?{ns}"),
        format!("/v2/test/app/blobs/{upper}?{ns}"),
        format!("/v2/test/app/blobs/sha256:{}?{ns}", "a".repeat(63)),
    ];
    for target in &targets {
        for method in ["GET", "HEAD"] {
            let resp = raw_http::request(net.node.registry_addr(), method, target, &[]).await?;
            ensure!(
                resp.status == 400,
                "{method} {target} answered {} (want 400)",
                resp.status
            );
            if method == "GET" {
                let codes = resp.oci_error_codes();
                ensure!(
                    codes.iter().any(|c| c == "DIGEST_INVALID"),
                    "GET {target}: want DIGEST_INVALID, got {codes:?} in {:?}",
                    String::from_utf8_lossy(&resp.body)
                );
            }
        }
    }
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespace_reaches_no_upstream() -> Result<()> {
    let net = small_net().await?;
    let upstream_before = net.node.metric("shoal_upstream_requests_total").await?;
    net.origin.settle().await;
    let origin_before = net.origin.request_count();
    let layer = &net.image.layers[0].digest;
    let targets = [
        "/v2/test/app/manifests/v1?ns=evil.example".to_string(),
        format!("/v2/test/app/blobs/{layer}?ns=evil.example"),
    ];
    for target in &targets {
        for method in ["GET", "HEAD"] {
            let resp = raw_http::request(net.node.registry_addr(), method, target, &[]).await?;
            ensure!(
                resp.status == 404,
                "{method} {target} answered {} (want 404)",
                resp.status
            );
        }
    }
    net.origin.settle().await;
    let upstream_after = net.node.metric("shoal_upstream_requests_total").await?;
    ensure!(
        upstream_after == upstream_before,
        "shoal_upstream_requests_total went from {upstream_before} to {upstream_after}"
    );
    ensure!(
        net.origin.request_count() == origin_before,
        "the origin saw requests for an unknown namespace"
    );
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_ranges_on_a_cached_blob_are_refused() -> Result<()> {
    let net = small_net().await?;
    let ns = net.ns_query();
    let layer = net.image.layers[0].clone();
    let target = format!("/v2/test/app/blobs/{}?{ns}", layer.digest);
    let addr = net.node.registry_addr();

    // Fetch once in full so the blob is cached.
    let full = raw_http::request(addr, "GET", &target, &[]).await?;
    ensure!(full.status == 200, "full GET answered {}", full.status);
    ensure!(
        sha256_digest(&full.body) == layer.digest,
        "full GET served wrong bytes"
    );
    net.node
        .wait_for_metric("shoal_store_blobs", Duration::from_secs(60), |v| v >= 1.0)
        .await
        .context("the blob was not stored after a full GET")?;

    let unsatisfiable = format!("bytes */{}", layer.size);
    for range in ["bytes=999999999999-", "bytes=5-2", "bytes=abc"] {
        let header = format!("Range: {range}");
        let resp = raw_http::request(addr, "GET", &target, &[&header]).await?;
        ensure!(
            resp.status == 416,
            "Range {range} answered {} (want 416)",
            resp.status
        );
        ensure!(
            resp.header("content-range") == Some(unsatisfiable.as_str()),
            "Range {range}: Content-Range {:?}, want {unsatisfiable:?}",
            resp.header("content-range")
        );
    }
    let resp = raw_http::request(addr, "GET", &target, &["Range: bytes=10-19"]).await?;
    ensure!(
        resp.status == 206,
        "Range bytes=10-19 answered {}",
        resp.status
    );
    ensure!(
        resp.body == full.body[10..20],
        "Range bytes=10-19 served {:?}, want {:?}",
        resp.body,
        &full.body[10..20]
    );
    let want = format!("bytes 10-19/{}", layer.size);
    ensure!(
        resp.header("content-range") == Some(want.as_str()),
        "Content-Range {:?}, want {want:?}",
        resp.header("content-range")
    );
    net.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_heads_on_a_cold_blob_are_served_while_it_is_fetched() -> Result<()> {
    let net = small_net().await?;
    let ns = net.ns_query();
    let layer = net.image.layers[0].clone();
    let target = format!("/v2/test/app/blobs/{}?{ns}", layer.digest);
    let addr = net.node.registry_addr();

    // HEAD of a blob nobody has fetched: its length, from the upstream, and nothing stored.
    let head = raw_http::request(addr, "HEAD", &target, &[]).await?;
    ensure!(head.status == 200, "HEAD answered {}", head.status);
    let length = layer.size.to_string();
    ensure!(
        head.header("content-length") == Some(length.as_str()),
        "HEAD Content-Length {:?}, want {length}",
        head.header("content-length")
    );
    ensure!(
        head.header("docker-content-digest") == Some(layer.digest.as_str()),
        "HEAD Docker-Content-Digest {:?}",
        head.header("docker-content-digest")
    );

    // A Range on the cold blob starts the one fetch and is answered from it.
    let resp = raw_http::request(addr, "GET", &target, &["Range: bytes=100-299"]).await?;
    ensure!(resp.status == 206, "cold Range answered {}", resp.status);
    let want = format!("bytes 100-299/{}", layer.size);
    ensure!(
        resp.header("content-range") == Some(want.as_str()),
        "Content-Range {:?}, want {want:?}",
        resp.header("content-range")
    );
    net.node
        .wait_for_metric("shoal_store_blobs", Duration::from_secs(60), |v| v >= 1.0)
        .await
        .context("the blob was not stored after a cold Range request")?;
    let full = raw_http::request(addr, "GET", &target, &[]).await?;
    ensure!(
        sha256_digest(&full.body) == layer.digest,
        "the stored blob has the wrong bytes"
    );
    ensure!(
        resp.body == full.body[100..300],
        "cold Range served the wrong bytes"
    );
    let gets = net.blob_gets().await;
    ensure!(
        gets.get(&layer.digest) == Some(&1),
        "one origin GET expected for the blob, got {gets:?}"
    );
    net.finish().await
}

/// Registry host name of the hostile upstream.
const HOSTILE_HOST: &str = "hostile.shoal.test";

/// A tiny upstream that answers every manifest request with a manifest over
/// 4 MiB: `v1` with a Content-Length, `v2` without one (the body ends when
/// the connection closes). The real registry refuses to store such a
/// manifest, so it cannot serve one.
struct HostileUpstream {
    addr: std::net::SocketAddr,
    manifest_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HostileUpstream {
    async fn start() -> Result<HostileUpstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let manifest_requests = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(oversized_manifest());
        let counter = manifest_requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve_hostile(stream, &body, &counter).await;
                });
            }
        });
        Ok(HostileUpstream {
            addr,
            manifest_requests,
            task,
        })
    }
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn oversized_manifest() -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "1".repeat(64)),
            "size": 100,
        },
        "layers": [],
        "annotations": {"padding": "x".repeat(5 << 20)},
    });
    serde_json::to_vec(&manifest).expect("serialising a JSON value")
}

async fn serve_hostile(
    mut stream: tokio::net::TcpStream,
    body: &[u8],
    manifest_requests: &AtomicUsize,
) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("");
    let path = request_line
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("");
    let digest = sha256_digest(body);
    if path.contains("/manifests/") {
        manifest_requests.fetch_add(1, Ordering::SeqCst);
        let length = if path.ends_with("/v2") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Docker-Content-Digest: {digest}\r\n{length}Connection: close\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await?;
        if method != "HEAD" {
            stream.write_all(body).await?;
        }
    } else if path == "/v2/" || path == "/v2" {
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .await?;
    } else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
    }
    stream.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused_and_not_cached() -> Result<()> {
    let hostile = HostileUpstream::start().await?;
    let hostile_url = format!("http://{}", hostile.addr);
    let net = net_with_config(
        ImageSpec::new("test/app", "v1", 18).layer(16 << 10, 0),
        |origin| NodeConfig::for_origin(origin).upstream(HOSTILE_HOST, &hostile_url),
    )
    .await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for tag in ["v1", "v2"] {
        for attempt in 0..2 {
            let url = format!(
                "{}/v2/big/app/manifests/{tag}?ns={HOSTILE_HOST}",
                net.node.registry_url()
            );
            let resp = client
                .get(&url)
                .header(
                    "Accept",
                    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
                )
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status();
            let body = resp.bytes().await;
            let served_whole =
                status.is_success() && body.as_ref().is_ok_and(|b| b.len() > 4 << 20);
            ensure!(
                !served_whole,
                "oversized manifest {tag} was served (attempt {attempt}, status {status})"
            );
        }
    }
    eprintln!(
        "hostile upstream saw {} manifest requests for 4 refused GETs",
        hostile.manifest_requests.load(Ordering::SeqCst)
    );
    ensure!(
        hostile.manifest_requests.load(Ordering::SeqCst) >= 1,
        "the node never asked the hostile upstream"
    );
    let stored = net.node.metric("shoal_store_bytes").await?;
    ensure!(
        stored < (4 << 20) as f64,
        "shoal_store_bytes is {stored}: the oversized manifest was stored"
    );
    net.finish().await
}
