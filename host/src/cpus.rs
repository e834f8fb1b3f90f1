//! Binding worker threads to CPUs (`server.cpu_affinity`).
//!
//! Workers share nothing, so two of them on one CPU only take turns: each
//! runs a full scheduler slice (several milliseconds) while the other's
//! requests wait, which is what a proxy's p99 shows. When the process may
//! use exactly as many CPUs as it has workers (a cpuset container, or
//! `taskset`), giving each worker one of them changes nothing about where
//! the proxy runs except that workers no longer stack. With more CPUs than
//! workers (a quota-limited container on a large host) binding would tie
//! workers to CPUs other processes use, so `auto` leaves them free. It is
//! not the default: on a host shared with busy processes a bound worker
//! cannot move away from one, and its share of connections waits.

use crate::config::CpuAffinity;
use std::sync::{Mutex, OnceLock};

/// The CPUs the process may use, as read before any worker was bound.
static PROCESS: OnceLock<Vec<usize>> = OnceLock::new();

/// The CPU each of `workers` threads is bound to, `None` for none.
pub fn plan(setting: &CpuAffinity, workers: usize) -> Result<Vec<Option<usize>>, String> {
    let allowed = match setting {
        CpuAffinity::Off => return Ok(vec![None; workers]),
        _ => allowed()?,
    };
    let _ = PROCESS.set(allowed.clone());
    match setting {
        CpuAffinity::Cpus(cpus) => match cpus.iter().find(|c| !allowed.contains(c)) {
            Some(cpu) => Err(format!(
                "server.cpu_affinity: CPU {cpu} is not one this process may run on ({})",
                list(&allowed)
            )),
            None => Ok((0..workers).map(|i| Some(cpus[i % cpus.len()])).collect()),
        },
        _ if allowed.len() == workers => Ok(allowed.into_iter().map(Some).collect()),
        _ => Ok(vec![None; workers]),
    }
}

/// `0,2-3` style, as `/proc/*/status` and `taskset` print CPU lists.
fn list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        out.push(match cpus[i] == start {
            true => start.to_string(),
            false => format!("{start}-{}", cpus[i]),
        });
        i += 1;
    }
    out.join(",")
}

/// Where each worker runs: `None` until (unless) it is bound.
#[derive(Default)]
pub struct Placement(Mutex<Vec<Option<usize>>>);

impl Placement {
    /// Starts the record for `plan`'s workers, all unbound so far.
    pub fn planned(&self, plan: &[Option<usize>]) {
        *self.lock() = vec![None; plan.len()];
        if plan.iter().any(Option::is_some) {
            tracing::info!(cpus = ?plan, "binding workers to CPUs (server.cpu_affinity)");
        }
    }

    /// Binds the calling thread, worker `i`, to `cpu` if it has one.
    pub fn bind_worker(&self, i: usize, cpu: Option<usize>) {
        let Some(cpu) = cpu else { return };
        match bind(cpu) {
            Ok(()) => {
                if let Some(slot) = self.lock().get_mut(i) {
                    *slot = Some(cpu);
                }
            }
            Err(e) => tracing::warn!("worker {i}: cannot bind to CPU {cpu}: {e}"),
        }
    }

    /// The CPU of each worker; `None`: the kernel places it.
    pub fn cpus(&self) -> Vec<Option<usize>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<usize>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Gives the calling thread back every CPU the process may use. Threads
/// inherit their creator's binding, so a helper a bound worker starts
/// (the plugin instance thread, the blocking pool) calls this first.
pub fn release() {
    let Some(cpus) = PROCESS.get() else { return };
    if let Err(e) = bind_all(cpus) {
        tracing::warn!("cannot unbind a helper thread from its worker's CPU: {e}");
    }
}

/// Binds the calling thread to `cpu`.
pub fn bind(cpu: usize) -> std::io::Result<()> {
    bind_all(&[cpu])
}

#[cfg(target_os = "linux")]
pub use linux::{allowed, bind_all};

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    /// The CPUs the calling thread may run on, ascending.
    pub fn allowed() -> Result<Vec<usize>, String> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set, and the call
        // writes at most `size_of::<cpu_set_t>()` bytes into it.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Err(format!(
                    "cannot read the CPUs this process may use: {}",
                    std::io::Error::last_os_error()
                ));
            }
            set
        };
        let max = libc::CPU_SETSIZE as usize;
        // SAFETY: CPU_ISSET reads within the set for every index below
        // CPU_SETSIZE.
        Ok((0..max)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect())
    }

    /// Lets the calling thread run on `cpus` only.
    pub fn bind_all(cpus: &[usize]) -> std::io::Result<()> {
        if let Some(cpu) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
            return Err(std::io::Error::other(format!("CPU {cpu} is out of range")));
        }
        // SAFETY: as above; every CPU is below CPU_SETSIZE, and pid 0 is
        // the calling thread.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        match rc {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// Elsewhere every CPU counts as allowed, and binding is not supported.
#[cfg(not(target_os = "linux"))]
pub fn allowed() -> Result<Vec<usize>, String> {
    Ok((0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
}

#[cfg(not(target_os = "linux"))]
pub fn bind_all(_cpus: &[usize]) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "binding threads to CPUs is supported on Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_print_as_ranges() {
        assert_eq!(list(&[0]), "0");
        assert_eq!(list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(list(&[]), "");
    }

    #[test]
    fn auto_binds_only_when_workers_match_the_allowed_cpus() {
        let allowed = allowed().expect("affinity");
        let bound = plan(&CpuAffinity::Auto, allowed.len()).expect("plan");
        assert_eq!(bound, allowed.iter().copied().map(Some).collect::<Vec<_>>());
        let free = plan(&CpuAffinity::Auto, allowed.len() + 1).expect("plan");
        assert!(free.iter().all(Option::is_none), "{free:?}");
        assert_eq!(plan(&CpuAffinity::Off, 3).expect("plan"), vec![None; 3]);
    }

    #[test]
    fn a_list_is_reused_in_turn_and_checked_against_the_allowed_cpus() {
        let first = allowed().expect("affinity")[0];
        let planned = plan(&CpuAffinity::Cpus(vec![first]), 3).expect("plan");
        assert_eq!(planned, vec![Some(first); 3]);
        let err = plan(&CpuAffinity::Cpus(vec![first, 1023]), 2).expect_err("1023 is not allowed");
        assert!(
            err.contains("CPU 1023") && err.contains("server.cpu_affinity"),
            "{err}"
        );
    }
}
