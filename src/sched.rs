//! A short scheduler slice for the thread that serves reads.
//!
//! On Linux's EEVDF scheduler (6.6 and later) a thread that wakes up waits for the
//! running thread's slice to end (0.75 ms times 1 + log2 of the CPUs by default) unless
//! its own slice is shorter (custom slices: 6.12 and later). meterd's reads runtime
//! ([`crate::app`]) serves balance, usage and registry reads on a thread of its own; with
//! a short slice it takes the CPU from the ingest worker or RocksDB's background threads
//! as soon as a read arrives, as long as it has not used more than its fair share. The
//! share is unchanged (the nice value, hence the weight, is kept), so a flood of reads
//! still leaves ingest its half. Kernels without custom slices ignore the value.

use std::io;
use std::time::Duration;

/// Slice of the reads thread (the smallest Linux accepts is 100 µs).
pub const READS_SLICE: Duration = Duration::from_micros(100);

/// Sets the calling thread's scheduler slice to `slice`, keeping its policy
/// (`SCHED_OTHER`) and nice value. Linux only; elsewhere it does nothing.
pub fn shorten_slice(slice: Duration) -> io::Result<()> {
    imp::set_slice(slice)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::time::Duration;

    /// `struct sched_attr` as of Linux 3.14 (`SCHED_ATTR_SIZE_VER0`, 48 bytes); the
    /// kernel accepts it and leaves the later fields (utilization clamps) alone.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
    }

    pub fn set_slice(slice: Duration) -> io::Result<()> {
        // `sched_setattr` sets the nice value too, so the current one is read first; -1
        // is a valid nice value, so errors are told apart by errno.
        // SAFETY: plain system calls on the calling thread (tid 0), with a fully
        // initialised attribute struct that outlives the call.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                return Err(io::Error::last_os_error());
            }
            let attr = SchedAttr {
                size: std::mem::size_of::<SchedAttr>() as u32,
                sched_policy: libc::SCHED_OTHER as u32,
                sched_flags: 0,
                sched_nice: nice,
                sched_priority: 0,
                sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
                sched_deadline: 0,
                sched_period: 0,
            };
            let tid: libc::pid_t = 0;
            let flags: libc::c_uint = 0;
            if libc::syscall(
                libc::SYS_sched_setattr,
                tid,
                &attr as *const SchedAttr,
                flags,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::time::Duration;

    pub fn set_slice(_slice: Duration) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slice in `/proc/self/task/<tid>/sched`, where the kernel has custom slices
    /// (6.12 and later) and shows them (CONFIG_SCHED_DEBUG).
    fn shown_slice() -> Option<u64> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut v = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        if (v.next()?, v.next()?) < (6, 12) {
            return None;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).ok()?;
        let line = s.lines().find(|l| l.starts_with("se.slice"))?;
        line.rsplit(' ').next()?.trim().parse().ok()
    }

    #[test]
    fn shortening_the_slice_keeps_policy_and_nice() {
        std::thread::spawn(|| {
            // A nice value of 5 first, to see that it is kept.
            // SAFETY: setpriority and getpriority on the calling thread.
            let before = unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 5);
                libc::getpriority(libc::PRIO_PROCESS, 0)
            };
            shorten_slice(READS_SLICE).expect("sched_setattr for SCHED_OTHER");
            // SAFETY: plain queries of the calling thread.
            let (after, policy) = unsafe {
                (
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                    libc::sched_getscheduler(0),
                )
            };
            assert_eq!(after, before);
            assert_eq!(policy, libc::SCHED_OTHER);
            if let Some(v) = shown_slice() {
                assert_eq!(v, READS_SLICE.as_nanos() as u64);
            }
        })
        .join()
        .unwrap();
    }
}
