//! Synthetic series shaped like the ones tandem collects, for the compression test and the
//! size benchmark: a flat `up`, request counters, CPU-seconds counters, a noisy gauge with
//! three significant digits, resident memory moving in whole pages, and histogram bucket
//! counters. Deterministic (a seeded xorshift) so that figures compare across runs.

use crate::model::Sample;

/// xorshift64*: tiny, seeded, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Poisson-distributed count with mean `lambda` (Knuth; fine for small means).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    /// Roughly normal (sum of uniforms), mean 0, standard deviation `sd`.
    pub fn normal(&mut self, sd: f64) -> f64 {
        let s: f64 = (0..12).map(|_| self.f64()).sum();
        (s - 6.0) * sd
    }
}

/// The shapes tandem's collectors produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `up`, limits, revision info: the same value every second.
    Constant,
    /// A request counter: a few requests a second.
    Counter,
    /// `process_cpu_seconds_total`: clock ticks of 10 ms, read as decimals.
    CpuSeconds,
    /// A gauge printed with three significant digits (`23.4` % CPU, a load average).
    Gauge3Digits,
    /// Resident memory in bytes, changing by whole 4 KiB pages.
    MemoryBytes,
    /// One bucket of a request-duration histogram (cumulative counter).
    HistogramBucket,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::Constant,
        Shape::Counter,
        Shape::CpuSeconds,
        Shape::Gauge3Digits,
        Shape::MemoryBytes,
        Shape::HistogramBucket,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Constant => "constant",
            Shape::Counter => "request counter",
            Shape::CpuSeconds => "cpu seconds counter",
            Shape::Gauge3Digits => "gauge, 3 digits",
            Shape::MemoryBytes => "memory bytes (pages)",
            Shape::HistogramBucket => "histogram buckets",
        }
    }
}

/// `n` samples of `shape`, one every `interval_ms` from `start`, each timestamp moved by up to
/// `jitter_ms` either way (a real collector wakes a little late or early). `variant` picks
/// one of several series of that shape (histogram bucket index, service rate).
pub fn series(
    shape: Shape,
    variant: u64,
    start: i64,
    n: usize,
    interval_ms: i64,
    jitter_ms: i64,
) -> Vec<Sample> {
    let mut g = Generator::new(shape, variant, start, interval_ms, jitter_ms);
    (0..n).map(|_| g.next_sample()).collect()
}

/// One synthetic series, sample by sample (a benchmark over millions of samples should not
/// hold them all).
#[derive(Debug, Clone)]
pub struct Generator {
    shape: Shape,
    rng: Rng,
    rate: f64,
    /// Histogram: the share of requests at or below this bucket's bound.
    bucket_share: f64,
    acc: i64,
    t: i64,
    interval_ms: i64,
    jitter_ms: i64,
}

impl Generator {
    pub fn new(shape: Shape, variant: u64, start: i64, interval_ms: i64, jitter_ms: i64) -> Self {
        let mut rng =
            Rng::new(0x9E37_79B9_7F4A_7C15 ^ ((variant + 1) * 0x1000_0001) ^ shape as u64);
        let acc = match shape {
            Shape::MemoryBytes => (20_000 + rng.below(100_000) as i64) * 4096,
            Shape::Gauge3Digits => 200 + rng.below(300) as i64,
            _ => rng.below(10_000) as i64,
        };
        Generator {
            shape,
            rng,
            rate: 2.0 + (variant % 7) as f64 * 3.0,
            bucket_share: [0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 1.0][variant as usize % 7],
            acc,
            t: start,
            interval_ms,
            jitter_ms,
        }
    }

    pub fn next_sample(&mut self) -> Sample {
        let rng = &mut self.rng;
        let jitter = if self.jitter_ms > 0 {
            rng.below(2 * self.jitter_ms as u64 + 1) as i64 - self.jitter_ms
        } else {
            0
        };
        let t = self.t + jitter;
        self.t += self.interval_ms;
        let v = match self.shape {
            Shape::Constant => 1.0,
            Shape::Counter => {
                self.acc += rng.poisson(self.rate) as i64;
                self.acc as f64
            }
            Shape::CpuSeconds => {
                // 10 ms ticks; a service using about 20 % of a core.
                self.acc += (20.0 + rng.normal(6.0)).max(0.0).round() as i64;
                self.acc as f64 / 100.0
            }
            Shape::Gauge3Digits => {
                // Tenths around 20-50: mean-reverting noise.
                self.acc += (rng.normal(8.0) - (self.acc - 350) as f64 * 0.05).round() as i64;
                self.acc = self.acc.clamp(100, 999);
                self.acc as f64 / 10.0
            }
            Shape::MemoryBytes => {
                if rng.f64() < 0.4 {
                    self.acc += (rng.normal(30.0).round() as i64) * 4096;
                }
                self.acc as f64
            }
            Shape::HistogramBucket => {
                let requests = rng.poisson(self.rate);
                let share = self.bucket_share;
                self.acc += (0..requests).filter(|_| rng.f64() < share).count() as i64;
                self.acc as f64
            }
        };
        Sample { t, v }
    }
}

/// Bytes plain Gorilla (Prometheus's XOR chunks: delta-of-delta timestamps in 1/14/17/20/64
/// bit buckets, XOR values) needs for `samples`, headers left out: the baseline to beat.
pub fn gorilla_bytes(samples: &[Sample]) -> usize {
    let mut bits = 0u64;
    let mut prev_delta = 0i64;
    let mut window: Option<(u32, u32)> = None;
    for (i, s) in samples.iter().enumerate() {
        if i == 0 {
            bits += 64 + 64;
            continue;
        }
        let delta = s.t - samples[i - 1].t;
        if i == 1 {
            bits += 14;
        } else {
            let dod = delta - prev_delta;
            bits += match dod {
                0 => 1,
                -8191..=8192 => 2 + 14,
                -65535..=65536 => 3 + 17,
                -524_287..=524_288 => 4 + 20,
                _ => 4 + 64,
            };
        }
        prev_delta = delta;
        let x = s.v.to_bits() ^ samples[i - 1].v.to_bits();
        if x == 0 {
            bits += 1;
            continue;
        }
        let lz = x.leading_zeros().min(31);
        let tz = x.trailing_zeros();
        match window {
            Some((plz, plen)) if lz >= plz && tz >= 64 - plz - plen => bits += 2 + u64::from(plen),
            _ => {
                let len = 64 - lz - tz;
                bits += 2 + 5 + 6 + u64::from(len);
                window = Some((lz, len));
            }
        }
    }
    bits.div_ceil(8) as usize
}
