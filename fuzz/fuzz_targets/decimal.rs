//! Exact decimal parsing (`Amount::parse_signed` / `parse_input`, SPEC 1: non-negative,
//! at most 18 integer and 9 fractional digits, JSON numbers or decimal strings). The
//! input is the decimal text, or a JSON number / string holding it.
//!
//! Invariants: no panic; an accepted text is decimal syntax (`-?D*[.D*][e[+-]D+]`) and
//! its value equals that of an independent exact reference parser; a short plain
//! decimal (no exponent, at most 28 digits) is refused only for the reason the
//! reference gives; `parse_input` is `parse_signed` without negatives; formatting reads
//! back; the JSON paths (`amount_field`, `Deserialize`) agree with the text path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meterd::decimal::{Amount, DecimalError, MAX_INPUT, SCALE};
use serde_json::value::RawValue;

/// A syntactically decimal text split into its parts.
struct Parts<'a> {
    neg: bool,
    int: &'a str,
    frac: &'a str,
    exp: Option<i64>,
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// `-?D*[.D*][(e|E)[+-]D+]` with at least one mantissa digit, or `None`.
fn split(text: &str) -> Option<Parts<'_>> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mant, exp) = match rest.find(['e', 'E']) {
        Some(i) => {
            let e = &rest[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !all_digits(digits) {
                return None;
            }
            // Saturate: anything this large is out of range either way.
            let mag = digits.parse::<i64>().unwrap_or(i64::MAX / 4).min(1 << 40);
            (
                &rest[..i],
                Some(if e.starts_with('-') { -mag } else { mag }),
            )
        }
        None => (rest, None),
    };
    let (int, frac) = match mant.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mant, ""),
    };
    if !all_digits(int) || !all_digits(frac) || int.len() + frac.len() == 0 {
        return None;
    }
    Some(Parts {
        neg,
        int,
        frac,
        exp,
    })
}

/// The exact value in nano-units under meterd's rules, by digit arithmetic.
fn reference(p: &Parts<'_>) -> Result<i128, DecimalError> {
    let digits: String = format!("{}{}", p.int, p.frac);
    let mut exp10 = p.exp.unwrap_or(0) - p.frac.len() as i64;
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(0);
    }
    let kept = digits.trim_end_matches('0');
    exp10 += (digits.len() - kept.len()) as i64;
    let nano_exp = exp10 + SCALE as i64;
    if nano_exp < 0 {
        return Err(DecimalError::TooPrecise);
    }
    if kept.len() as i64 + nano_exp > 27 {
        return Err(DecimalError::TooLarge);
    }
    let mut v: i128 = kept.parse().expect("at most 27 digits");
    v *= 10i128.pow(nano_exp as u32);
    assert!(v <= MAX_INPUT);
    Ok(if p.neg { -v } else { v })
}

fn check_text(text: &str) {
    let signed = Amount::parse_signed(text);
    let input = Amount::parse_input(text);
    match signed {
        Ok(a) => {
            assert_eq!(
                input,
                if a.0 < 0 {
                    Err(DecimalError::Negative)
                } else {
                    Ok(a)
                }
            );
            let t = text.trim();
            let p = split(t).unwrap_or_else(|| panic!("accepted non-decimal text {t:?}"));
            assert_eq!(reference(&p), Ok(a.0), "{t:?} read as {a}");
            let shown = a.to_string();
            assert_eq!(
                Amount::parse_signed(&shown),
                Ok(a),
                "{shown} does not read back"
            );
        }
        Err(e) => {
            assert_eq!(input, Err(e.clone()));
            let t = text.trim();
            if let Some(p) = split(t) {
                let plain = p.exp.is_none()
                    && p.int.len() + p.frac.len() <= 28
                    && t.len() <= 64
                    && !t.ends_with('.');
                if plain {
                    assert_eq!(reference(&p).err(), Some(e), "{t:?} refused");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_text(text);
    // The JSON paths: an event value (`amount_field`) and a deserialized amount.
    if let Ok(raw) = serde_json::from_str::<&RawValue>(text) {
        let got = meterd::event::amount_field(raw);
        let t = raw.get();
        if t.starts_with('"') {
            // RawValue does not check string escapes: a bad one must be refused.
            let Ok(s) = serde_json::from_str::<String>(t) else {
                assert!(got.is_err(), "{t} has a bad escape but was accepted");
                return;
            };
            assert_eq!(got.ok(), Amount::parse_input(&s).ok(), "{t}");
            assert_eq!(
                serde_json::from_str::<Amount>(t).ok(),
                Amount::parse_signed(&s).ok()
            );
        } else if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            assert_eq!(got.ok(), Amount::parse_input(t).ok(), "{t}");
        } else {
            assert!(got.is_err(), "{t} read as an amount");
        }
    }
});
