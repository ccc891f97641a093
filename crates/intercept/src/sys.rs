//! The fenced module for what needs `unsafe`: two calls, `madvise` and glibc's `malloc_trim`,
//! each with its safety argument.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

/// One mapping of `/proc/self/smaps`.
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    /// Pages written since mapped (copy-on-write), resident (`Anonymous:`) or swapped out
    /// (`Swap:`); an unreadable count counts as written.
    written_kb: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or("").to_string();
            let path = fields.nth(3).unwrap_or("").to_string();
            out.push(Mapping { start, end, perms, path, written_kb: 0 });
        } else if (first == "Anonymous:" || first == "Swap:")
            && let Some(m) = out.last_mut()
        {
            let kb = fields.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            m.written_kb = m.written_kb.saturating_add(kb);
        }
    }
    out
}

/// Drops this process's page-table entries for the read-only, never-written parts of its own
/// executable and of the shared libraries it loaded (libc, libm, the loader: code, read-only
/// data, unwind tables): what start-up touched (argument and configuration parsing, the first
/// TLS handshake) stops counting as resident, and what the request path needs faults back in
/// from the page cache on first use. Returns the bytes released from the mappings (not all of
/// them were resident).
///
/// Why: code pages stay mapped once touched, and start-up touches a lot of code it never
/// runs again; for a proxy beside every workload that is most of its resident memory.
pub fn release_startup_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for m in mappings(&smaps) {
        // Files only: not the stack, heap, vDSO or anonymous memory (no path or `[name]`), nor
        // device or memfd mappings. The executable and the libraries alike: after a release, an
        // idle sidecar faults back ~0.4 MiB of libc's 1.5 MiB (each fault maps the 64 KiB
        // around it, so what start-up touched stays otherwise).
        let file = m.path.starts_with('/') && !m.path.starts_with("/dev/") && !m.path.starts_with("/memfd:");
        if !file || !(m.perms == "r-xp" || m.perms == "r--p") || m.written_kb != 0 {
            continue;
        }
        let Some(addr) = NonNull::new(m.start as *mut c_void) else { continue };
        let len = m.end - m.start;
        // SAFETY: the range is exactly one mapping of a file (this process's executable or a
        // library it loaded) that is private, not writable and holds no anonymous
        // (copy-on-write) page, resident or swapped out, so every byte in it equals the
        // file's. MADV_DONTNEED drops the page-table entries; the next access faults the same
        // bytes back in from the file, for any thread, so a reference into these pages reads
        // what it read before. The RELRO segments, which the dynamic loader wrote before
        // making them read-only, hold anonymous pages and are skipped above.
        let r = unsafe { nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) };
        if r.is_ok() {
            released += len;
        }
    }
    Ok(released)
}

/// Hands the free memory inside the allocator's heaps back to the kernel (glibc's
/// `malloc_trim(0)`: every arena, whole free pages inside it as well as at its top). Returns
/// whether any was released. Elsewhere than glibc: nothing, `false`.
///
/// Why: `free` gives pages back only from the top of the main heap, above 128 KiB; what
/// start-up and a configuration change allocated and freed (YAML trees, compiled tables being
/// replaced, the TLS set-up) stays resident in each thread's arena until reused. For a proxy
/// beside every workload that is a share of its resident memory worth the call, made where the
/// code pages are released (once serving, and after each change has settled).
pub fn release_free_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` has no preconditions: it takes each arena's lock as `malloc`
        // and `free` do (any thread may allocate meanwhile) and returns to the kernel only pages
        // that lie wholly inside free chunks, with `MADV_DONTNEED` or by shrinking the heap's
        // top; no allocated block moves or changes. It is glibc's, and this is glibc
        // (`target_env = "gnu"`), which is the allocator in use: the workspace sets no global
        // allocator.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// This process's resident set, KiB.
    fn rss() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap()
    }

    #[test]
    fn releasing_startup_pages_lowers_resident_memory_and_code_still_runs() {
        // Another test of this binary may fault pages in meanwhile (it failed once with 5 tries,
        // under a full test run): one of many tries must see the drop.
        let mut seen = Vec::new();
        for _ in 0..50 {
            let before = rss();
            let released = super::release_startup_pages().unwrap();
            assert!(released > 0);
            let after = rss();
            seen.push((before, after));
            if after < before {
                break;
            }
        }
        assert!(seen.iter().any(|(b, a)| a < b), "resident memory never dropped (kB before, after): {seen:?}");
        // Code and read-only data fault back in: formatting, hashing, threads all work.
        let text = format!("{:?}", std::collections::HashMap::from([(1, "a")]));
        assert_eq!(text, r#"{1: "a"}"#);
        assert_eq!(std::thread::spawn(|| 2 + 2).join().unwrap(), 4);
    }

    #[test]
    fn releasing_the_free_heap_lowers_resident_memory_and_allocation_still_works() {
        let mut seen = Vec::new();
        for _ in 0..20 {
            // 16 MiB in blocks below the mmap threshold, written, then all freed but the last:
            // it pins the heap's top, so `free` alone gives nothing back.
            let mut blocks: Vec<Vec<u8>> = (0..2048).map(|i| vec![(i % 251) as u8 + 1; 8 * 1024]).collect();
            let pin = blocks.pop();
            drop(blocks);
            let before = rss();
            let released = super::release_free_heap();
            let after = rss();
            seen.push((released, before, after));
            assert_eq!(pin.as_ref().map(|b| b[0]), Some((2047 % 251) as u8 + 1), "a live block is untouched");
            if released && before >= after + 8 * 1024 {
                break;
            }
        }
        assert!(
            seen.iter().any(|(r, b, a)| *r && *b >= *a + 8 * 1024),
            "at least 8 MiB of freed heap not released (released, kB before, after): {seen:?}"
        );
        // Freed pages come back as needed.
        let v = vec![7u8; 1 << 20];
        assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 7 << 20);
    }
}
