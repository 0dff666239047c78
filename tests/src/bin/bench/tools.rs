//! Outside load generators and the peer proxy: wrk, h2load and squid, from
//! the distribution's packages (`cargo xtask bench` installs them). Their
//! output is parsed by pure functions, tested below.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// What a load generator reports for one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    pub requests: u64,
    pub per_second: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// Where a tool lives, if it is installed.
pub fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// `wrk` arguments for a keep-alive run of `seconds` on `url`.
pub fn wrk_args(url: &str, seconds: u32, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-t2",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(extra);
    args.push(url.to_string());
    args
}

/// Parses wrk's report. Any non-2xx/3xx response or socket error fails the
/// run: a benchmark of 403s or resets would measure the wrong thing.
pub fn parse_wrk(out: &str) -> Result<Load, String> {
    if let Some(line) = out.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        return Err(format!("wrk saw errors: {}", line.trim()));
    }
    if let Some(line) = out.lines().find(|l| l.contains("Socket errors")) {
        return Err(format!("wrk saw errors: {}", line.trim()));
    }
    let per_second = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Requests/sec line")?;
    let requests = out
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.contains(" requests in ")
                .then(|| l.split_whitespace().next()?.parse().ok())?
        })
        .ok_or("no `N requests in` line")?;
    let percentile = |label: &str| {
        out.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == label).then(|| duration_us(words.next()?))?
        })
    };
    Ok(Load {
        requests,
        per_second,
        p50_us: percentile("50%"),
        p99_us: percentile("99%"),
    })
}

/// wrk's durations: `412.00us`, `1.23ms`, `2.00s`.
fn duration_us(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix("m") {
        (n, 60e6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// `h2load` arguments: `requests` GETs over `clients` connections with
/// `streams` concurrent streams each, over TLS with ALPN h2.
pub fn h2load_args(url: &str, requests: u64, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-n".into(),
        requests.to_string(),
        "-c".into(),
        "4".into(),
        "-m".into(),
        "16".into(),
        "-t".into(),
        "1".into(),
    ];
    args.extend_from_slice(extra);
    args.push(url.to_string());
    args
}

/// Parses h2load's report; every request must have succeeded over h2.
pub fn parse_h2load(out: &str) -> Result<Load, String> {
    if !out.contains("Application protocol: h2") {
        return Err("h2load did not negotiate h2".into());
    }
    let per_second = out
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("finished in ")?;
            let rate = rest.split(", ").nth(1)?.strip_suffix(" req/s")?;
            rate.trim().parse().ok()
        })
        .ok_or("no `finished in` line")?;
    let requests_line = out
        .lines()
        .find(|l| l.trim().starts_with("requests:"))
        .ok_or("no requests line")?;
    let field = |name: &str| -> Option<u64> {
        requests_line.split(',').find_map(|part| {
            part.trim()
                .strip_suffix(name)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
    };
    let total = field("total").ok_or("no total count")?;
    let succeeded = field("succeeded").ok_or("no succeeded count")?;
    if succeeded != total {
        return Err(format!("h2load: {}", requests_line.trim()));
    }
    let status_2xx = out
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("status codes:")?;
            rest.split(',')
                .find_map(|p| p.trim().strip_suffix(" 2xx")?.parse::<u64>().ok())
        })
        .ok_or("no status codes line")?;
    if status_2xx != total {
        return Err(format!(
            "h2load: {status_2xx} of {total} responses were 2xx"
        ));
    }
    Ok(Load {
        requests: total,
        per_second,
        p50_us: None,
        p99_us: None,
    })
}

/// Runs a tool, returning stdout, or why it failed.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout)
}

/// squid as an explicit forward proxy on loopback, with no cache and no
/// access log: the fairest configuration for a request-rate comparison.
pub struct Squid {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl Squid {
    pub fn start(binary: &Path, dir: &Path, port: u16) -> Result<Squid, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        // squid drops to its own user; it must be able to write here.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .map_err(|e| e.to_string())?;
        let conf = dir.join("squid.conf");
        std::fs::write(&conf, squid_conf(dir, port)).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["-N", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting squid: {e}"))?;
        let mut squid = Squid {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = squid.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
                return Err(format!("squid exited with {status}: {log}"));
            }
            if Instant::now() > deadline {
                return Err("squid did not listen within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(squid)
    }

    /// A wrk script that sends absolute-form requests, as a client
    /// configured with an explicit proxy does.
    pub fn wrk_script(&self, target: &str) -> Result<PathBuf, String> {
        let path = self.dir.join("proxy.lua");
        let host = target
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or(target);
        std::fs::write(
            &path,
            format!("wrk.path = \"{target}\"\nwrk.headers[\"Host\"] = \"{host}\"\n"),
        )
        .map_err(|e| e.to_string())?;
        Ok(path)
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn squid_conf(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "http_port 127.0.0.1:{port}\n\
         http_access allow all\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         access_log none\n\
         cache_store_log none\n\
         cache_log {dir}/cache.log\n\
         pid_filename {dir}/squid.pid\n\
         coredump_dir {dir}\n\
         shutdown_lifetime 0 seconds\n\
         via off\n\
         forwarded_for delete\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 6s test @ http://bench.test:8080/bench
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.00ms  30.00ms   90.00%
    Req/Sec     7.50k   500.00     8.00k    70.00%
  Latency Distribution
     50%  412.00us
     75%    1.50ms
     90%    3.00ms
     99%    1.23ms
  90000 requests in 6.00s, 20.00MB read
Requests/sec:  15000.50
Transfer/sec:      3.33MB
";

    #[test]
    fn wrk_report_gives_rate_count_and_percentiles() {
        let load = parse_wrk(WRK).unwrap();
        assert_eq!(load.requests, 90000);
        assert_eq!(load.per_second, 15000.5);
        assert_eq!(load.p50_us, Some(412.0));
        assert_eq!(load.p99_us, Some(1230.0));
    }

    #[test]
    fn wrk_errors_fail_the_run() {
        let with_403 = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&with_403).unwrap_err().contains("Non-2xx"));
        let with_resets = WRK.replace(
            "Requests/sec",
            "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec",
        );
        assert!(
            parse_wrk(&with_resets)
                .unwrap_err()
                .contains("Socket errors")
        );
        assert!(parse_wrk("unable to connect").is_err());
    }

    #[test]
    fn wrk_durations_in_every_unit() {
        assert_eq!(duration_us("412.00us"), Some(412.0));
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(duration_us("1.00m"), Some(60e6));
        assert_eq!(duration_us("fast"), None);
    }

    const H2LOAD: &str = "starting benchmark...
Application protocol: h2
progress: 10% done

finished in 2.00s, 10000.00 req/s, 1.20MB/s
requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx
";

    #[test]
    fn h2load_report_gives_rate_and_count() {
        let load = parse_h2load(H2LOAD).unwrap();
        assert_eq!(load.requests, 20000);
        assert_eq!(load.per_second, 10000.0);
    }

    #[test]
    fn h2load_failures_or_http1_fail_the_run() {
        let failed = H2LOAD.replace("20000 succeeded, 0 failed", "19990 succeeded, 10 failed");
        assert!(
            parse_h2load(&failed)
                .unwrap_err()
                .contains("19990 succeeded")
        );
        let denied = H2LOAD.replace("20000 2xx, 0 3xx, 0 4xx", "0 2xx, 0 3xx, 20000 4xx");
        assert!(parse_h2load(&denied).unwrap_err().contains("0 of 20000"));
        let http1 = H2LOAD.replace("Application protocol: h2", "Application protocol: http/1.1");
        assert!(parse_h2load(&http1).unwrap_err().contains("h2"));
    }
}
