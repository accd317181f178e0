//! Process metrics read from /proc at scrape time: resident and virtual memory, open and
//! maximum file descriptors, CPU seconds, start time (the standard `process_*` names).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// USER_HZ, the unit of CPU times in /proc/self/stat: 100 on every Linux architecture.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug)]
pub struct ProcessCollector {
    /// Unix time the process started, in seconds.
    pub start_time: f64,
}

#[derive(Debug, Default, PartialEq)]
pub struct ProcStats {
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub cpu_seconds: f64,
    pub open_fds: f64,
    pub max_fds: f64,
}

impl ProcStats {
    /// Reads this process's figures; a figure /proc does not give stays 0.
    pub fn read() -> ProcStats {
        let mut s = ProcStats::default();
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            for line in status.lines() {
                let kib = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<f64>().ok())
                        .map(|v| v * 1024.0)
                };
                if line.starts_with("VmRSS:") {
                    s.resident_bytes = kib(line).unwrap_or(0.0);
                } else if line.starts_with("VmSize:") {
                    s.virtual_bytes = kib(line).unwrap_or(0.0);
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                s.cpu_seconds = (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SEC;
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count() as f64;
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
                s.max_fds = line
                    .split_whitespace()
                    .nth(3)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
            }
        }
        s
    }
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> fmt::Result {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let s = ProcStats::read();
        gauge(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_bytes,
        )?;
        gauge(
            &mut enc,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            s.virtual_bytes,
        )?;
        gauge(
            &mut enc,
            "process_open_fds",
            "Number of open file descriptors",
            s.open_fds,
        )?;
        gauge(
            &mut enc,
            "process_max_fds",
            "Maximum number of open file descriptors",
            s.max_fds,
        )?;
        gauge(
            &mut enc,
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds",
            self.start_time,
        )?;
        let c = ConstCounter::new(s.cpu_seconds);
        let m = enc.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?;
        c.encode(m)
    }
}
