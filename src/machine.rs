//! What box this is, so benchmark numbers can be compared across devices, and the
//! process's peak memory.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub arch: &'static str,
    pub os: &'static str,
    /// CPU or board name as the system reports it.
    pub cpu: String,
    pub logical_cpus: usize,
    pub memory_mib: Option<u64>,
}

impl Machine {
    pub fn detect() -> Machine {
        Machine {
            arch: std::env::consts::ARCH,
            os: std::env::consts::OS,
            cpu: cpu_name().unwrap_or_else(|| "unknown".into()),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: proc_kib("/proc/meminfo", "MemTotal:").map(|k| k / 1024),
        }
    }
}

fn cpu_name() -> Option<String> {
    // Boards (Raspberry Pi, Jetson) name themselves in the device tree; x86 in cpuinfo.
    if let Ok(model) = std::fs::read_to_string("/proc/device-tree/model") {
        let model = model.trim_end_matches('\0').trim();
        if !model.is_empty() {
            return Some(model.to_string());
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    for key in ["model name", "Hardware", "cpu model", "CPU part"] {
        if let Some(line) = cpuinfo.lines().find(|l| l.starts_with(key))
            && let Some((_, v)) = line.split_once(':')
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:").map(|k| k * 1024)
}

/// Resets the peak to the current RSS (Linux ≥ 4.0), so that each benchmark
/// configuration reports its own peak. Returns false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Now as an RFC 3339 UTC timestamp, without a date-time dependency.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
