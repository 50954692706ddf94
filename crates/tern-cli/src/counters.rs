//! What a stretch of work cost this machine, from the best source it allows: package energy
//! from RAPL (`/sys/class/powercap`), retired instructions from `perf_event_open`, and always
//! the process's CPU time. Virtual machines usually expose neither RAPL nor a PMU; the
//! measurement then says so instead of inventing joules.

use std::path::{Path, PathBuf};

/// User + system CPU seconds of this process, all threads (`getrusage`).
pub fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain integers, for which all-zero bytes are a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` into the struct we own; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The package-energy counters of RAPL (Intel `intel-rapl:N`, AMD through the same powercap
/// driver): one per package, each with its wrap-around range.
pub struct Rapl {
    zones: Vec<(PathBuf, u64)>,
}

impl Rapl {
    /// The package zones under `root` (normally `/sys/class/powercap`), or why there are none.
    pub fn open(root: &Path) -> Result<Rapl, String> {
        let dir = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut zones = Vec::new();
        for entry in dir.flatten() {
            let p = entry.path();
            let name = std::fs::read_to_string(p.join("name")).unwrap_or_default();
            // Top-level zones only (`intel-rapl:0`, not the `intel-rapl:0:0` core subzone).
            let file = entry.file_name().to_string_lossy().into_owned();
            if !name.trim().starts_with("package") || file.matches(':').count() != 1 {
                continue;
            }
            let range = std::fs::read_to_string(p.join("max_energy_range_uj"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX);
            read_uj(&p).map_err(|e| format!("{}: {e}", p.join("energy_uj").display()))?;
            zones.push((p, range));
        }
        if zones.is_empty() {
            return Err(format!("no RAPL package zone under {}", root.display()));
        }
        zones.sort();
        Ok(Rapl { zones })
    }

    /// Microjoules per zone now.
    pub fn read(&self) -> Vec<u64> {
        self.zones
            .iter()
            .map(|(p, _)| read_uj(p).unwrap_or(0))
            .collect()
    }

    /// Joules spent between two [`Rapl::read`]s (all packages, one wrap-around allowed).
    pub fn joules(&self, before: &[u64], after: &[u64]) -> f64 {
        let uj: u64 = self
            .zones
            .iter()
            .zip(before.iter().zip(after))
            .map(|((_, range), (&b, &a))| {
                if a >= b {
                    a - b
                } else {
                    range.saturating_sub(b) + a
                }
            })
            .sum();
        uj as f64 * 1e-6
    }
}

fn read_uj(zone: &Path) -> Result<u64, String> {
    let s = std::fs::read_to_string(zone.join("energy_uj")).map_err(|e| e.to_string())?;
    s.trim().parse().map_err(|e| format!("{e}"))
}

/// `struct perf_event_attr` up to `config1` (PERF_ATTR_SIZE_VER0, 64 bytes; the kernel
/// accepts any published size and zero-extends).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_HARDWARE: u32 = 0;
#[cfg(test)]
const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
#[cfg(test)]
const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
const FLAG_EXCLUDE_HV: u64 = 1 << 6;

/// One open perf counter (a file descriptor), read as a running total.
pub struct PerfCounter {
    fds: Vec<i32>,
}

impl PerfCounter {
    /// Instructions retired on every CPU (system-wide, like `perf stat -a`: the pool's
    /// threads are long-lived, so a per-process inherited counter would not see them until
    /// they exit). Needs a PMU and CAP_PERFMON or `perf_event_paranoid` <= 0.
    pub fn instructions_all_cpus() -> Result<PerfCounter, String> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let fds = (0..cpus)
            .map(|cpu| {
                open(
                    PERF_TYPE_HARDWARE,
                    PERF_COUNT_HW_INSTRUCTIONS,
                    -1,
                    cpu as i32,
                )
            })
            .collect::<Result<Vec<_>, _>>();
        fds.map(|fds| PerfCounter { fds })
    }

    /// This thread's task clock in nanoseconds (a software event every kernel has; it checks
    /// the same system call path where no PMU exists).
    #[cfg(test)]
    pub fn task_clock_self() -> Result<PerfCounter, String> {
        Ok(PerfCounter {
            fds: vec![open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK, 0, -1)?],
        })
    }

    /// The sum over the counter's CPUs.
    pub fn read(&self) -> u64 {
        self.fds
            .iter()
            .map(|&fd| {
                let mut v = 0u64;
                // SAFETY: reading 8 bytes into a u64 we own from a perf fd we opened.
                let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
                if n == 8 {
                    v
                } else {
                    0
                }
            })
            .sum()
    }
}

impl Drop for PerfCounter {
    fn drop(&mut self) {
        for &fd in &self.fds {
            // SAFETY: closing descriptors this value owns, once.
            unsafe { libc::close(fd) };
        }
    }
}

fn open(kind: u32, config: u64, pid: i32, cpu: i32) -> Result<i32, String> {
    let attr = PerfEventAttr {
        kind,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config,
        flags: FLAG_EXCLUDE_HV,
        ..Default::default()
    };
    // SAFETY: perf_event_open reads `size` bytes of the attr we own; the returned fd (or -1)
    // is checked below. No group, no flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            pid,
            cpu,
            -1i32,
            0u64,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => {
                " (no hardware PMU: usual in a virtual machine)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (needs CAP_PERFMON or kernel.perf_event_paranoid <= 0)"
            }
            _ => "",
        };
        return Err(format!("perf_event_open: {e}{hint}"));
    }
    Ok(fd as i32)
}

/// Energy counters opened once for a run: what this machine lets us read.
pub struct Meter {
    rapl: Result<Rapl, String>,
    instructions: Result<PerfCounter, String>,
}

/// A reading of every available counter.
pub struct Reading {
    cpu_s: f64,
    rapl_uj: Option<Vec<u64>>,
    instructions: Option<u64>,
}

/// What a stretch of work cost.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub cpu_s: f64,
    pub joules: Option<f64>,
    pub instructions: Option<u64>,
}

impl Cost {
    pub fn add(&mut self, c: &Cost) {
        self.cpu_s += c.cpu_s;
        self.joules = self.joules.zip(c.joules).map(|(a, b)| a + b).or(c.joules);
        self.instructions = match (self.instructions, c.instructions) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// The cost of one of `n` units of work.
    pub fn per(&self, n: usize) -> Cost {
        let n = n.max(1) as f64;
        Cost {
            cpu_s: self.cpu_s / n,
            joules: self.joules.map(|j| j / n),
            instructions: self.instructions.map(|i| (i as f64 / n).round() as u64),
        }
    }
}

impl Meter {
    pub fn open() -> Meter {
        Meter {
            rapl: Rapl::open(Path::new("/sys/class/powercap")),
            instructions: PerfCounter::instructions_all_cpus(),
        }
    }

    pub fn read(&self) -> Reading {
        Reading {
            cpu_s: cpu_seconds(),
            rapl_uj: self.rapl.as_ref().ok().map(Rapl::read),
            instructions: self.instructions.as_ref().ok().map(PerfCounter::read),
        }
    }

    pub fn since(&self, before: &Reading) -> Cost {
        let now = self.read();
        Cost {
            cpu_s: now.cpu_s - before.cpu_s,
            joules: match (&self.rapl, &before.rapl_uj, &now.rapl_uj) {
                (Ok(r), Some(b), Some(a)) => Some(r.joules(b, a)),
                _ => None,
            },
            instructions: now
                .instructions
                .zip(before.instructions)
                .map(|(a, b)| a - b),
        }
    }

    /// Which sources this machine gives, and why the others are missing.
    pub fn sources(&self) -> serde_json::Value {
        let why = |r: Result<(), &String>| match r {
            Ok(()) => serde_json::Value::from("ok"),
            Err(e) => e.clone().into(),
        };
        serde_json::json!({
            "rapl": why(self.rapl.as_ref().map(|_| ())),
            "instructions": why(self.instructions.as_ref().map(|_| ())),
            "cpu_time": "ok",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(ms: u64) -> u64 {
        let t = std::time::Instant::now();
        let mut x = 1u64;
        while t.elapsed().as_millis() < ms as u128 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    }

    /// The system call wrapper and the attr layout, through the software task clock that
    /// every kernel offers (hardware counters need a PMU this test cannot count on).
    #[test]
    fn perf_task_clock_counts_this_threads_work() {
        let c = PerfCounter::task_clock_self().expect("perf_event_open(task-clock)");
        let a = c.read();
        std::hint::black_box(spin(30));
        let ns = c.read() - a;
        assert!(
            (15_000_000..2_000_000_000).contains(&ns),
            "{ns} ns for 30 ms of spinning"
        );
    }

    #[test]
    fn cpu_seconds_advance_with_work() {
        let a = cpu_seconds();
        std::hint::black_box(spin(40));
        let d = cpu_seconds() - a;
        assert!((0.02..2.0).contains(&d), "{d} s");
    }

    /// RAPL zones from a fake powercap tree: package zones only, wrap-around handled.
    #[test]
    fn rapl_reads_package_zones_and_wraps() {
        let dir = std::env::temp_dir().join(format!("tern-rapl-{}", std::process::id()));
        let zone = |name: &str, label: &str, uj: u64| {
            let z = dir.join(name);
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("name"), format!("{label}\n")).unwrap();
            std::fs::write(z.join("energy_uj"), format!("{uj}\n")).unwrap();
            std::fs::write(z.join("max_energy_range_uj"), "1000000\n").unwrap();
        };
        zone("intel-rapl:0", "package-0", 999_000);
        zone("intel-rapl:0:0", "core", 5);
        zone("intel-rapl:1", "dram", 7);
        let r = Rapl::open(&dir).unwrap();
        assert_eq!(r.zones.len(), 1);
        let before = r.read();
        assert_eq!(before, vec![999_000]);
        std::fs::write(dir.join("intel-rapl:0/energy_uj"), "2000\n").unwrap();
        let j = r.joules(&before, &r.read());
        assert!((j - 0.003).abs() < 1e-12, "{j}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(Rapl::open(&dir).is_err());
    }
}
