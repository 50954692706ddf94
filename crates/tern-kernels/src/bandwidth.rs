//! The machine's read bandwidth, measured the way a memory-bound GEMV reads: every thread
//! streams its own contiguous part of a buffer far larger than the last-level cache.
//! This is the roofline the decode kernels are judged against.

use crate::cpu::Isa;
use crate::pool::ThreadPool;

/// Reads all of `buf` once, split across the pool's threads; returns a checksum so the reads
/// cannot be optimised away.
pub fn read_all(buf: &[u8], pool: &ThreadPool) -> u64 {
    let tasks = pool.threads();
    let sums: Vec<std::sync::atomic::AtomicU64> = (0..tasks).map(|_| Default::default()).collect();
    let isa = Isa::detect();
    pool.run(tasks, &|task| {
        let lines = buf.len() / 64;
        let part = &buf[lines * task / tasks * 64..lines * (task + 1) / tasks * 64];
        let s = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` reported AVX-512 F support.
            Isa::Avx512 => unsafe { xor_avx512(part) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::detect` reported AVX2 support.
            Isa::Avx2 => unsafe { xor_avx2(part) },
            _ => xor_portable(part),
        };
        sums[task].store(s, std::sync::atomic::Ordering::Relaxed);
    });
    sums.iter()
        .fold(0, |a, s| a ^ s.load(std::sync::atomic::Ordering::Relaxed))
}

fn xor_portable(part: &[u8]) -> u64 {
    part.chunks_exact(8)
        .fold(0u64, |a, c| a ^ u64::from_le_bytes(c.try_into().unwrap()))
}

/// Lines read per step: one from each of four streams spread over the part, as a GEMV
/// reads four rows at a time; with software prefetch ahead in each, which is what the
/// fastest kernels here do. The best of these access patterns is the honest roofline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn xor_avx512(part: &[u8]) -> u64 {
    // SAFETY: the caller checked AVX-512F (the only requirement); every 64-byte load lies
    // inside `part` (bound at the load), and prefetches never fault.
    unsafe {
        use std::arch::x86_64::*;
        const STREAMS: usize = 4;
        let lines = part.len() / 64 / STREAMS;
        let p = part.as_ptr();
        let mut acc = [_mm512_setzero_si512(); STREAMS];
        for l in 0..lines {
            for (i, a) in acc.iter_mut().enumerate() {
                let line = p.add((i * lines + l) * 64);
                // Prefetches never fault, even past the end.
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(1024).cast());
                // SAFETY: (i * lines + l) * 64 + 64 <= STREAMS * lines * 64 <= part.len().
                *a = _mm512_xor_si512(*a, _mm512_loadu_si512(line.cast()));
            }
        }
        let v = _mm512_xor_si512(
            _mm512_xor_si512(acc[0], acc[1]),
            _mm512_xor_si512(acc[2], acc[3]),
        );
        let mut out = [0u64; 8];
        _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
        out.iter().fold(0, |a, b| a ^ b) ^ xor_portable(&part[STREAMS * lines * 64..])
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_avx2(part: &[u8]) -> u64 {
    // SAFETY: the caller checked AVX2 (the only requirement); every 32-byte load lies inside
    // `part` (bound at the load).
    unsafe {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_si256(); 4];
        let steps = part.len() / 128;
        let p = part.as_ptr();
        for s in 0..steps {
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: s * 128 + i * 32 + 32 <= part.len().
                *a = _mm256_xor_si256(*a, _mm256_loadu_si256(p.add(s * 128 + i * 32).cast()));
            }
        }
        let v = _mm256_xor_si256(
            _mm256_xor_si256(acc[0], acc[1]),
            _mm256_xor_si256(acc[2], acc[3]),
        );
        let mut out = [0u64; 4];
        _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
        out.iter().fold(0, |a, b| a ^ b) ^ xor_portable(&part[steps * 128..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_the_same_on_every_path_and_thread_count() {
        let mut rng = crate::rng::Rng::new(1);
        let buf: Vec<u8> = (0..100_000).map(|_| rng.next_u64() as u8).collect();
        let want = xor_portable(&buf[..buf.len() / 64 * 64]);
        // A thread count that splits the lines unevenly still covers every line once.
        for threads in [1, 2, 3] {
            assert_eq!(read_all(&buf, &ThreadPool::new(threads)), want);
        }
    }
}
