//! `shoal status`: a node at a glance, from its admin API's `GET /status`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use shoal_node::admin::status::{NodeStatus, Traffic};

use crate::admin_client::AdminClient;

/// Prints the status of the node at `admin`: JSON as the node gave it with `json`, else text.
/// Exit 1 when the node reports warnings.
pub async fn run(admin: &str, json: bool) -> Result<ExitCode> {
    let status = AdminClient::new(admin)?.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(if status.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The text form of a status.
pub fn render(status: &NodeStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "shoald {}  region {}", status.version, status.region);
    if let Some(peer) = &status.peer_id {
        let _ = writeln!(out, "peer id   {peer}");
    }
    let _ = writeln!(out, "registry  {}", status.registry_listen);
    let upstreams: Vec<String> = status
        .upstreams
        .iter()
        .map(|u| format!("{} ({})", u.name, u.url))
        .collect();
    let _ = writeln!(out, "upstreams {}", upstreams.join(", "));
    if status.peer_network {
        let members: Vec<String> = status
            .members_by_region
            .iter()
            .map(|(region, n)| format!("{region}: {n}"))
            .collect();
        let total: u64 = status.members_by_region.values().sum();
        let _ = writeln!(
            out,
            "members   {total}{}",
            if members.is_empty() {
                String::new()
            } else {
                format!(" ({})", members.join(", "))
            }
        );
    } else {
        let _ = writeln!(out, "members   peer network off (no network key)");
    }
    let disk = &status.disk;
    let _ = writeln!(
        out,
        "disk      {} of {} ({:.1}%), {} blobs",
        bytes(disk.used_bytes),
        bytes(disk.budget_bytes),
        if disk.budget_bytes == 0 {
            0.0
        } else {
            100.0 * disk.used_bytes as f64 / disk.budget_bytes as f64
        },
        disk.blobs
    );
    traffic(&mut out, "since start", &status.since_start);
    traffic(&mut out, "last hour", &status.last_hour);
    if !status.largest_blobs.is_empty() {
        let _ = writeln!(out, "largest blobs");
        for blob in &status.largest_blobs {
            let _ = writeln!(out, "  {:>10}  {}", bytes(blob.bytes), blob.digest);
        }
    }
    if status.warnings.is_empty() {
        let _ = writeln!(out, "no warnings");
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    out
}

fn traffic(out: &mut String, label: &str, traffic: &Traffic) {
    let ratio = traffic.hit_ratio().map_or_else(
        || "no requests".to_owned(),
        |r| format!("{:.1}%", 100.0 * r),
    );
    let _ = writeln!(
        out,
        "{label} ({}): hit ratio {ratio} ({} hits, {} misses)",
        duration(traffic.seconds),
        traffic.hits,
        traffic.misses
    );
    let _ = writeln!(
        out,
        "  served   {} from cache, {} while fetching",
        bytes(traffic.bytes_served_cache),
        bytes(traffic.bytes_served_upstream)
    );
    let _ = writeln!(
        out,
        "  received {} from peers, {} from the origin",
        bytes(traffic.bytes_received_peer),
        bytes(traffic.bytes_received_origin)
    );
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// Bytes in binary units, e.g. "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_a_person_would_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 << 30), "100.0 GiB");
    }
}
