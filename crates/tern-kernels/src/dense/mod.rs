//! (being written) dense kernels
