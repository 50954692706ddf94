//! Run-time choice of instruction set. Kernels are compiled for every set with
//! `#[target_feature]` and one is picked per call from [`Isa`], so one binary runs everywhere.

/// The kernel families tern has, from most to least capable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Plain Rust, any CPU.
    Portable,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen 1 and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (`vpdpbusd`) and VBMI (Ice Lake, Zen 4 and later).
    Avx512,
}

impl Isa {
    /// The best set this CPU supports, detected once.
    pub fn detect() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Isa::available();
            *all.last().expect("portable is always available")
        })
    }

    /// Every set this CPU can run, weakest first (tests run each of them).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vbmi")
                {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512-vnni",
        }
    }

    /// Parses the names printed by [`Isa::name`] (for `--isa` flags).
    pub fn from_name(s: &str) -> Option<Isa> {
        match s {
            "portable" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512-vnni" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run `self` (asking for an unsupported set is a caller error).
    /// Cheap (kernels check it per call): the sets form a chain, weakest first, so a set is
    /// supported iff it is no stronger than the best one detected.
    pub fn is_supported(self) -> bool {
        self <= Isa::detect()
    }
}

/// Panics unless this CPU can run `isa`: kernels are `#[target_feature]` code and running them
/// on a CPU without those features is undefined behaviour, so the `_with` entry points check.
pub(crate) fn check_isa(isa: Isa, what: &str) {
    assert!(
        isa.is_supported(),
        "{what}: instruction set {} is not supported by this CPU (see Isa::available)",
        isa.name()
    );
}
