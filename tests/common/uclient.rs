//! coturn's `turnutils_uclient` as a client nobody here wrote: run it and read its totals.

use std::process::Command;

/// What one run of `turnutils_uclient` reported.
pub struct Totals {
    /// Sessions the client ran (with RTP/RTCP pairs, each counts). Its progress lines print
    /// the sessions still running (`msz=`), which only falls as sessions finish, so the
    /// largest of them is the number started.
    pub sessions: u64,
    pub sent: u64,
    pub received: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub lost: u64,
    /// Everything the client printed, for assertion messages.
    pub text: String,
}

/// Runs `turnutils_uclient ARGS` (bounded by 60 s) and parses its summary.
pub fn run(args: &[&str]) -> Totals {
    run_with(&[], args)
}

/// The same, inside the named network namespace.
#[allow(dead_code)]
pub fn run_in(netns: &str, args: &[&str]) -> Totals {
    run_with(&["ip", "netns", "exec", netns], args)
}

fn run_with(prefix: &[&str], args: &[&str]) -> Totals {
    let out = Command::new(prefix.first().copied().unwrap_or("timeout"))
        .args(prefix.iter().skip(1))
        .args(if prefix.is_empty() { &[][..] } else { &["timeout"][..] })
        .arg("60")
        .arg("turnutils_uclient")
        .args(args)
        .output()
        .expect("turnutils_uclient missing: install Debian's coturn package (bash .ci/deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let last = |key: &str| {
        numbers_after(&text, key)
            .last()
            .unwrap_or_else(|| panic!("{key} missing in uclient output:\n{text}"))
    };
    let sessions = numbers_after(&text, "msz=")
        .max()
        .unwrap_or_else(|| panic!("msz= missing in uclient output:\n{text}"));
    Totals {
        sessions,
        sent: last("tot_send_msgs="),
        received: last("tot_recv_msgs="),
        sent_bytes: last("tot_send_bytes"),
        received_bytes: last("tot_recv_bytes"),
        lost: last("Total lost packets"),
        text,
    }
}

/// The number after each occurrence of `key` (skipping spaces, `~` and `=`).
fn numbers_after<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = u64> + 'a {
    text.match_indices(key).filter_map(move |(i, _)| {
        text[i + key.len()..]
            .trim_start_matches([' ', '~', '='])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    })
}
