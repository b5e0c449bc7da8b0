//! The benchmark's result: one row per metric with a value per runtime and the ratio of the
//! first runtime to the second, printed as a table and written as JSON.

use std::fmt::Write;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    /// One value per runtime, in the order of `Report::runtimes`; `None` where it failed.
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub runtimes: Vec<String>,
    pub machine: String,
    pub rows: Vec<Row>,
    /// Failures met while measuring, by runtime.
    pub errors: Vec<String>,
}

impl Report {
    pub fn add(&mut self, metric: impl Into<String>, unit: &str, values: Vec<Option<f64>>) {
        self.rows.push(Row {
            metric: metric.into(),
            unit: unit.into(),
            values,
        });
    }

    /// A Markdown table; the last column is runtimes[0] / runtimes[1] where both exist.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "| metric | unit |");
        for r in &self.runtimes {
            let _ = write!(out, " {r} |");
        }
        if self.runtimes.len() >= 2 {
            let _ = write!(out, " {}/{} |", self.runtimes[0], self.runtimes[1]);
        }
        out.push('\n');
        let cols = 2 + self.runtimes.len() + usize::from(self.runtimes.len() >= 2);
        out.push_str(&"|---".repeat(cols));
        out.push_str("|\n");
        for row in &self.rows {
            let _ = write!(out, "| {} | {} |", row.metric, row.unit);
            for v in &row.values {
                match v {
                    Some(v) => {
                        let _ = write!(out, " {} |", fmt(*v));
                    }
                    None => out.push_str(" – |"),
                }
            }
            if self.runtimes.len() >= 2 {
                match (
                    row.values.first().copied().flatten(),
                    row.values.get(1).copied().flatten(),
                ) {
                    (Some(a), Some(b)) if b > 0.0 => {
                        let _ = write!(out, " {:.2} |", a / b);
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        out
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratio_column() {
        let mut r = Report {
            runtimes: vec!["crid".into(), "containerd".into()],
            ..Default::default()
        };
        r.add("cold start median", "ms", vec![Some(50.0), Some(200.0)]);
        r.add("pull", "ms", vec![Some(10.0), None]);
        let t = r.table();
        assert!(t.contains("| crid/containerd |"), "{t}");
        assert!(
            t.contains("| cold start median | ms | 50.0 | 200 | 0.25 |"),
            "{t}"
        );
        assert!(t.contains("| pull | ms | 10.0 | – | – |"), "{t}");
    }
}
