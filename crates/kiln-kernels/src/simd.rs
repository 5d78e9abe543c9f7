//! Run-time choice of instruction set for the kernels' loops: each loop is compiled three times
//! (AVX-512, AVX2 + FMA, the target's baseline) and the best one the CPU has is called, so one
//! binary is fast on new CPUs and still runs on old ones.

/// Whether the CPU has the AVX-512 subsets the kernels are compiled for.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_v4() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && has_v3()
}

/// Whether the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_v3() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `multiversion!(body => v4, v3, name(args))` defines `name(args)`, which calls the
/// `#[inline(always)]` function `body` compiled for AVX-512 (`v4`), AVX2 (`v3`) or the baseline,
/// whichever the CPU runs. The compiler never fuses a multiply and an add on its own, so the
/// three give the same bits.
macro_rules! multiversion {
    ($body:ident => $v4:ident, $v3:ident, $name:ident($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
        fn $v4($($arg: $ty),*) {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $v3($($arg: $ty),*) {
            $body($($arg),*)
        }

        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::simd::has_v4() {
                    // SAFETY: the CPU has every feature `$v4` is compiled for.
                    return unsafe { $v4($($arg),*) };
                }
                if $crate::simd::has_v3() {
                    // SAFETY: the CPU has every feature `$v3` is compiled for.
                    return unsafe { $v3($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
