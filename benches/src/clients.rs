//! Real clients that nobody on the project wrote, against real servers in
//! the peer host: ApacheBench against nginx, redis-benchmark against
//! redis-server, pgbench against PostgreSQL (all Debian packages, installed
//! by init-host). Each client runs on every path like the probes; a client
//! that fails or reports failed requests is shown as such in the table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rootless_lab::peer::Server;
use rootless_lab::{run, wait_for, Lab, PeerHost};

use crate::metrics::{Metric, Sample};
use crate::paths::NetPath;

const NGINX_PORT: u16 = 8080;
const REDIS_PORT: u16 = 6379;
/// A second redis-server for the 8-client reconnect test. redis-benchmark
/// closes first, so each reconnect leaves its client port in TIME_WAIT for
/// 60 s; thousands of them towards one server port exhaust the ephemeral
/// range (connects then fail or crawl). Two servers keep the two reconnect
/// tests out of each other's 4-tuples.
const REDIS_PORT_2: u16 = 6380;
const POSTGRES_PORT: u16 = 5432;

/// nginx, redis-server and PostgreSQL in the peer host; stopped on drop.
pub struct RealServers {
    _nginx: Server,
    _redis: [Server; 2],
    _postgres: Server,
    url: String,
    host: String,
    /// The PostgreSQL role (the test user, who owns the cluster).
    pg_user: String,
}

/// The PostgreSQL server binaries of the installed major version.
fn postgres_bin() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (Debian package postgresql; run init-host)")?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop().context("no /usr/lib/postgresql/*/bin/postgres")
}

fn wait_tcp(what: &str, addr: &str) -> Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    wait_for(what, Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    })
    .map(drop)
}

impl RealServers {
    pub fn start(lab: &Lab, peer: &PeerHost) -> Result<Self> {
        let host = peer.addr.to_string();
        let dir = lab.path().join("servers");
        for d in ["www", "tmp", "redis", "pg"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        lab.chown(&dir.join("pg"))?;
        let d = dir.display();
        // A small static page, as a web server's health or API answer.
        std::fs::write(dir.join("www/index.html"), "<html><body>netbench</body></html>\n")?;
        use std::os::unix::fs::PermissionsExt;
        for p in [dir.clone(), dir.join("www"), dir.join("www/index.html")] {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
                 \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
                 \x20 server {{ listen {host}:{NGINX_PORT} backlog=4096; location / {{ root {d}/www; }} }}\n}}\n"
            ),
        )?;
        let conf_s = conf.to_str().context("path is not UTF-8")?;
        let prefix = dir.to_str().context("path is not UTF-8")?;
        let nginx = peer.spawn("nginx", &["-c", conf_s, "-p", prefix])?;
        wait_tcp("nginx in the peer", &format!("{host}:{NGINX_PORT}"))?;

        let redis_dir = format!("{d}/redis");
        let redis_at = |port: u16| -> Result<Server> {
            let server = peer.spawn(
                "redis-server",
                &[
                    "--bind",
                    &host,
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--tcp-backlog",
                    "4096",
                    "--dir",
                    &redis_dir,
                ],
            )?;
            wait_tcp("redis-server in the peer", &format!("{host}:{port}"))?;
            Ok(server)
        };
        let redis = [redis_at(REDIS_PORT)?, redis_at(REDIS_PORT_2)?];

        let bin = postgres_bin()?;
        let data = dir.join("pg/data");
        let user = lab.user.name.clone();
        run(lab.user_command(bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            &user,
            "--auth=trust",
            "-E",
            "UTF8",
        ]))
        .context("initdb")?;
        // Every client address of the private peer link may connect.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)?;
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, rules)?;
        let data_s = data.to_str().context("path is not UTF-8")?;
        let socket_dir = format!("{d}/pg");
        let postgres = peer.spawn(
            "runuser",
            &[
                "-u",
                &user,
                "--",
                bin.join("postgres").to_str().context("path is not UTF-8")?,
                "-D",
                data_s,
                "-c",
                &format!("listen_addresses={host}"),
                "-c",
                &format!("port={POSTGRES_PORT}"),
                "-c",
                &format!("unix_socket_directories={socket_dir}"),
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
        )?;
        wait_tcp("PostgreSQL in the peer", &format!("{host}:{POSTGRES_PORT}"))?;
        let port = POSTGRES_PORT.to_string();
        let init = || {
            run(lab.user_command("pgbench").args([
                "-i", "-s", "1", "-q", "-h", &host, "-p", &port, "-U", &user, "postgres",
            ]))
        };
        // The server may listen a moment before it accepts logins.
        init().or_else(|_| {
            std::thread::sleep(Duration::from_secs(2));
            init()
        })?;
        Ok(Self {
            _nginx: nginx,
            _redis: redis,
            _postgres: postgres,
            url: format!("http://{host}:{NGINX_PORT}/"),
            host,
            pg_user: user,
        })
    }
}

/// Runs a client on `path` through `sh -c`, so that its exit status and
/// both output streams come back even when it fails.
fn client(lab: &Lab, path: &NetPath, command: &str, timeout: Duration) -> Result<ClientRun> {
    let script = format!("{command} 2>&1; echo \"exit=$?\"");
    let out = path.run(lab, &["sh", "-c", &script], timeout)?;
    let (text, status) = out
        .trim_end()
        .rsplit_once("exit=")
        .context("the client's exit status is missing")?;
    Ok(ClientRun {
        text: text.to_owned(),
        status: status.trim().parse().unwrap_or(-1),
    })
}

pub struct ClientRun {
    pub text: String,
    pub status: i32,
}

/// Runs every real client once on `path`.
pub fn measure_all(lab: &Lab, path: &NetPath, servers: &RealServers, seconds: u32) -> Result<Vec<Sample>> {
    let timeout = Duration::from_secs(u64::from(seconds) + 90);
    let mut samples = Vec::new();
    let url = &servers.url;
    for (metric, flags) in [
        (Metric::AbClose1, "-c 1"),
        (Metric::AbClose8, "-c 8"),
        (Metric::AbKeepAlive8, "-k -c 8"),
    ] {
        // -t before -n: -t alone caps the run at 50000 requests.
        let cmd = format!("ab -q -r -s 10 -t {seconds} -n 100000000 {flags} {url}");
        samples.push(read_ab(metric, &client(lab, path, &cmd, timeout)?));
    }
    for (metric, port, flags, per_s) in [
        (Metric::RedisGet20, REDIS_PORT, "-t get -c 20", 40_000),
        (
            Metric::RedisPingReconnect1,
            REDIS_PORT,
            "-t ping_mbulk -c 1 -k 0",
            3_000,
        ),
        (
            Metric::RedisPingReconnect8,
            REDIS_PORT_2,
            "-t ping_mbulk -c 8 --threads 4 -k 0",
            5_000,
        ),
    ] {
        // redis-benchmark has no time limit: a request count sized for
        // about `seconds` on the host's path, and (with -k 0) well inside
        // the ephemeral range (see REDIS_PORT_2).
        let cmd = format!(
            "timeout 120 redis-benchmark -h {} -p {port} --csv {flags} -n {}",
            servers.host,
            per_s * seconds
        );
        samples.push(read_redis(metric, &client(lab, path, &cmd, timeout)?));
    }
    for (metric, flags) in [
        (Metric::PgbenchConnect1, "-c 1 -j 1"),
        (Metric::PgbenchConnect8, "-c 8 -j 4"),
    ] {
        let cmd = format!(
            "pgbench -h {} -p {POSTGRES_PORT} -U {} -C -S -n -T {seconds} {flags} postgres",
            servers.host, servers.pg_user
        );
        samples.push(read_pgbench(metric, &client(lab, path, &cmd, timeout)?));
    }
    Ok(samples)
}

/// A failed client: no figure, and what it said.
fn failed(metric: Metric, run: &ClientRun, why: &str) -> Sample {
    let last = run
        .text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Sample {
        metric,
        value: 0.0,
        problem: Some(format!(
            "client failed (exit {}, {why}): {}",
            run.status,
            last.trim()
        )),
    }
}

/// The first word after `label` on the first line that starts with it,
/// parsed as a number.
fn number_after<T: std::str::FromStr>(text: &str, label: &str) -> Option<T> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// ApacheBench: requests per second; failed requests and non-2xx answers.
pub fn read_ab(metric: Metric, run: &ClientRun) -> Sample {
    let rate: Option<f64> = number_after(&run.text, "Requests per second:");
    let Some(rate) = rate.filter(|_| run.status == 0) else {
        return failed(metric, run, "no rate");
    };
    let count = |label| number_after::<u64>(&run.text, label).unwrap_or(0);
    let (failed_requests, non_2xx) = (count("Failed requests:"), count("Non-2xx responses:"));
    let mut problems = Vec::new();
    if failed_requests > 0 {
        problems.push(format!("{failed_requests} failed requests"));
    }
    if non_2xx > 0 {
        problems.push(format!("{non_2xx} non-2xx responses"));
    }
    Sample {
        metric,
        value: rate,
        problem: (!problems.is_empty()).then(|| problems.join(", ")),
    }
}

/// redis-benchmark `--csv`: the test's rps; any error line is a failure.
pub fn read_redis(metric: Metric, run: &ClientRun) -> Sample {
    let rate = run.text.lines().find_map(|l| {
        let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
        (cols.len() >= 2 && cols[0] != "test").then(|| cols[1].parse::<f64>().ok())?
    });
    let Some(rate) = rate.filter(|_| run.status == 0) else {
        return failed(metric, run, "no rate");
    };
    let errors = run
        .text
        .lines()
        .filter(|l| l.contains("rror") || l.contains("Could not connect"))
        .count();
    Sample {
        metric,
        value: rate,
        problem: (errors > 0).then(|| format!("{errors} error line(s)")),
    }
}

/// pgbench: transactions per second (reconnection included with -C);
/// failed transactions.
pub fn read_pgbench(metric: Metric, run: &ClientRun) -> Sample {
    let tps: Option<f64> = number_after(&run.text, "tps =");
    let Some(tps) = tps.filter(|_| run.status == 0) else {
        return failed(metric, run, "no tps");
    };
    let failed_tx: u64 = number_after(&run.text, "number of failed transactions:").unwrap_or(0);
    Sample {
        metric,
        value: tps,
        problem: (failed_tx > 0).then(|| format!("{failed_tx} failed transactions")),
    }
}

/// The real clients and servers this machine must have for a full run.
pub fn check_installed() -> Result<()> {
    let missing: Vec<&str> = ["ab", "nginx", "redis-server", "redis-benchmark", "pgbench"]
        .into_iter()
        .filter(|t| {
            !["/usr/bin", "/usr/sbin"]
                .iter()
                .any(|d| Path::new(d).join(t).is_file())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not installed: run init-host/init-host.root.sh (apache2-utils, nginx-light, redis-server, redis-tools, postgresql)",
            missing.join(", ")
        );
    }
    postgres_bin().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, status: i32) -> ClientRun {
        ClientRun {
            text: text.into(),
            status,
        }
    }

    #[test]
    fn ab_rate_and_failures() {
        let ok = "Complete requests:      9145\nFailed requests:        0\nRequests per second:    9143.57 [#/sec] (mean)\n";
        assert_eq!(
            read_ab(Metric::AbClose8, &run(ok, 0)),
            Sample::clean(Metric::AbClose8, 9143.57)
        );
        let bad = "Failed requests:        12\n   (Connect: 0, Receive: 12, Length: 0, Exceptions: 0)\nNon-2xx responses:      3\nRequests per second:    100.5 [#/sec] (mean)\n";
        let s = read_ab(Metric::AbClose8, &run(bad, 0));
        assert_eq!(s.value, 100.5);
        assert_eq!(
            s.problem.as_deref(),
            Some("12 failed requests, 3 non-2xx responses")
        );
        let died = read_ab(
            Metric::AbClose1,
            &run("apr_socket_recv: Connection reset by peer (104)\n", 22),
        );
        assert_eq!(died.value, 0.0);
        assert!(died
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("exit 22") && p.contains("reset")));
    }

    #[test]
    fn redis_csv_rate_and_errors() {
        let ok = "\"test\",\"rps\",\"avg_latency_ms\"\n\"GET\",\"59665.87\",\"0.197\"\n";
        assert_eq!(read_redis(Metric::RedisGet20, &run(ok, 0)).value, 59665.87);
        let warned = "WARNING: Keepalive disabled. You probably need ...\n\"test\",\"rps\"\n\"PING_MBULK\",\"13297.87\"\n";
        assert_eq!(
            read_redis(Metric::RedisPingReconnect8, &run(warned, 0)).problem,
            None
        );
        let errs = "Error: Connection reset by peer\n\"test\",\"rps\"\n\"PING_MBULK\",\"10.0\"\n";
        assert_eq!(
            read_redis(Metric::RedisPingReconnect8, &run(errs, 0))
                .problem
                .as_deref(),
            Some("1 error line(s)")
        );
        assert_eq!(
            read_redis(Metric::RedisGet20, &run("Could not connect to Redis\n", 1)).value,
            0.0
        );
    }

    #[test]
    fn pgbench_tps_and_failures() {
        let ok = "number of failed transactions: 0 (0.000%)\nlatency average = 25.054 ms\ntps = 319.315640 (including reconnection times)\n";
        assert_eq!(
            read_pgbench(Metric::PgbenchConnect8, &run(ok, 0)),
            Sample::clean(Metric::PgbenchConnect8, 319.31564)
        );
        let bad = "number of failed transactions: 7 (1.000%)\ntps = 10.0 (including reconnection times)\n";
        assert_eq!(
            read_pgbench(Metric::PgbenchConnect1, &run(bad, 0))
                .problem
                .as_deref(),
            Some("7 failed transactions")
        );
        assert_eq!(
            read_pgbench(Metric::PgbenchConnect1, &run("pgbench: error: connection", 1)).value,
            0.0
        );
    }
}
