//! The budget and seed every fuzz harness shares: `CUTOVER_FUZZ_CASES`
//! (default 100,000, the CI budget) and `CUTOVER_FUZZ_SEED`.

/// Inputs per harness.
pub fn cases() -> usize {
    std::env::var("CUTOVER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// The harness's generator: the shared seed, told apart by `salt`.
pub fn rng(salt: u64) -> fastrand::Rng {
    let seed = std::env::var("CUTOVER_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x5eed_c0de);
    fastrand::Rng::with_seed(seed ^ salt)
}
