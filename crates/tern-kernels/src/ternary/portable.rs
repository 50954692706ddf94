//! Plain-Rust kernel on the packed layouts: the fallback for CPUs without AVX2, and a second
//! reference (it reads the packed bytes exactly as the SIMD kernels do).

use super::{base3_digit, Job, Layout, BLOCK_BYTES, GROUP_ROWS};

pub(crate) fn run(job: &mut Job) {
    let w = job.w;
    let blocks = w.blocks();
    let bc = w.layout.block_cols();
    let data = w.data.as_slice();
    for g in job.groups() {
        let group = &data[g * blocks * BLOCK_BYTES..(g + 1) * blocks * BLOCK_BYTES];
        for t in 0..job.x.n {
            let x = job.x.row_padded(t);
            let mut acc = [0i32; GROUP_ROWS];
            for (b, block) in group.chunks_exact(BLOCK_BYTES).enumerate() {
                let xb = &x[b * bc..(b + 1) * bc];
                for (l, a) in acc.iter_mut().enumerate() {
                    for j in 0..4 {
                        let byte = block[4 * l + j];
                        match w.layout {
                            Layout::Tern2 => {
                                for i in 0..4 {
                                    *a += ((byte >> (2 * i)) & 3) as i32 * xb[4 * i + j] as i32;
                                }
                            }
                            Layout::Tern3 => {
                                for i in 0..5 {
                                    *a += base3_digit(byte, i) as i32 * xb[4 * i + j] as i32;
                                }
                            }
                        }
                    }
                }
            }
            let ys: [f32; GROUP_ROWS] = std::array::from_fn(|l| job.finish(acc[l], t));
            let out = job.out_group(t, g);
            out.copy_from_slice(&ys[..out.len()]);
        }
    }
}
