//! Exact decimal amounts.
//!
//! Every value in the accounting path is an [`Amount`]: a signed fixed-point number with
//! nine fractional digits, stored as an `i128` count of nano-units. Input values are
//! non-negative, have at most 18 integer digits and at most 9 fractional digits (SPEC 1);
//! sums of them stay exact far beyond any realistic total (the `i128` range holds about
//! 1.7e29 whole units). Parsing is delegated to `rust_decimal`, so JSON numbers such as
//! `1.5`, `2` and `1e3` and decimal strings such as `"0.000000001"` are all accepted
//! without ever going through binary floating point.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// Number of fractional digits kept.
pub const SCALE: u32 = 9;
/// `10^SCALE`: nano-units per whole unit.
pub const UNIT: i128 = 1_000_000_000;
/// Largest accepted input value: 18 integer digits and 9 fractional digits.
pub const MAX_INPUT: i128 = 1_000_000_000_000_000_000 * UNIT - 1;

/// An exact decimal amount in nano-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(pub i128);

/// Why a decimal text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text is not a decimal number.
    #[error("not a decimal number")]
    Syntax,
    /// More than 9 fractional digits.
    #[error("at most 9 fractional digits are allowed")]
    TooPrecise,
    /// More than 18 integer digits.
    #[error("at most 18 integer digits are allowed")]
    TooLarge,
    /// A negative value where only non-negative ones are allowed.
    #[error("must not be negative")]
    Negative,
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// One whole unit.
    pub const ONE: Amount = Amount(UNIT);

    /// Parses a signed decimal text (`"-1.5"`, `"2"`, `"1e3"`) into an exact amount.
    pub fn parse_signed(text: &str) -> Result<Amount, DecimalError> {
        let text = text.trim();
        if text.is_empty() || text.len() > 64 {
            return Err(DecimalError::Syntax);
        }
        // rust_decimal accepts `_` separators and a leading `+`; JSON does not.
        if text.contains('_') || text.starts_with('+') || text.ends_with('.') {
            return Err(DecimalError::Syntax);
        }
        match text.find(['e', 'E']) {
            // The mantissa is read exactly and the exponent applied in integers:
            // `Decimal::from_scientific` rounds mantissas past 28 digits (so a value with
            // more than 9 fractional digits could be accepted, rounded) and accepts an
            // exponent like `-+9`.
            Some(i) => {
                let (mant, exp) = (&text[..i], &text[i + 1..]);
                if mant.is_empty() || mant.ends_with('.') {
                    return Err(DecimalError::Syntax);
                }
                let exp: i64 = exp.parse().map_err(|_| DecimalError::Syntax)?;
                let mant = Decimal::from_str_exact(mant)
                    .map_err(|_| DecimalError::Syntax)?
                    .normalize();
                Self::from_parts(mant.mantissa(), i64::from(mant.scale()).saturating_sub(exp))
            }
            None => {
                Self::from_decimal(Decimal::from_str_exact(text).map_err(|_| DecimalError::Syntax)?)
            }
        }
    }

    /// `mantissa x 10^-scale`, exactly, or why it is not an amount.
    fn from_parts(mantissa: i128, scale: i64) -> Result<Amount, DecimalError> {
        if mantissa == 0 {
            return Ok(Amount::ZERO);
        }
        if scale > i64::from(SCALE) {
            return Err(DecimalError::TooPrecise);
        }
        let shift = u32::try_from(i64::from(SCALE).saturating_sub(scale))
            .map_err(|_| DecimalError::TooLarge)?;
        let nanos = 10i128
            .checked_pow(shift)
            .and_then(|f| mantissa.checked_mul(f))
            .ok_or(DecimalError::TooLarge)?;
        if !(-MAX_INPUT..=MAX_INPUT).contains(&nanos) {
            return Err(DecimalError::TooLarge);
        }
        Ok(Amount(nanos))
    }

    /// Parses a non-negative input value (an event value, a limit, a grant amount).
    pub fn parse_input(text: &str) -> Result<Amount, DecimalError> {
        let a = Self::parse_signed(text)?;
        if a.0 < 0 {
            return Err(DecimalError::Negative);
        }
        Ok(a)
    }

    fn from_decimal(dec: Decimal) -> Result<Amount, DecimalError> {
        let dec = dec.normalize();
        if dec.scale() > SCALE {
            return Err(DecimalError::TooPrecise);
        }
        let mantissa = dec.mantissa();
        let factor = 10i128.pow(SCALE - dec.scale());
        let nanos = mantissa.checked_mul(factor).ok_or(DecimalError::TooLarge)?;
        if !(-MAX_INPUT..=MAX_INPUT).contains(&nanos) {
            return Err(DecimalError::TooLarge);
        }
        Ok(Amount(nanos))
    }

    /// Returns `self + other`, saturating at the `i128` range.
    pub fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// Returns `self - other`, saturating at the `i128` range.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Amount {
    /// Formats the amount as a plain decimal string without trailing fractional zeros
    /// (`"1"`, `"0.5"`, `"-12.000000001"`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = self.0.unsigned_abs();
        let int = abs / UNIT as u128;
        let mut frac = abs % UNIT as u128;
        if neg {
            f.write_str("-")?;
        }
        write!(f, "{int}")?;
        if frac != 0 {
            let mut digits = SCALE as usize;
            while frac.is_multiple_of(10) {
                frac /= 10;
                digits -= 1;
            }
            write!(f, ".{frac:0digits$}")?;
        }
        Ok(())
    }
}

impl FromStr for Amount {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse_signed(s)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Amount::parse_signed(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats() {
        for (input, out) in [
            ("1", "1"),
            ("0", "0"),
            ("1.50", "1.5"),
            ("0.000000001", "0.000000001"),
            ("1e3", "1000"),
            ("2.5E-3", "0.0025"),
            (
                "999999999999999999.999999999",
                "999999999999999999.999999999",
            ),
        ] {
            assert_eq!(
                Amount::parse_input(input).unwrap().to_string(),
                out,
                "{input}"
            );
        }
    }

    #[test]
    fn refuses_out_of_range() {
        assert_eq!(
            Amount::parse_input("0.0000000001"),
            Err(DecimalError::TooPrecise)
        );
        assert_eq!(
            Amount::parse_input("1000000000000000000"),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(Amount::parse_input("-1"), Err(DecimalError::Negative));
        for bad in ["", "abc", "1.2.3", "+1", "1_000", "NaN", "inf", "1.", "--1"] {
            assert!(Amount::parse_input(bad).is_err(), "{bad}");
        }
        assert_eq!(Amount::parse_signed("-2.5").unwrap().to_string(), "-2.5");
    }

    proptest! {
        #[test]
        fn roundtrip(int in 0u64..1_000_000_000_000_000_000, frac in 0u32..1_000_000_000) {
            let text = format!("{int}.{frac:09}");
            let a = Amount::parse_input(&text).unwrap();
            prop_assert_eq!(a.0, int as i128 * UNIT + frac as i128);
            let back = Amount::parse_input(&a.to_string()).unwrap();
            prop_assert_eq!(a, back);
        }

        #[test]
        fn sums_are_exact(values in proptest::collection::vec(0u64..10_000_000_000, 1..50)) {
            let mut total = Amount::ZERO;
            for v in &values {
                let text = format!("{}.{:09}", v / 1000, (v % 1000) * 1_000_000);
                total = total.saturating_add(Amount::parse_input(&text).unwrap());
            }
            let expect: i128 = values.iter().map(|v| *v as i128 * 1_000_000).sum();
            prop_assert_eq!(total.0, expect);
        }
    }

    #[test]
    fn exponents_are_exact() {
        // Found by the `decimal` fuzz target: mantissas past 28 digits were rounded.
        for t in [
            "0.0000000000000000000000404864094e20",
            "0.0000000000000000000000000000005e+01",
            "9900003000.010999999999999999909e0",
        ] {
            // Refused (too many digits to read exactly), never rounded.
            assert!(Amount::parse_signed(t).is_err(), "{t}");
        }
        assert_eq!(Amount::parse_signed("9e-+9"), Err(DecimalError::Syntax));
        assert_eq!(Amount::parse_signed("1.e3"), Err(DecimalError::Syntax));
        assert_eq!(Amount::parse_signed("e3"), Err(DecimalError::Syntax));
        assert_eq!(Amount::parse_signed("2.5e3").unwrap().to_string(), "2500");
        assert_eq!(
            Amount::parse_signed("25E-10"),
            Err(DecimalError::TooPrecise)
        );
        assert_eq!(Amount::parse_signed("25e-10").ok(), None);
        assert_eq!(Amount::parse_signed("1e-9").unwrap(), Amount(1));
        assert_eq!(Amount::parse_signed("-1.5e+2").unwrap().to_string(), "-150");
        assert_eq!(Amount::parse_signed("0e999").unwrap(), Amount::ZERO);
        assert_eq!(Amount::parse_signed("1e18"), Err(DecimalError::TooLarge));
        assert_eq!(
            Amount::parse_signed("9.99999999999999999e17")
                .unwrap()
                .to_string(),
            "999999999999999999"
        );
        assert_eq!(Amount::parse_signed("1e99999"), Err(DecimalError::TooLarge));
        // Found by the fuzzer in the first version of this: the scale arithmetic overflowed.
        assert_eq!(
            Amount::parse_signed("1e9223372036854775807"),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(
            Amount::parse_signed("1e-9223372036854775808"),
            Err(DecimalError::TooPrecise)
        );
    }
}
