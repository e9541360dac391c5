//! Numbers that can only hold values inside their range, so a config value
//! that was read is never checked again where it is used.

use std::time::Duration;

/// An integer in `LO..=HI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounded<const LO: u64, const HI: u64>(u64);

impl<const LO: u64, const HI: u64> Bounded<LO, HI> {
    /// The smallest value.
    pub const MIN: Self = Self(LO);
    /// The largest value.
    pub const MAX: Self = Self(HI);

    /// `v`, if it is in range.
    pub const fn new(v: u64) -> Option<Self> {
        if v >= LO && v <= HI {
            Some(Self(v))
        } else {
            None
        }
    }

    /// A value known at compile time; out of range fails the build.
    pub const fn new_const(v: u64) -> Self {
        match Self::new(v) {
            Some(b) => b,
            None => panic!("constant out of range"),
        }
    }

    /// The value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The value as a `usize` (saturating on 32-bit hosts).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The value as a `u32` (saturating; ranges used with it fit).
    pub fn as_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }

    /// The value read as milliseconds.
    pub const fn millis(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// The range, for error messages.
    pub const fn range() -> (u64, u64) {
        (LO, HI)
    }
}

impl<const LO: u64, const HI: u64> std::fmt::Display for Bounded<LO, HI> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges() {
        type B = Bounded<100, 60_000>;
        assert_eq!(B::new(99), None);
        assert_eq!(B::new(100).map(B::get), Some(100));
        assert_eq!(B::new(60_000).map(B::get), Some(60_000));
        assert_eq!(B::new(60_001), None);
        assert_eq!(B::new_const(250).millis(), Duration::from_millis(250));
        assert_eq!(B::range(), (100, 60_000));
    }
}
