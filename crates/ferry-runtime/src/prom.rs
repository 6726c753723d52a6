//! The Prometheus text format, written in one place for every `/metrics` ferry serves.

use std::fmt::Write;

/// A label value as Prometheus text wants it.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A Prometheus text exposition being written: metric families, each with its samples.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name` (`kind`: gauge or counter).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of `name`; `labels` already formatted (`a="x",b="y"`, values escaped).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) -> &mut Self {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `ferry_grpc_denied_total`: this process's gRPC calls refused for the caller's identity.
pub fn denied_calls(out: &mut Exposition) {
    let name = "ferry_grpc_denied_total";
    out.family(
        name,
        "counter",
        "gRPC calls refused because the caller's certificate is not of a role the endpoint admits.",
    );
    for (endpoint, n) in crate::grpc::denied_calls() {
        out.sample(name, &format!("endpoint=\"{endpoint}\""), n);
    }
}
