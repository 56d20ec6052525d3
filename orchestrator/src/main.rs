//! `u7s`: the cluster CLI.

use anyhow::Result;
use clap::{Parser, Subcommand};
use u7s::doctor::{evaluate, HostFacts, Severity};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes without root: kubeadm nodes in rootless container engines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this host's prerequisites; exits non-zero when something blocks.
    Doctor,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Doctor => {
            let findings = evaluate(&HostFacts::gather());
            let mut blocking = 0;
            for f in &findings {
                let mark = match (f.ok, f.severity) {
                    (true, _) => "ok  ",
                    (false, Severity::Warning) => "warn",
                    (false, Severity::Blocking) => {
                        blocking += 1;
                        "FAIL"
                    }
                };
                println!("[{mark}] {:<16} {}", f.check, f.detail);
            }
            if blocking > 0 {
                anyhow::bail!("{blocking} blocking problem(s) found");
            }
            Ok(())
        }
    }
}
