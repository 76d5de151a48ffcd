//! Compressed chunks: up to a few hundred consecutive samples of one series, the unit the
//! head seals, blocks store and queries decode.
//!
//! The format goes past Gorilla because tandem's series are mostly integers in disguise
//! (byte counts, request counters, histogram buckets) or decimals read from text (`12.3`
//! from a scraped `/metrics`). Each chunk is encoded every way that applies and the
//! smallest wins, tagged in its first byte:
//!
//! - **XOR** (Gorilla): works for every float, the fallback.
//! - **scaled integers**: when every value is `m / 10^s` for integers `m` (checked bit for
//!   bit: the decoder's division must give back the exact float, so `-0.0`, NaNs, infinities
//!   and stale markers send a chunk to XOR), the `m` are stored as deltas or as
//!   delta-of-deltas, divided by their greatest common divisor (memory moves in whole
//!   pages).
//!
//! Timestamps are delta-of-delta. Every stream of residuals (timestamp DoDs, value deltas)
//! is written with a Rice code whose parameter, shift (zigzag or minus the minimum, which
//! spares counters a sign bit) and escape length are chosen per chunk; a stream of zeros
//! (a constant scrape interval, a flat gauge) costs no bits at all. The chunk does not
//! hold its first timestamp or its sample count: the head and the block index keep those
//! beside it for skipping, so storing them twice would be waste.

use crate::encoding::{BitReader, BitWriter, ByteReader, Truncated, put_uvarint, put_varint};
use crate::encoding::{unzigzag, zigzag};
use crate::model::Sample;

const TAG_XOR: u8 = 0;
const TAG_INT_DELTA: u8 = 1;
const TAG_INT_DOD: u8 = 2;

const TS_DOD: u8 = 0;
const TS_GRID: u8 = 1;

/// Largest `s` tried for `m / 10^s`; powers up to 10^15 are exact doubles.
const MAX_SCALE: usize = 15;
const POW10: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers beyond 2^53 are not all representable; such chunks stay XOR.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// No chunk holds more samples; a larger count read from a file means damage (and decoding
/// it could exhaust memory).
pub(crate) const MAX_CHUNK_SAMPLES: u32 = 1 << 16;

/// An encoded run of samples with what is needed to find and decode it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) count: u32,
    pub(crate) data: Box<[u8]>,
}

impl Chunk {
    /// Encodes `samples` (non-empty, strictly increasing timestamps).
    pub(crate) fn encode(samples: &[Sample]) -> Chunk {
        debug_assert!(!samples.is_empty());
        Chunk {
            min_t: samples.first().map_or(0, |s| s.t),
            max_t: samples.last().map_or(0, |s| s.t),
            count: samples.len() as u32,
            data: encode(samples).into_boxed_slice(),
        }
    }

    pub(crate) fn decode(&self) -> Result<Vec<Sample>, Truncated> {
        decode(&self.data, self.min_t, self.count)
    }
}

// === residual streams ===

/// How one stream of signed residuals is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Every residual is zero: nothing is written.
    Zero,
    /// Zigzag, then Rice.
    Zigzag { k: u32, esc: u32 },
    /// Minus the smallest residual, then Rice.
    Offset { min: i64, k: u32, esc: u32 },
}

const ESCAPES: [u32; 4] = [2, 4, 8, 16];

fn best_rice(us: &[u64]) -> (u32, u32, u64) {
    let mean = us.iter().map(|&u| u as f64).sum::<f64>() / us.len().max(1) as f64;
    // The best Rice parameter is near log2(mean); skewed data (mostly zeros, a few jumps)
    // wants a smaller one with the escape taking the jumps.
    let k0 = if mean < 1.0 { 0 } else { mean.log2() as i64 };
    let mut best = (0, ESCAPES[0], u64::MAX);
    for k in (k0 - 3).max(0)..=(k0 + 1).min(63) {
        let k = k as u32;
        // One pass per k, every escape length at once (plain code: this is the encoder's
        // hot loop, and tests run it unoptimised).
        let mut costs = [0u64; 4];
        for &u in us {
            let q = u >> k;
            let plain = q + 1 + u64::from(k);
            let escaped = 6 + u64::from(63u32.saturating_sub(u.leading_zeros()));
            costs[0] += if q < 2 { plain } else { 2 + escaped };
            costs[1] += if q < 4 { plain } else { 4 + escaped };
            costs[2] += if q < 8 { plain } else { 8 + escaped };
            costs[3] += if q < 16 { plain } else { 16 + escaped };
        }
        for i in 0..4 {
            if costs[i] < best.2 {
                best = (k, ESCAPES[i], costs[i]);
            }
        }
    }
    best
}

fn choose_shape(res: &[i64]) -> Shape {
    if res.iter().all(|&r| r == 0) {
        return Shape::Zero;
    }
    let zz: Vec<u64> = res.iter().map(|&r| zigzag(r)).collect();
    let (k, esc, zz_cost) = best_rice(&zz);
    let min = res.iter().copied().min().unwrap_or(0);
    let off: Vec<u64> = res.iter().map(|&r| r.wrapping_sub(min) as u64).collect();
    let (ok, oesc, off_cost) = best_rice(&off);
    // The offset's varint header costs about 8 bits per byte.
    let mut hdr = Vec::new();
    put_varint(&mut hdr, min);
    if off_cost.saturating_add(8 * hdr.len() as u64) < zz_cost {
        Shape::Offset {
            min,
            k: ok,
            esc: oesc,
        }
    } else {
        Shape::Zigzag { k, esc }
    }
}

fn write_shape(hdr: &mut Vec<u8>, shape: Shape) {
    let pack = |k: u32, esc: u32| -> u8 {
        let e = ESCAPES.iter().position(|&x| x == esc).unwrap_or(0) as u8;
        (k as u8) << 2 | e
    };
    match shape {
        Shape::Zero => hdr.push(0),
        Shape::Zigzag { k, esc } => {
            hdr.push(1);
            hdr.push(pack(k, esc));
        }
        Shape::Offset { min, k, esc } => {
            hdr.push(2);
            hdr.push(pack(k, esc));
            put_varint(hdr, min);
        }
    }
}

fn read_shape(r: &mut ByteReader<'_>) -> Result<Shape, Truncated> {
    let unpack = |b: u8| -> (u32, u32) { (u32::from(b >> 2), ESCAPES[usize::from(b & 3)]) };
    match r.u8()? {
        0 => Ok(Shape::Zero),
        1 => {
            let (k, esc) = unpack(r.u8()?);
            Ok(Shape::Zigzag { k, esc })
        }
        2 => {
            let (k, esc) = unpack(r.u8()?);
            let min = r.varint()?;
            Ok(Shape::Offset { min, k, esc })
        }
        _ => Err(Truncated),
    }
}

fn write_rice(w: &mut BitWriter, u: u64, k: u32, esc: u32) {
    let q = u >> k;
    if q < u64::from(esc) {
        w.ones(q as u32);
        w.bit(false);
        w.bits(u & ((1u64 << k) - 1), k);
    } else {
        let width = 63 - u.leading_zeros();
        w.ones(esc);
        w.bits(u64::from(width), 6);
        w.bits(u & ((1u64 << width) - 1), width);
    }
}

fn read_rice(r: &mut BitReader<'_>, k: u32, esc: u32) -> Result<u64, Truncated> {
    let q = r.unary(esc)?;
    if q < esc {
        let low = r.bits(k)?;
        Ok((u64::from(q) << k) | low)
    } else {
        let width = r.bits(6)? as u32;
        Ok((1u64 << width) | r.bits(width)?)
    }
}

fn write_residuals(w: &mut BitWriter, res: &[i64], shape: Shape) {
    match shape {
        Shape::Zero => {}
        Shape::Zigzag { k, esc } => res.iter().for_each(|&x| write_rice(w, zigzag(x), k, esc)),
        Shape::Offset { min, k, esc } => res
            .iter()
            .for_each(|&x| write_rice(w, x.wrapping_sub(min) as u64, k, esc)),
    }
}

fn read_residual(r: &mut BitReader<'_>, shape: Shape) -> Result<i64, Truncated> {
    match shape {
        Shape::Zero => Ok(0),
        Shape::Zigzag { k, esc } => read_rice(r, k, esc).map(unzigzag),
        Shape::Offset { min, k, esc } => Ok(min.wrapping_add(read_rice(r, k, esc)? as i64)),
    }
}

// === encoding ===

fn encode(samples: &[Sample]) -> Vec<u8> {
    // Timestamps are encoded once; each value coding is tried after them.
    let mut ts_hdr = Vec::with_capacity(8);
    let mut ts_bits = BitWriter::new();
    if samples.len() >= 2 {
        write_timestamps(&mut ts_hdr, &mut ts_bits, samples);
    }
    let values: Vec<f64> = samples.iter().map(|s| s.v).collect();
    let mut best = encode_with(&ts_hdr, &ts_bits, &ValueCoding::Xor(&values));
    if let Some((scale, ints)) = as_scaled_ints(&values) {
        for dod in [false, true] {
            let coding = ValueCoding::Int {
                scale,
                ints: &ints,
                dod,
            };
            let e = encode_with(&ts_hdr, &ts_bits, &coding);
            if e.len() < best.len() {
                best = e;
            }
        }
    }
    best
}

enum ValueCoding<'a> {
    Xor(&'a [f64]),
    Int {
        scale: u8,
        ints: &'a [i64],
        dod: bool,
    },
}

/// Layout: tag, timestamp header, value header, then the bits (timestamps, values).
fn encode_with(ts_hdr: &[u8], ts_bits: &BitWriter, coding: &ValueCoding<'_>) -> Vec<u8> {
    let mut hdr = Vec::with_capacity(16 + ts_hdr.len());
    let mut w = ts_bits.clone();
    hdr.push(match coding {
        ValueCoding::Xor(_) => TAG_XOR,
        ValueCoding::Int { dod: false, .. } => TAG_INT_DELTA,
        ValueCoding::Int { dod: true, .. } => TAG_INT_DOD,
    });
    hdr.extend_from_slice(ts_hdr);

    match *coding {
        ValueCoding::Xor(values) => write_xor(&mut w, values),
        ValueCoding::Int { scale, ints, dod } => {
            hdr.push(scale);
            put_varint(&mut hdr, ints[0]);
            let deltas: Vec<i64> = ints.windows(2).map(|p| p[1].wrapping_sub(p[0])).collect();
            let g = deltas
                .iter()
                .fold(0u64, |g, &d| gcd(g, d.unsigned_abs()))
                .max(1);
            put_uvarint(&mut hdr, g);
            let reduced: Vec<i64> = deltas.iter().map(|&d| d / g as i64).collect();
            let res: Vec<i64> = if dod {
                if let Some(&first) = reduced.first() {
                    put_varint(&mut hdr, first);
                }
                reduced
                    .windows(2)
                    .map(|p| p[1].wrapping_sub(p[0]))
                    .collect()
            } else {
                reduced
            };
            let shape = choose_shape(&res);
            write_shape(&mut hdr, shape);
            write_residuals(&mut w, &res, shape);
        }
    }
    hdr.extend_from_slice(&w.into_bytes());
    hdr
}

/// Timestamps: the first is kept outside the chunk. The rest are written one of two ways,
/// whichever is smaller: delta-of-delta (Gorilla; exact for a steady interval), or offsets
/// from a regular grid (a collector that wakes a few ms early or late: an offset of ±5 ms
/// costs less than the DoD between two such offsets, which spans ±10).
fn write_timestamps(hdr: &mut Vec<u8>, w: &mut BitWriter, samples: &[Sample]) {
    let t0 = samples[0].t;
    let d1 = samples[1].t.wrapping_sub(t0);
    let dods: Vec<i64> = samples
        .windows(3)
        .map(|w| {
            w[2].t
                .wrapping_sub(w[1].t)
                .wrapping_sub(w[1].t.wrapping_sub(w[0].t))
        })
        .collect();
    let dod_shape = choose_shape(&dods);

    let n = samples.len() as i64;
    let span = samples[samples.len() - 1].t.wrapping_sub(t0);
    let step = span / (n - 1);
    let grid: Vec<i64> = samples[1..]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.t.wrapping_sub(t0.wrapping_add(step.wrapping_mul(i as i64 + 1)))
        })
        .collect();
    let grid_shape = choose_shape(&grid);

    let (mut a, mut b) = (Vec::new(), BitWriter::new());
    a.push(TS_DOD);
    put_uvarint(&mut a, d1 as u64);
    write_shape(&mut a, dod_shape);
    write_residuals(&mut b, &dods, dod_shape);
    let dod_bits = b.bit_len() + 8 * a.len() as u64;

    let (mut c, mut d) = (Vec::new(), BitWriter::new());
    c.push(TS_GRID);
    put_uvarint(&mut c, step as u64);
    write_shape(&mut c, grid_shape);
    write_residuals(&mut d, &grid, grid_shape);
    let grid_bits = d.bit_len() + 8 * c.len() as u64;

    let (h, bits) = if grid_bits < dod_bits { (c, d) } else { (a, b) };
    hdr.extend_from_slice(&h);
    w.append(&bits);
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The smallest `s` for which every value is exactly `m / 10^s` with an integer `m`, and
/// those integers; `None` when no scale fits (NaN, infinities, `-0.0`, computed floats).
fn as_scaled_ints(values: &[f64]) -> Option<(u8, Vec<i64>)> {
    let mut ints = Vec::with_capacity(values.len());
    'scale: for (s, &p) in POW10.iter().enumerate() {
        ints.clear();
        for &v in values {
            if !v.is_finite() {
                return None;
            }
            let m = (v * p).round();
            if m.abs() > MAX_EXACT_INT || ((m as i64) as f64 / p).to_bits() != v.to_bits() {
                continue 'scale;
            }
            ints.push(m as i64);
        }
        return Some((s as u8, ints));
    }
    None
}

fn write_xor(w: &mut BitWriter, values: &[f64]) {
    let Some((&first, rest)) = values.split_first() else {
        return;
    };
    w.bits(first.to_bits(), 64);
    let mut prev = first.to_bits();
    // The previous window of meaningful bits: (leading zeros, meaningful length).
    let mut window: Option<(u32, u32)> = None;
    for v in rest {
        let bits = v.to_bits();
        let x = bits ^ prev;
        prev = bits;
        if x == 0 {
            w.bit(false);
            continue;
        }
        w.bit(true);
        let lz = x.leading_zeros().min(31);
        let tz = x.trailing_zeros();
        match window {
            Some((plz, plen)) if lz >= plz && tz >= 64 - plz - plen => {
                w.bit(false);
                w.bits(x >> (64 - plz - plen), plen);
            }
            _ => {
                let len = 64 - lz - tz;
                w.bit(true);
                w.bits(u64::from(lz), 5);
                // A length of 64 does not fit in 6 bits; 0 stands for it (0 cannot occur).
                w.bits(u64::from(len % 64), 6);
                w.bits(x >> tz, len);
                window = Some((lz, len));
            }
        }
    }
}

// === decoding ===

fn decode(data: &[u8], min_t: i64, count: u32) -> Result<Vec<Sample>, Truncated> {
    if count > MAX_CHUNK_SAMPLES {
        return Err(Truncated);
    }
    let n = count as usize;
    let mut hdr = ByteReader::new(data);
    let tag = hdr.u8()?;
    let mut ts = Vec::with_capacity(n);
    if n >= 1 {
        ts.push(min_t);
    }
    let mut t_mode = TS_DOD;
    let mut t_shape = Shape::Zero;
    let mut d1 = 0i64;
    if n >= 2 {
        t_mode = hdr.u8()?;
        d1 = hdr.uvarint()? as i64;
        t_shape = read_shape(&mut hdr)?;
    }
    let int_params = match tag {
        TAG_XOR => None,
        TAG_INT_DELTA | TAG_INT_DOD => {
            let scale = usize::from(hdr.u8()?);
            let p = *POW10.get(scale).ok_or(Truncated)?;
            let first = hdr.varint()?;
            let g = hdr.uvarint()? as i64;
            let first_delta = if tag == TAG_INT_DOD && n >= 2 {
                hdr.varint()?
            } else {
                0
            };
            let shape = read_shape(&mut hdr)?;
            Some((p, first, g, first_delta, shape))
        }
        _ => return Err(Truncated),
    };

    let mut bits = BitReader::new(hdr.rest());
    match t_mode {
        _ if n < 2 => {}
        TS_DOD => {
            let mut delta = d1;
            let mut t = min_t.wrapping_add(delta);
            ts.push(t);
            for _ in 2..n {
                delta = delta.wrapping_add(read_residual(&mut bits, t_shape)?);
                t = t.wrapping_add(delta);
                ts.push(t);
            }
        }
        TS_GRID => {
            // `d1` is the grid's step here.
            for i in 1..n as i64 {
                let off = read_residual(&mut bits, t_shape)?;
                ts.push(min_t.wrapping_add(d1.wrapping_mul(i)).wrapping_add(off));
            }
        }
        _ => return Err(Truncated),
    }

    let mut out = Vec::with_capacity(n);
    match int_params {
        None => {
            if n == 0 {
                return Ok(out);
            }
            let mut prev = bits.bits(64)?;
            out.push(Sample {
                t: ts[0],
                v: f64::from_bits(prev),
            });
            let mut window = (0u32, 0u32);
            for &t in &ts[1..] {
                if bits.bit()? {
                    if bits.bit()? {
                        let lz = bits.bits(5)? as u32;
                        let mut len = bits.bits(6)? as u32;
                        if len == 0 {
                            len = 64;
                        }
                        if lz + len > 64 {
                            return Err(Truncated);
                        }
                        window = (lz, len);
                    }
                    let (lz, len) = window;
                    if len == 0 {
                        return Err(Truncated);
                    }
                    prev ^= bits.bits(len)? << (64 - lz - len);
                }
                out.push(Sample {
                    t,
                    v: f64::from_bits(prev),
                });
            }
        }
        Some((p, first, g, first_delta, shape)) => {
            let dod = tag == TAG_INT_DOD;
            let mut m = first;
            let mut d = first_delta;
            for (i, &t) in ts.iter().enumerate() {
                if i == 1 {
                    if !dod {
                        d = read_residual(&mut bits, shape)?;
                    }
                    m = m.wrapping_add(d.wrapping_mul(g));
                } else if i >= 2 {
                    let r = read_residual(&mut bits, shape)?;
                    d = if dod { d.wrapping_add(r) } else { r };
                    m = m.wrapping_add(d.wrapping_mul(g));
                }
                out.push(Sample { t, v: m as f64 / p });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stale_nan;

    fn round_trip(samples: &[Sample]) -> usize {
        let c = Chunk::encode(samples);
        assert_eq!(c.decode().unwrap(), samples);
        c.data.len()
    }

    fn at(vals: &[f64]) -> Vec<Sample> {
        vals.iter()
            .enumerate()
            .map(|(i, &v)| Sample {
                t: 1_000 * i as i64,
                v,
            })
            .collect()
    }

    #[test]
    fn every_coding_round_trips() {
        round_trip(&at(&[1.0]));
        round_trip(&at(&[1.5, 2.5]));
        round_trip(&at(&[
            0.0,
            -0.0,
            f64::NAN,
            stale_nan(),
            f64::INFINITY,
            5e-324,
        ]));
        round_trip(&at(&[12.3, 12.4, 11.9, 13.0, 12.1]));
        round_trip(&at(&[4096.0, 8192.0, 8192.0, 4096.0 * 100.0, 0.0]));
        round_trip(&at(&[-9e15, 9e15, -9e15]));
        let jitter: Vec<Sample> = (0..200)
            .map(|i| Sample {
                t: i64::MIN + 1000 * i + (i * 7919 % 13),
                v: i as f64,
            })
            .collect();
        round_trip(&jitter);
        let wide = [
            Sample {
                t: i64::MIN,
                v: 1.0,
            },
            Sample { t: 0, v: 2.0 },
            Sample {
                t: i64::MAX,
                v: 3.0,
            },
        ];
        round_trip(&wide);
    }

    #[test]
    fn flat_series_cost_almost_nothing() {
        let n = round_trip(&at(&[42.0; 120]));
        assert!(n <= 10, "{n} bytes");
    }

    #[test]
    fn corrupt_chunks_are_errors_not_panics() {
        let c = Chunk::encode(&at(&[1.5, 2.25, 3.0, 7.1, 9.9]));
        for cut in 0..c.data.len() {
            let broken = Chunk {
                data: c.data[..cut].into(),
                ..c.clone()
            };
            let _ = broken.decode();
        }
        for i in 0..c.data.len() {
            for b in [0u8, 0xff, 0x55] {
                let mut d = c.data.to_vec();
                d[i] = b;
                let _ = Chunk {
                    data: d.into(),
                    ..c.clone()
                }
                .decode();
            }
        }
    }
}
