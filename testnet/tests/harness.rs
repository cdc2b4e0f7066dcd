//! Self-tests of the harness with real parts only (no shoald): containerd
//! pulls images pushed by [`shoal_testnet::image`] straight from the origin,
//! with `hosts.toml` pointing at the origin as the mirror.

use shoal_testnet::containerd::Containerd;
use shoal_testnet::hosts::HostsDir;
use shoal_testnet::image::{push_image, sha256_digest, ImageSpec, ManifestFormat};
use shoal_testnet::origin::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_pushed_images_directly_from_origin() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let oci = push_image(&origin, ImageSpec::multi_layer("test/app", "v1", 1)).await?;
    let docker = push_image(
        &origin,
        ImageSpec::new("test/docker", "v1", 2)
            .layer(20 << 10, 10)
            .layer(2 << 20, 60)
            .format(ManifestFormat::DockerList),
    )
    .await?;
    let hosts = HostsDir::for_test_registry(origin.addr())?;

    let containerd = Containerd::start().await?;
    for image in [&oci, &docker] {
        containerd.pull_ok(&image.reference, hosts.path()).await?;
    }
    let held = containerd.content_digests().await?;
    origin.settle().await;
    for image in [&oci, &docker] {
        for digest in image.content_digests() {
            assert!(held.contains(&digest), "containerd lacks {digest}");
        }
        // One pull fetches every blob exactly once.
        for blob in image.blobs() {
            assert_eq!(origin.blob_gets(&blob.digest), 1, "GETs of {}", blob.digest);
        }
    }
    // containerd names the registry to a mirror with `?ns=`.
    let blob_gets: Vec<_> = origin
        .access_log()?
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.contains("/blobs/"))
        .collect();
    assert!(!blob_gets.is_empty());
    for entry in &blob_gets {
        assert!(entry.query.contains("ns=origin.shoal.test"), "{entry:?}");
    }
    let images = containerd.images().await?;
    assert!(images.contains(&oci.reference), "{images:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_restarts_on_same_port_and_corrupts_and_restores_blobs() -> anyhow::Result<()> {
    let mut origin = Origin::start().await?;
    let image = push_image(
        &origin,
        ImageSpec::new("test/small", "v1", 3).layer(64 << 10, 50),
    )
    .await?;
    let layer = &image.layers[0];
    let url = format!("{}/v2/test/small/blobs/{}", origin.url(), layer.digest);
    let client = reqwest::Client::new();

    let good = client.get(&url).send().await?.bytes().await?;
    assert_eq!(sha256_digest(&good), layer.digest);

    let corrupted = origin.corrupt_blob(&layer.digest)?;
    let bad = client.get(&url).send().await?.bytes().await?;
    assert_eq!(bad.len(), good.len());
    assert_ne!(sha256_digest(&bad), layer.digest);
    corrupted.restore()?;

    origin.stop().await?;
    assert!(client.get(&url).send().await.is_err());
    origin.start_again().await?;
    let again = client.get(&url).send().await?.bytes().await?;
    assert_eq!(again, good);

    let ranged = client
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await?;
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await?, good.slice(10..20));
    origin.settle().await;
    assert_eq!(origin.blob_gets(&layer.digest), 4);
    assert_eq!(origin.blob_range_gets(&layer.digest), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_layer_builds_and_pulls_directly_from_origin() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let spec = ImageSpec::new("test/large", "v1", 4)
        .layer(64 << 10, 20)
        .layer(200 << 20, 90)
        .format(ManifestFormat::Oci);
    let built = tokio::task::spawn_blocking(move || spec.build()).await??;
    eprintln!("built in {:?}", started.elapsed());
    let origin = Origin::start().await?;
    let image = built.push(&origin.url()).await?;
    eprintln!("pushed after {:?}", started.elapsed());
    assert!(image.largest_layer().size > 150 << 20);
    let hosts = HostsDir::for_test_registry(origin.addr())?;
    let containerd = Containerd::start().await?;
    containerd.pull_ok(&image.reference, hosts.path()).await?;
    eprintln!("pulled after {:?}", started.elapsed());
    let held = containerd.content_digests().await?;
    assert!(held.is_superset(&image.content_digests()));
    Ok(())
}
