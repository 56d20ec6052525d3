//! Statistics over repeated samples, and the Markdown and JSON reports.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::metrics::{Metric, Sample};

/// Every sample of one path.
#[derive(Debug, Clone, Default)]
pub struct PathSamples {
    pub name: String,
    pub samples: BTreeMap<Metric, Vec<f64>>,
    /// What went wrong in a measurement ("round 2: 3 failed requests").
    pub problems: BTreeMap<Metric, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 0 {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    };
    Some(Summary {
        median,
        min: s[0],
        max: s[s.len() - 1],
    })
}

impl PathSamples {
    pub fn summary(&self, m: Metric) -> Option<Summary> {
        self.samples.get(&m).and_then(|s| summarize(s))
    }

    /// Records one round's sample (its value, and its problem if any).
    pub fn add(&mut self, round: usize, sample: Sample) {
        self.samples.entry(sample.metric).or_default().push(sample.value);
        if let Some(p) = sample.problem {
            self.problems
                .entry(sample.metric)
                .or_default()
                .push(format!("round {round}: {p}"));
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Ratio of medians, `a / b`.
pub fn ratio(a: &PathSamples, b: &PathSamples, m: Metric) -> Option<f64> {
    Some(a.summary(m)?.median / b.summary(m)?.median)
}

/// A Markdown table: one row per metric, one column per path, then the
/// netaccel ratios against the host and against `baseline`.
pub fn markdown(
    paths: &[PathSamples],
    accel: &PathSamples,
    host: &PathSamples,
    baseline: &PathSamples,
) -> String {
    let mut t = String::from("| metric |");
    for p in paths {
        t += &format!(" {} |", p.name);
    }
    t += &format!(" netaccel / host | netaccel / {} |\n|---|", baseline.name);
    t += &"---:|".repeat(paths.len() + 2);
    t.push('\n');
    let mut flagged = Vec::new();
    for m in Metric::ALL {
        t += &format!("| {} |", m.label());
        for p in paths {
            let flag = if p.problems.contains_key(&m) {
                flagged.push((p, m));
                format!(" ⚠{}", flagged.len())
            } else {
                String::new()
            };
            match p.summary(m) {
                Some(s) if s.max == 0.0 && !flag.is_empty() => t += &format!(" fails{flag} |"),
                Some(s) if s.min == s.max => t += &format!(" {}{flag} |", fmt_value(s.median)),
                Some(s) => {
                    t += &format!(
                        " {} ({}–{}){flag} |",
                        fmt_value(s.median),
                        fmt_value(s.min),
                        fmt_value(s.max)
                    )
                }
                None => t += " – |",
            }
        }
        for other in [host, baseline] {
            match ratio(accel, other, m) {
                Some(r) if r.is_finite() && r > 0.0 => t += &format!(" {r:.2}x |"),
                _ => t += " – |",
            }
        }
        t.push('\n');
    }
    for (i, (p, m)) in flagged.iter().enumerate() {
        let said = p.problems.get(m).map(|v| v.join("; ")).unwrap_or_default();
        t += &format!("\n⚠{} {}, {}: {said}", i + 1, p.name, m.label());
    }
    if !flagged.is_empty() {
        t.push('\n');
    }
    t
}

pub fn json_report(paths: &[PathSamples], config: Value, notes: &[String]) -> Value {
    let paths: Vec<Value> = paths
        .iter()
        .map(|p| {
            let samples: serde_json::Map<String, Value> = p
                .samples
                .iter()
                .map(|(m, s)| (m.key().to_owned(), json!(s)))
                .collect();
            let medians: serde_json::Map<String, Value> = Metric::ALL
                .iter()
                .filter_map(|m| p.summary(*m).map(|s| (m.key().to_owned(), json!(s.median))))
                .collect();
            let problems: serde_json::Map<String, Value> = p
                .problems
                .iter()
                .map(|(m, v)| (m.key().to_owned(), json!(v)))
                .collect();
            json!({"name": p.name, "samples": samples, "medians": medians, "problems": problems})
        })
        .collect();
    json!({"config": config, "paths": paths, "notes": notes})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str, v: &[f64]) -> PathSamples {
        let mut p = PathSamples {
            name: name.into(),
            ..Default::default()
        };
        p.samples.insert(Metric::Up1, v.to_vec());
        p
    }

    #[test]
    fn median_min_max() {
        assert_eq!(
            summarize(&[3.0, 1.0, 2.0]),
            Some(Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(summarize(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn problems_are_flagged_in_the_cell_and_listed() {
        let host = path("host", &[10.0]);
        let mut slirp = path("slirp4netns 65520", &[]);
        slirp.samples.clear();
        slirp.add(
            1,
            Sample {
                metric: Metric::AbClose8,
                value: 0.0,
                problem: Some("client failed (exit 22): reset".into()),
            },
        );
        let mut accel = path("netaccel", &[11.0]);
        accel.add(
            1,
            Sample {
                metric: Metric::ConnRate,
                value: 300.0,
                problem: Some("1 connect(s) ≥ 100 ms (max 1012 ms)".into()),
            },
        );
        accel.add(2, Sample::clean(Metric::ConnRate, 9000.0));
        let t = markdown(
            &[host.clone(), slirp.clone(), accel.clone()],
            &accel,
            &host,
            &slirp,
        );
        let ab = t
            .lines()
            .find(|l| l.starts_with("| ab → nginx, new connection per request, -c 8"))
            .expect("ab row");
        assert!(ab.contains("| fails ⚠2 |"), "{ab}");
        let rate = t
            .lines()
            .find(|l| l.starts_with("| short connections/s to the peer, 1 client"))
            .expect("row");
        assert!(rate.contains("4650 (300–9000) ⚠1"), "{rate}");
        assert!(t.contains("⚠2 slirp4netns 65520, ab → nginx"), "{t}");
        assert!(
            t.contains(
                "⚠1 netaccel, short connections/s to the peer, 1 client: round 1: 1 connect(s) ≥ 100 ms"
            ),
            "{t}"
        );
        let doc = json_report(&[accel], json!({}), &[]);
        assert_eq!(
            doc["paths"][0]["problems"]["connections_per_s"][0],
            "round 1: 1 connect(s) ≥ 100 ms (max 1012 ms)"
        );
    }

    #[test]
    fn table_has_ratios_from_medians() {
        let host = path("host", &[10.0, 12.0, 11.0]);
        let slirp = path("slirp4netns 65520", &[2.0, 2.0, 2.0]);
        let accel = path("netaccel", &[11.0, 10.0, 11.0]);
        let t = markdown(
            &[host.clone(), slirp.clone(), accel.clone()],
            &accel,
            &host,
            &slirp,
        );
        let row = t
            .lines()
            .find(|l| l.contains("1 stream (Gbit/s)") && l.contains("container → peer"))
            .expect("row");
        assert!(row.contains("| 11.0 (10.0–12.0) |"), "{row}");
        assert!(row.contains("| 2.00 |"), "{row}");
        assert!(row.contains("| 1.00x | 5.50x |"), "{row}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("| connect latency p50 (µs) | – |")),
            "{t}"
        );
    }
}
