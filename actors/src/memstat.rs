//! Resident memory and page-fault counts of this process, read from `/proc` (Linux and
//! Android; `None` elsewhere): what a node reports when it stops, so the effect of a memory
//! budget and of prefetching can be seen.

/// A snapshot of the process's memory counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStat {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
}

impl MemStat {
    pub fn now() -> Option<MemStat> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start at ") ".
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // minflt and majflt are fields 10 and 12 of /proc/self/stat (1-based), i.e. 7 and 9 here.
        Some(MemStat {
            rss_kib: field("VmRSS:")?,
            peak_rss_kib: field("VmHWM:")?,
            minor_faults: f.get(7)?.parse().ok()?,
            major_faults: f.get(9)?.parse().ok()?,
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "resident {:.1} MiB (peak {:.1} MiB), page faults {} minor / {} major",
            self.rss_kib as f64 / 1024.0,
            self.peak_rss_kib as f64 / 1024.0,
            self.minor_faults,
            self.major_faults
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_process() {
        let m = super::MemStat::now().unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib && m.minor_faults > 0);
    }
}
