//! A small parser for the Prometheus text format served on `/metrics`, enough
//! to read counters and gauges by name and labels.

use std::collections::BTreeMap;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Label pairs.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Samples in the order served.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text; lines that do not parse are skipped.
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_sample).collect(),
        }
    }

    /// Sum over every label set of `name` (0 if absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.sum_with(name, &[])
    }

    /// Sum over the label sets of `name` that carry all of `labels`.
    pub fn sum_with(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sums() {
        let text = "# HELP x y\n# TYPE shoal_upstream_requests_total counter\n\
            shoal_upstream_requests_total{upstream=\"o\",kind=\"blob\"} 3\n\
            shoal_upstream_requests_total{upstream=\"o\",kind=\"manifest\"} 2\n\
            shoal_store_bytes 1.5e3\n\
            weird{a=\"x,\\\"y\"} 1 1700000000\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("shoal_upstream_requests_total"), 5.0);
        assert_eq!(
            m.sum_with("shoal_upstream_requests_total", &[("kind", "blob")]),
            3.0
        );
        assert_eq!(m.sum("shoal_store_bytes"), 1500.0);
        assert_eq!(m.sum("missing"), 0.0);
        assert_eq!(m.sum_with("weird", &[("a", "x,\"y")]), 1.0);
    }
}
