//! Quantities with a unit in the manifest: sizes in bytes (`64KiB`, `500kB`) and
//! durations in whole seconds (`10s`, `5m`). Each is a plain integer or a string of
//! digits and a unit; one parser and one serde visitor serve both, so they accept
//! and refuse the same way. What a limit may be is `validate`'s.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A size in bytes: a plain integer or a string with a binary or decimal unit
/// (`64KiB`, `1MiB`, `16 MiB`, `500kB`, `1024B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration in whole seconds: a plain integer (seconds) or a string with a unit
/// (`500ms` is refused unless it is a whole number of seconds; `10s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

/// What differs between the quantities: their units and their words.
trait Quantity: Sized {
    /// "size" or "duration", in messages.
    const NOUN: &'static str;
    const UNITS: &'static str;
    const EXAMPLE: &'static str;
    /// What serde expected, in its messages.
    const EXPECTING: &'static str;
    fn from_number(number: u64) -> Self;
    /// `number` in `unit` as a plain number; `Ok(None)` if it overflows.
    fn apply_unit(number: u64, unit: &str, text: &str) -> Result<Option<u64>, String>;
}

impl Quantity for ByteSize {
    const NOUN: &'static str = "size";
    const UNITS: &'static str = "B, KiB, MiB, GiB, kB, MB, GB";
    const EXAMPLE: &'static str = "64KiB";
    const EXPECTING: &'static str = "a size such as 65536, \"64KiB\" or \"1MiB\"";

    fn from_number(number: u64) -> Self {
        ByteSize(number)
    }

    fn apply_unit(number: u64, unit: &str, text: &str) -> Result<Option<u64>, String> {
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {text:?}: use B, KiB, MiB, GiB, kB, MB or GB"
                ));
            }
        };
        Ok(number.checked_mul(multiplier))
    }
}

impl Quantity for Seconds {
    const NOUN: &'static str = "duration";
    const UNITS: &'static str = "s, m, h";
    const EXAMPLE: &'static str = "10s";
    const EXPECTING: &'static str = "a duration such as 10, \"10s\" or \"5m\"";

    fn from_number(number: u64) -> Self {
        Seconds(number)
    }

    fn apply_unit(number: u64, unit: &str, text: &str) -> Result<Option<u64>, String> {
        let multiplier: u64 = match unit {
            "" | "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "ms" if number.is_multiple_of(1000) => return Ok(Some(number / 1000)),
            "ms" => {
                return Err(format!(
                    "duration {text:?} must be a whole number of seconds"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {text:?}: use s, m or h"
                ));
            }
        };
        Ok(number.checked_mul(multiplier))
    }
}

/// Digits, optional spaces, an optional unit.
fn parse_quantity<Q: Quantity>(text: &str) -> Result<Q, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid {} {text:?}: expected a number with an optional unit ({}), e.g. {:?}",
            Q::NOUN,
            Q::UNITS,
            Q::EXAMPLE
        ));
    }
    let too_large = || format!("{} {text:?} is too large", Q::NOUN);
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    Q::apply_unit(number, unit.trim(), text)?
        .map(Q::from_number)
        .ok_or_else(too_large)
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        parse_quantity(text)
    }
}

impl Seconds {
    pub fn parse(text: &str) -> Result<Seconds, String> {
        parse_quantity(text)
    }
}

/// An integer or a string with a unit, for either quantity.
struct QuantityVisitor<Q>(PhantomData<Q>);

impl<Q: Quantity> Visitor<'_> for QuantityVisitor<Q> {
    type Value = Q;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(Q::EXPECTING)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Q, E> {
        Ok(Q::from_number(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Q, E> {
        u64::try_from(v)
            .map(Q::from_number)
            .map_err(|_| E::custom(format!("a {} cannot be negative ({v})", Q::NOUN)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Q, E> {
        parse_quantity(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(PhantomData))
    }
}
