//! The command line and config loading, as a user meets them: exit codes, messages with
//! `path:line:col`, `--help` everywhere, and every shipped config file loading.

mod common;

use std::process::{Command, Output};

use common::BIN;

fn turnd(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TURND_CONFIG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_and_help_on_every_subcommand() {
    let v = turnd(&["--version"]);
    assert!(v.status.success());
    let version = stdout(&v);
    assert!(
        version.starts_with(&format!("turnd {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["help", "serve"],
    ] {
        let o = turnd(args);
        assert!(o.status.success(), "{args:?}");
        assert!(stdout(&o).contains("Usage:"), "{args:?}: {}", stdout(&o));
        assert!(stdout(&o).contains("--config"), "{args:?} documents --config");
    }
    // Every positional argument says what it is.
    for (args, needle) in [
        (&["user", "add", "--help"][..], "The user name clients send"),
        (&["user", "remove", "--help"], "The user to remove"),
        (&["user", "passwd", "--help"], "The user whose password changes"),
        (&["disconnect", "--help"], "The user whose allocations end"),
    ] {
        let o = turnd(args);
        assert!(stdout(&o).contains(needle), "{args:?}: {}", stdout(&o));
    }
}

#[test]
fn bad_usage_exits_2_with_a_message() {
    for args in [&[][..], &["frobnicate"], &["serve", "--bogus"], &["--config"]] {
        let o = turnd(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!stderr(&o).is_empty(), "{args:?} explains itself");
    }
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let o = turnd(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        assert!(stdout(&o).contains("[[listen]]"), "prints the effective config");
        n += 1;
    }
    assert!(n >= 1);
}

/// Writes `text` to a config file, runs check-config on it, and returns (line, col, message).
fn config_error(text: &str) -> (usize, usize, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    for cmd in ["check-config", "serve"] {
        let o = turnd(&[cmd, "--config", p]);
        assert_eq!(o.status.code(), Some(1), "{cmd} on {text:?}");
        let err = stderr(&o);
        let rest = err
            .strip_prefix(&format!("{p}:"))
            .unwrap_or_else(|| panic!("{cmd}: error does not start with the path: {err}"));
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().unwrap().parse().expect("line number");
        let col: usize = parts.next().unwrap().parse().expect("column number");
        let msg = parts.next().unwrap().trim().to_string();
        if cmd == "serve" {
            return (line, col, msg);
        }
    }
    unreachable!()
}

#[test]
fn bad_configs_report_path_line_col_and_exit_1() {
    let listen = "[[listen]]\naddress = \"127.0.0.1:3478\"\n";
    let cases: &[(String, usize, &str)] = &[
        (format!("{listen}colour = \"blue\"\n"), 3, "unknown field `colour`"),
        (
            "[[listen]]\naddress = \"not-an-address\"\n".into(),
            2,
            "invalid listen address",
        ),
        (
            "[[listen]]\naddress = \"127.0.0.1:70000\"\n".into(),
            2,
            "port 70000 is out of range",
        ),
        (
            "[[listen]]\naddress = \":::3478\"\n".into(),
            2,
            "IPv6 addresses need brackets",
        ),
        ("threads = 1\nlisten = []\n".into(), 2, "listen is empty"),
        (
            format!("{listen}protocols = [\"udp\", \"sctp\"]\n"),
            3,
            "unknown variant `sctp`",
        ),
        (format!("{listen}protocols = []\n"), 3, "protocols is empty"),
        (format!("{listen}idle_timeout = \"soon\"\n"), 3, "invalid duration"),
        (
            format!("{listen}max_connections = 0\n"),
            3,
            "max_connections must be between",
        ),
        ("threads = -1\n".into(), 1, "threads must be between"),
        ("[log]\nformat = \"xml\"\n".into(), 2, "unknown variant `xml`"),
        ("[log]\nlevel = \"=\"\n".into(), 2, "invalid log level"),
        (
            "[log]\nlevel = \"verbose\"\n".into(),
            2,
            "unknown level \"verbose\": use one of off, error, warn, info, debug, trace",
        ),
        ("[log]\nlevel = \"warnn\"\n".into(), 2, "invalid log level \"warnn\""),
        ("software = \"\"\n".into(), 1, "software must be"),
        ("this is not toml\n".into(), 1, ""),
        (format!("{listen}{listen}"), 1, "appears twice"),
        (
            format!("{listen}protocols = [\"tls\"]\n"),
            1,
            "there is no [tls] section",
        ),
        (
            "[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n".into(),
            1,
            "no [[listen]] has \"tls\"",
        ),
        (format!("{listen}protocols = [\"tcp\", \"tls\"]\n"), 3, "both TCP"),
        ("shutdown_grace = \"forever\"\n".into(), 1, "invalid duration"),
        ("server_name = \"turn example\"\n".into(), 1, "is not a DNS name"),
        ("[metrics]\nlisten = \"on\"\n".into(), 2, "or \"off\""),
    ];
    for (text, line, msg) in cases {
        let (l, _c, m) = config_error(text);
        assert_eq!(l, *line, "line for {text:?}: {m}");
        assert!(m.contains(msg), "message for {text:?}: {m}");
    }
}

#[test]
fn column_points_at_the_offending_value() {
    let (line, col, _) = config_error("[[listen]]\naddress    =   \"bogus\"\n");
    assert_eq!((line, col), (2, 16));
}

#[test]
fn metrics_default_to_loopback_in_every_config_and_off_turns_them_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let effective = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let o = turnd(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let listen = |out: &str| {
        let section = out.split("[metrics]").nth(1).expect("a [metrics] section");
        section.lines().find(|l| l.starts_with("listen")).unwrap().to_string()
    };
    assert_eq!(listen(&effective("realm = \"x\"\n")), "listen = \"127.0.0.1:9641\"");
    assert_eq!(listen(&effective("[metrics]\nlisten = \"off\"\n")), "listen = \"off\"");
    assert_eq!(
        listen(&effective("[metrics]\nlisten = \"[::1]:9000\"\n")),
        "listen = \"[::1]:9000\""
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let o = turnd(&["check-config", "--config", "/nonexistent/turnd.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/turnd.toml: cannot read config file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn lookup_uses_turnd_config_then_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(&path, "threads = 3\n[[listen]]\naddress = \"127.0.0.1:3999\"\n").unwrap();
    let o = Command::new(BIN)
        .arg("check-config")
        .env("TURND_CONFIG", &path)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("threads = 3") && stdout(&o).contains("127.0.0.1:3999"),
        "{}",
        stdout(&o)
    );

    // --config wins over $TURND_CONFIG.
    let other = dir.path().join("flag.toml");
    std::fs::write(&other, "threads = 5\n").unwrap();
    let o = Command::new(BIN)
        .args(["check-config", "--config", other.to_str().unwrap()])
        .env("TURND_CONFIG", &path)
        .output()
        .unwrap();
    assert!(stdout(&o).contains("threads = 5"), "{}", stdout(&o));

    // Nothing anywhere (this machine has no /etc/turnd/turnd.toml): the embedded defaults.
    if !std::path::Path::new("/etc/turnd/turnd.toml").exists() {
        let o = turnd(&["check-config"]);
        assert!(o.status.success());
        let out = stdout(&o);
        assert!(
            out.contains("<embedded>") && out.contains("0.0.0.0:3478") && out.contains("[::]:3478"),
            "{out}"
        );
    }
}

#[test]
fn a_port_in_use_is_a_clear_start_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("threads = 1\n[[listen]]\naddress = \"127.0.0.1:{port}\"\nprotocols = [\"udp\"]\n[metrics]\nlisten = \"off\"\n"),
    )
    .unwrap();
    let o = turnd(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("cannot listen on udp 127.0.0.1:{port}")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_second_turnd_on_the_same_address_fails_to_start_whatever_threads_is() {
    let first = common::Turnd::start(
        "threads = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"udp\"]\n\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"tcp\"]\n",
    );
    for (transport, addr) in [("udp", first.udp[0]), ("tcp", first.tcp[0])] {
        for threads in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            let cfg = format!(
                "threads = {threads}\n[[listen]]\naddress = \"{addr}\"\nprotocols = [\"{transport}\"]\n[metrics]\nlisten = \"off\"\n"
            );
            std::fs::write(&path, common::isolate(&cfg, dir.path())).unwrap();
            let o = turnd(&["serve", "--config", path.to_str().unwrap()]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "threads = {threads}, {transport}: {err}");
            assert!(
                err.contains(&format!("cannot listen on {transport} {addr}")) && err.contains("in use"),
                "threads = {threads}: {err}"
            );
        }
    }
}

#[test]
fn log_format_json_and_level_with_rust_log_override() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "threads = 1\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"udp\"]\n[metrics]\nlisten = \"off\"\n[log]\nlevel = \"warn\"\nformat = \"json\"\n",
    )
    .unwrap();
    // Runs the server until it has printed `until`, stops it, and returns all it printed.
    let run = |rust_log: Option<&str>, until: &str| {
        use std::io::BufRead;
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG");
        if let Some(v) = rust_log {
            cmd.env("RUST_LOG", v);
        }
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut out = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            out.push_str(&line);
            out.push('\n');
            if line.contains(until) {
                break;
            }
        }
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        for line in lines.map_while(Result::ok) {
            out.push_str(&line);
            out.push('\n');
        }
        let _ = child.wait();
        out
    };
    // level = "warn": the no-credentials warning, as JSON, and no info lines.
    let warn = run(None, "serving STUN only");
    let lines: Vec<serde_json::Value> = warn
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.iter().any(|l| l["level"] == "WARN"), "{warn}");
    assert!(lines.iter().all(|l| l["level"] != "INFO"), "{warn}");
    // RUST_LOG overrides the configured level.
    let info = run(Some("info"), "turnd ready");
    assert!(
        info.lines()
            .any(|l| l.contains("\"listening\"") || l.contains("listening")),
        "{info}"
    );
    assert!(
        info.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{info}"
    );
}
