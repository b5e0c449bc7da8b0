//! CNI spec versions: what each version lets a runtime do.

/// A `major.minor.patch` CNI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// ADD passes the previous plugin's result on from 0.3.0.
    pub fn chains_add(self) -> bool {
        self >= Version(0, 3, 0)
    }

    /// DEL gets the cached result, and CHECK exists, from 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version(0, 4, 0)
    }

    /// STATUS and GC exist from 1.1.0.
    pub fn has_status_gc(self) -> bool {
        self >= Version(1, 1, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_capabilities() {
        assert_eq!(Version::parse("1.0.0"), Some(Version(1, 0, 0)));
        assert_eq!(Version::parse("0.3"), Some(Version(0, 3, 0)));
        assert_eq!(Version::parse("x"), None);
        assert_eq!(Version::parse("1.0.0.1"), None);
        assert!(!Version(0, 2, 0).chains_add());
        assert!(Version(0, 3, 1).chains_add() && !Version(0, 3, 1).has_check());
        assert!(Version(0, 4, 0).has_check() && !Version(1, 0, 0).has_status_gc());
        assert!(Version(1, 1, 0).has_status_gc());
    }
}
