//! Criterion micro-benchmarks of gfn (`cargo bench -p gfn-benches`): see `benches/micro.rs`.
//! The library is empty; the benchmarks live in `benches/`.
