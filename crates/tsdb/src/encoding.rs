//! Byte- and bit-level building blocks shared by the chunk, WAL and block formats: LEB128
//! varints, zigzag, a bit writer/reader, and CRC32. Everything reading untrusted bytes
//! returns [`Truncated`] instead of panicking, so a damaged file becomes an error that names
//! the file, never a crash.

/// Input ended (or a varint ran on) before the value it was decoding was complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag(v));
}

/// A cursor over bytes that decodes varints and fixed-width integers with bounds checks.
#[derive(Debug, Clone)]
pub(crate) struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        ByteReader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Truncated> {
        let b = *self.buf.get(self.pos).ok_or(Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).ok_or(Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u64_le(&mut self) -> Result<u64, Truncated> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn uvarint(&mut self) -> Result<u64, Truncated> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Truncated)
    }

    pub(crate) fn varint(&mut self) -> Result<i64, Truncated> {
        self.uvarint().map(unzigzag)
    }

    /// A length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<String, Truncated> {
        let n = usize::try_from(self.uvarint()?).map_err(|_| Truncated)?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Truncated)
    }
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends bits most-significant first.
#[derive(Debug, Default, Clone)]
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    /// Bits used in the last byte of `buf` (0 means the last byte is full or there is none).
    used: u32,
}

impl BitWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn bit(&mut self, b: bool) {
        if self.used == 0 {
            self.buf.push(0);
        }
        if b {
            let last = self.buf.len() - 1;
            self.buf[last] |= 0x80 >> self.used;
        }
        self.used = (self.used + 1) % 8;
    }

    /// The low `n` bits of `v`, high bit first (`n` up to 64).
    pub(crate) fn bits(&mut self, v: u64, n: u32) {
        let mut n = n;
        while n > 0 {
            if self.used == 0 {
                self.buf.push(0);
            }
            let free = 8 - self.used;
            let take = free.min(n);
            let chunk = ((v >> (n - take)) & ((1u64 << take) - 1)) as u8;
            let last = self.buf.len() - 1;
            self.buf[last] |= chunk << (free - take);
            self.used = (self.used + take) % 8;
            n -= take;
        }
    }

    pub(crate) fn ones(&mut self, n: u32) {
        let mut n = n;
        while n > 0 {
            let k = n.min(64);
            self.bits(u64::MAX, k);
            n -= k;
        }
    }

    pub(crate) fn bit_len(&self) -> u64 {
        let full = self.buf.len() as u64 * 8;
        if self.used == 0 {
            full
        } else {
            full - 8 + u64::from(self.used)
        }
    }

    /// Appends every bit `other` holds.
    pub(crate) fn append(&mut self, other: &BitWriter) {
        let mut left = other.bit_len();
        for &byte in &other.buf {
            let take = left.min(8) as u32;
            self.bits(u64::from(byte) >> (8 - take), take);
            left -= u64::from(take);
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads bits written by [`BitWriter`].
#[derive(Debug)]
pub(crate) struct BitReader<'a> {
    buf: &'a [u8],
    /// Position in bits.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    pub(crate) fn bit(&mut self) -> Result<bool, Truncated> {
        let byte = *self.buf.get(self.pos / 8).ok_or(Truncated)?;
        let b = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Ok(b)
    }

    fn total_bits(&self) -> usize {
        self.buf.len() * 8
    }

    /// The next 64 bits from the position, zero past the end; the first 57 are whole.
    fn peek(&self) -> u64 {
        let byte = self.pos / 8;
        let mut word = [0u8; 8];
        if byte < self.buf.len() {
            let avail = (self.buf.len() - byte).min(8);
            word[..avail].copy_from_slice(&self.buf[byte..byte + avail]);
        }
        u64::from_be_bytes(word) << (self.pos % 8)
    }

    pub(crate) fn bits(&mut self, n: u32) -> Result<u64, Truncated> {
        if n == 0 {
            return Ok(0);
        }
        if n > 56 {
            let hi = self.bits(n - 32)?;
            let lo = self.bits(32)?;
            return Ok((hi << 32) | lo);
        }
        if self.pos + n as usize > self.total_bits() {
            return Err(Truncated);
        }
        let v = self.peek() >> (64 - n);
        self.pos += n as usize;
        Ok(v)
    }

    /// Counts consecutive one bits, stopping after `limit` of them or at a zero (consumed).
    pub(crate) fn unary(&mut self, limit: u32) -> Result<u32, Truncated> {
        let mut q = 0;
        loop {
            let avail = self.total_bits().saturating_sub(self.pos);
            if q == limit {
                return Ok(q);
            }
            if avail == 0 {
                return Err(Truncated);
            }
            let window = avail.min(56) as u32;
            let ones = (!self.peek()).leading_zeros().min(window);
            let need = limit - q;
            if ones >= need {
                self.pos += need as usize;
                return Ok(limit);
            }
            self.pos += ones as usize;
            q += ones;
            if ones < window {
                // The terminating zero.
                self.pos += 1;
                return Ok(q);
            }
        }
    }
}

/// A fast, non-cryptographic hasher (the Fx algorithm of rustc) for the maps hit on every
/// append: label set -> series id, and ids. SipHash took a quarter of ingestion time; the
/// labels come from the operator's own services, so hash flooding is not a concern here.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.add(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(a));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli), the checksum Prometheus's WAL uses too. Table-driven: a few
/// hundred MB/s is plenty for per-second batches, and it spares a dependency.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_varints_round_trip() {
        let mut w = BitWriter::new();
        w.bit(true);
        w.bits(0b101, 3);
        w.bits(u64::MAX, 64);
        w.bits(0x1234, 13);
        w.ones(70);
        w.bit(false);
        let bytes = w.into_bytes();
        let mut r = BitReader::new(&bytes);
        assert!(r.bit().unwrap());
        assert_eq!(r.bits(3).unwrap(), 0b101);
        assert_eq!(r.bits(64).unwrap(), u64::MAX);
        assert_eq!(r.bits(13).unwrap(), 0x1234);
        assert_eq!(r.unary(100).unwrap(), 70);
        let mut out = Vec::new();
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, 300] {
            put_varint(&mut out, v);
        }
        let mut r = ByteReader::new(&out);
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, 300] {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.varint(), Err(Truncated));
    }

    #[test]
    fn crc32c_matches_the_reference_vector() {
        assert_eq!(crc32(b"123456789"), 0xE306_9283);
    }
}
