//! Run-time description of the processor the kernels execute on.
//!
//! Kernels are compiled for the baseline target and select their AVX2/FMA
//! paths at run time, so one build serves every x86-64 machine. The thread
//! count is that of the rayon pool that the kernels parallelise over; it
//! follows `RAYON_NUM_THREADS` when that is set.

/// Vector instruction-set extensions the kernels can dispatch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    /// 256-bit integer and float SIMD (x86-64 AVX2).
    pub avx2: bool,
    /// Fused multiply-add (x86-64 FMA3).
    pub fma: bool,
    /// 512-bit integer dot products `vpdpbusd` (AVX-512 F, BW and VNNI).
    pub avx512_vnni: bool,
}

impl CpuFeatures {
    /// Detects the features of the running processor.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512_vnni: std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures {
                avx2: false,
                fma: false,
                avx512_vnni: false,
            }
        }
    }

    /// Whether the AVX2 + FMA kernels may run here.
    pub fn has_avx2_fma(&self) -> bool {
        self.avx2 && self.fma
    }

    /// The detected features by name, in a fixed order.
    pub fn as_pairs(&self) -> [(&'static str, bool); 3] {
        [("avx2", self.avx2), ("fma", self.fma), ("avx512_vnni", self.avx512_vnni)]
    }
}

/// Number of worker threads the kernels use (the size of rayon's global pool).
pub fn thread_count() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_consistent() {
        let a = CpuFeatures::detect();
        let b = CpuFeatures::detect();
        assert_eq!(a, b);
        assert_eq!(a.has_avx2_fma(), a.avx2 && a.fma);
        let names: Vec<&str> = a.as_pairs().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["avx2", "fma", "avx512_vnni"]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_detection_matches_cpuid() {
        // CPUID leaf 7, sub-leaf 0: EBX bit 5 is AVX2. The OS must also
        // enable the YMM state (XCR0 bits 1 and 2), which std checks too.
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let cpuid_avx2 = (leaf7.ebx >> 5) & 1 == 1;
        let leaf1 = std::arch::x86_64::__cpuid(1);
        let osxsave = (leaf1.ecx >> 27) & 1 == 1;
        let ymm_enabled = osxsave && unsafe { std::arch::x86_64::_xgetbv(0) } & 0b110 == 0b110;
        assert_eq!(
            CpuFeatures::detect().avx2,
            cpuid_avx2 && ymm_enabled && std::arch::is_x86_feature_detected!("avx")
        );
    }

    #[test]
    fn thread_count_follows_rayon_pool() {
        assert!(thread_count() >= 1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        assert_eq!(pool.install(thread_count), 3);
    }
}
