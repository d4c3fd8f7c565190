//! Benchmark helpers shared by `perf-probe` and `perf-report` (see perf/README.md).

pub mod stats;
