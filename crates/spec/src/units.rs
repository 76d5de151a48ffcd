//! Human units in the system file: durations ("500ms", "2m"), sizes ("256MiB") and CPU
//! shares (0.5 or "500m"). Each type parses from the file's text, prints back in the same
//! canonical form, and serializes as that text, so `render` output is a valid system file.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m`, `h`, `d`, combinable ("1m30s").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

/// A size in bytes written with a unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (binary) or `KB`,
/// `MB`, `GB`, `TB` (decimal). A bare integer is bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A share of CPU cores: `0.5` is half a core, `2` two cores; `"500m"` is millicores.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Cpu(pub f64);

/// Why a unit failed to parse; the text is the hint shown to the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

impl Dur {
    pub fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn from_secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl FromStr for Dur {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let hint = || {
            UnitError(format!(
                "'{text}' is not a duration; write a number with a unit: ms, s, m, h or d (for example \"500ms\", \"30s\", \"1m30s\")"
            ))
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(hint());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(hint());
            }
            let number: u128 = rest[..digits].parse().map_err(|_| hint())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let millis_per = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(hint()),
            };
            total = total.saturating_add(number.saturating_mul(millis_per));
        }
        let ms = u64::try_from(total).map_err(|_| hint())?;
        Ok(Dur(Duration::from_millis(ms)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let hint = || {
            UnitError(format!(
                "'{text}' is not a size; write a whole number with a unit: B, KiB, MiB, GiB, TiB (or KB, MB, GB, TB), for example \"256MiB\""
            ))
        };
        let s = text.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(hint());
        }
        let number: u64 = s[..digits].parse().map_err(|_| hint())?;
        let multiplier: u64 = match s[digits..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(hint()),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(hint)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl FromStr for Cpu {
    type Err = UnitError;
    fn from_str(text: &str) -> Result<Self, UnitError> {
        let hint = || {
            UnitError(format!(
                "'{text}' is not a CPU share; write cores as a number (0.5 is half a core) or millicores as \"500m\""
            ))
        };
        let s = text.trim();
        let cores = if let Some(milli) = s.strip_suffix('m') {
            milli.parse::<u64>().map_err(|_| hint())? as f64 / 1000.0
        } else {
            s.parse::<f64>().map_err(|_| hint())?
        };
        if !cores.is_finite() || cores <= 0.0 {
            return Err(UnitError(format!(
                "CPU share '{text}' must be more than 0 cores"
            )));
        }
        Ok(Cpu(cores))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

macro_rules! serde_as_text {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(Dur);
serde_as_text!(ByteSize);

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}
impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Cpu::from_str(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("1s", 1000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
        ] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms);
            assert_eq!(d.to_string(), text);
        }
        assert!("5".parse::<Dur>().is_err());
        assert!("5 minutes".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
    }

    #[test]
    fn sizes_round_trip() {
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("1GB".parse::<ByteSize>().unwrap().0, 1_000_000_000);
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("1.5GiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn cpu_shares() {
        assert_eq!("0.5".parse::<Cpu>().unwrap().0, 0.5);
        assert_eq!("250m".parse::<Cpu>().unwrap().0, 0.25);
        assert!("0".parse::<Cpu>().is_err());
        assert!("-1".parse::<Cpu>().is_err());
    }
}
