//! Target names with symbol versions, as `functions[].target` writes them: `NAME`,
//! `NAME@VERSION` (that version, default or not) and `NAME@@VERSION` (that version, which must
//! be the default one). An unversioned name in an object that defines several versions of it
//! (glibc's `memcpy@GLIBC_2.2.5` and `memcpy@@GLIBC_2.14`) is not guessed: the choice is
//! refused, naming every version.

use super::{Object, Symbol};

/// A target name split into the symbol's name and the version it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned<'a> {
    pub name: &'a str,
    pub version: Option<&'a str>,
    /// Written `NAME@@VERSION`: the default version.
    pub default: bool,
}

/// Splits `NAME@VERSION` and `NAME@@VERSION`; a name without `@` (or with nothing on either
/// side of it) is taken as it is.
pub fn split(target: &str) -> Versioned<'_> {
    let plain = Versioned { name: target, version: None, default: false };
    let Some((name, version)) = target.split_once('@') else { return plain };
    let (version, default) = match version.strip_prefix('@') {
        Some(v) => (v, true),
        None => (version, false),
    };
    if name.is_empty() || version.is_empty() || version.contains('@') {
        return plain;
    }
    Versioned { name, version: Some(version), default }
}

/// Why a target name selects no single symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Several file-local definitions, none global, at these addresses.
    Ambiguous(Vec<u64>),
    /// An unversioned name the object defines in several versions: each, as `NAME@VER` or
    /// `NAME@@VER` (the default).
    Versions(Vec<String>),
    /// `NAME@@VER` where `VER` is defined but is not the default version.
    NotDefault(String),
}

impl Object {
    /// The versions `.dynsym` defines `name` in, as `name@VER` or `name@@VER` (the default),
    /// in table order.
    pub fn versions_of(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.dynsyms.iter().filter(|s| s.defined && s.global && s.name == name) {
            let Some(v) = s.version.as_deref() else { continue };
            let text = if s.default_version { format!("{name}@@{v}") } else { format!("{name}@{v}") };
            if !out.contains(&text) {
                out.push(text);
            }
        }
        out
    }

    /// The symbol `target` names (see [`split`]): with a version, the exported definition of
    /// that version; without one, as [`Object::lookup`] finds it, unless the object exports the
    /// name in several versions.
    pub fn lookup_target(&self, target: &str) -> std::result::Result<Option<&Symbol>, Choice> {
        let v = split(target);
        let Some(version) = v.version else {
            let versions = self.versions_of(target);
            if versions.len() > 1 {
                return Err(Choice::Versions(versions));
            }
            return self.lookup(target).map_err(Choice::Ambiguous);
        };
        let found = self
            .named(v.name)
            .filter(|(dynamic, s)| *dynamic && s.global && s.version.as_deref() == Some(version))
            .map(|(_, s)| s)
            .next();
        match found {
            Some(s) if v.default && !s.default_version => Err(Choice::NotDefault(format!("{}@{version}", v.name))),
            found => Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_at_their_version() {
        let s = |t| split(t);
        assert_eq!(s("memcpy"), Versioned { name: "memcpy", version: None, default: false });
        assert_eq!(s("memcpy@GLIBC_2.2.5"), Versioned { name: "memcpy", version: Some("GLIBC_2.2.5"), default: false });
        assert_eq!(s("memcpy@@GLIBC_2.14"), Versioned { name: "memcpy", version: Some("GLIBC_2.14"), default: true });
        for odd in ["@GLIBC_2.14", "memcpy@", "memcpy@@", "a@b@c", "store.c::values"] {
            assert_eq!(s(odd).version, None, "{odd}");
        }
    }

    #[test]
    fn the_c_library_versions_are_chosen_not_guessed() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap();
        let o = Object::load_tables(std::path::Path::new(path), "libc").unwrap();
        let versions = o.versions_of("memcpy");
        assert!(versions.iter().any(|v| v.starts_with("memcpy@@")), "{versions:?}");
        assert!(versions.iter().any(|v| v.starts_with("memcpy@") && !v.starts_with("memcpy@@")), "{versions:?}");
        assert_eq!(o.lookup_target("memcpy").unwrap_err(), Choice::Versions(versions.clone()));
        for v in &versions {
            let s = o.lookup_target(v).unwrap().unwrap();
            assert_eq!(s.default_version, v.contains("@@"), "{v}");
        }
        let old = versions.iter().find(|v| !v.contains("@@")).unwrap();
        let as_default = old.replacen('@', "@@", 1);
        assert_eq!(o.lookup_target(&as_default).unwrap_err(), Choice::NotDefault(old.clone()));
        assert!(o.lookup_target("memcpy@NO_SUCH_VERSION").unwrap().is_none());
        // One version only: the plain name is fine.
        assert!(o.lookup_target("getpid").unwrap().is_some());
    }
}
