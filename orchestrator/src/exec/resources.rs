//! The local machine's resources and their reservation by running stages.

use crate::study::Resources;

/// What the local executor may hand out.
#[derive(Debug, Clone)]
pub struct Pool {
    free_gpus: Vec<String>,
    total_gpus: usize,
    free_cpus: u32,
    total_cpus: u32,
    free_memory: u64,
    total_memory: u64,
}

/// What one running stage holds.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    /// GPU device ids (as CUDA_VISIBLE_DEVICES names them).
    pub gpus: Vec<String>,
    cpus: u32,
    memory: u64,
}

impl Pool {
    /// A pool of the given GPUs, CPU cores and memory bytes (0 = not tracked).
    pub fn new(gpus: Vec<String>, cpus: u32, memory: u64) -> Pool {
        Pool {
            total_gpus: gpus.len(),
            free_gpus: gpus,
            free_cpus: cpus.max(1),
            total_cpus: cpus.max(1),
            free_memory: memory,
            total_memory: memory,
        }
    }

    /// Why `need` can never fit on this machine, if it cannot.
    pub fn never_fits(&self, need: &Resources) -> Option<String> {
        if need.gpus as usize > self.total_gpus {
            return Some(format!(
                "needs {} GPU(s) but this machine offers {} (see `--gpus` and CUDA_VISIBLE_DEVICES)",
                need.gpus, self.total_gpus
            ));
        }
        if need.memory > 0 && self.total_memory > 0 && need.memory > self.total_memory {
            return Some(format!(
                "needs {} of memory but this machine has {}",
                human_bytes(need.memory),
                human_bytes(self.total_memory)
            ));
        }
        None
    }

    /// Reserves `need` if it fits now. CPU requests above the machine's total are capped to it, so a stage
    /// asking for more cores than exist still runs (alone).
    pub fn try_reserve(&mut self, need: &Resources) -> Option<Reservation> {
        let cpus = need.cpus.clamp(1, self.total_cpus);
        let memory = if self.total_memory == 0 { 0 } else { need.memory };
        if need.gpus as usize > self.free_gpus.len() || cpus > self.free_cpus || memory > self.free_memory {
            return None;
        }
        self.free_cpus -= cpus;
        self.free_memory -= memory;
        let gpus = self.free_gpus.drain(..need.gpus as usize).collect();
        Some(Reservation { gpus, cpus, memory })
    }

    /// Returns a reservation.
    pub fn release(&mut self, r: Reservation) {
        self.free_cpus += r.cpus;
        self.free_memory += r.memory;
        self.free_gpus.extend(r.gpus);
        self.free_gpus.sort();
    }
}

/// GPUs of this machine: `CUDA_VISIBLE_DEVICES` if set, else the devices `nvidia-smi -L` lists, else none.
pub fn detect_gpus() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "-1").map(String::from).collect();
    }
    match std::process::Command::new("nvidia-smi").arg("-L").output() {
        Ok(out) if out.status.success() => {
            let n = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("GPU ")).count();
            (0..n).map(|i| i.to_string()).collect()
        }
        _ => Vec::new(),
    }
}

/// Total memory from /proc/meminfo, or 0 if unknown.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_and_releases() {
        let mut pool = Pool::new(vec!["0".into(), "1".into()], 4, 1000);
        let need = |gpus, cpus, memory| Resources { gpus, cpus, memory, timeout: None };
        let a = pool.try_reserve(&need(1, 2, 600)).unwrap();
        assert_eq!(a.gpus, ["0"]);
        assert!(pool.try_reserve(&need(0, 1, 600)).is_none(), "memory is taken");
        let b = pool.try_reserve(&need(1, 2, 100)).unwrap();
        assert_eq!(b.gpus, ["1"]);
        assert!(pool.try_reserve(&need(1, 0, 0)).is_none(), "no GPU left");
        pool.release(a);
        assert_eq!(pool.try_reserve(&need(1, 1, 0)).unwrap().gpus, ["0"]);
        assert!(pool.never_fits(&need(3, 1, 0)).is_some());
        assert!(pool.never_fits(&need(0, 64, 0)).is_none(), "cpus are capped, not refused");
        assert!(pool.try_reserve(&need(0, 64, 0)).is_none(), "but wait for all cores");
    }
}
