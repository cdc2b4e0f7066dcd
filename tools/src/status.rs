//! `shoal status`: a node at a glance, from its admin API's `GET /status`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use shoal_node::admin::status::{NodeStatus, Traffic};
use shoal_node::lifecycle::StateCounts;

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
    match &status.lifecycle {
        Some(counts) => lifecycle(&mut out, counts),
        None => {
            let _ = writeln!(out, "layers    lifecycle off");
        }
    }
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

/// The lifecycle's states as a one-row table, with the pins and the bytes held.
fn lifecycle(out: &mut String, counts: &StateCounts) {
    let _ = writeln!(
        out,
        "layers    {:>8} {:>8} {:>8} {:>16} {:>8} {:>11} {:>13}",
        "active", "warm", "cold", "pending deletion", "deleted", "pinned keep", "pinned delete"
    );
    let _ = writeln!(
        out,
        "          {:>8} {:>8} {:>8} {:>16} {:>8} {:>11} {:>13}",
        counts.active,
        counts.warm,
        counts.cold,
        counts.pending_deletion,
        counts.deleted,
        counts.pinned_keep,
        counts.pinned_delete
    );
    let _ = writeln!(out, "          {} held", bytes(counts.held_bytes));
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
    fn the_status_shows_lifecycle_states_or_says_the_lifecycle_is_off() {
        let mut status: NodeStatus = serde_json::from_value(serde_json::json!({
            "version": "0.1.0",
            "region": "eu",
            "peer_id": null,
            "registry_listen": "127.0.0.1:5000",
            "upstreams": [],
            "peer_network": true,
            "members_by_region": {"eu": 2, "us": 1},
            "disk": {"used_bytes": 1536, "budget_bytes": 4096, "blobs": 3},
            "since_start": {"seconds": 10, "hits": 3, "misses": 1, "bytes_served_cache": 0,
                "bytes_served_upstream": 0, "bytes_received_peer": 0, "bytes_received_origin": 0},
            "last_hour": {"seconds": 10, "hits": 3, "misses": 1, "bytes_served_cache": 0,
                "bytes_served_upstream": 0, "bytes_received_peer": 0, "bytes_received_origin": 0},
            "largest_blobs": [],
            "warnings": []
        }))
        .unwrap();
        let text = render(&status);
        assert!(text.contains("members   3 (eu: 2, us: 1)"), "{text}");
        assert!(text.contains("1.5 KiB of 4.0 KiB"), "{text}");
        assert!(text.contains("hit ratio 75.0%"), "{text}");
        assert!(text.contains("lifecycle off"), "{text}");
        status.lifecycle = Some(StateCounts {
            active: 4,
            warm: 3,
            cold: 2,
            pending_deletion: 1,
            deleted: 7,
            held_bytes: 2048,
            pinned_keep: 5,
            pinned_delete: 6,
        });
        let text = render(&status);
        let row = text
            .lines()
            .skip_while(|l| !l.contains("pending deletion"))
            .nth(1)
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["4", "3", "2", "1", "7", "5", "6"], "{text}");
        assert!(text.contains("2.0 KiB held"), "{text}");
    }

    #[test]
    fn bytes_read_as_a_person_would_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 << 30), "100.0 GiB");
    }
}
