//! The policy interface, one private module per released version
//! (`wit/policy@X.Y.Z`, frozen once released). The newest version's types
//! are the host's own ([`wit`]); older versions convert into them, so the
//! rest of the host never sees a version. A component is matched to its
//! version by the version its SDK stamped in it, or else by the names of
//! its exports, before it is linked.

mod older;
mod v0_1;
mod v0_2;
mod v0_3;
mod worlds;

pub use worlds::{Breaker, BreakerPre, HealthCheck, HealthPre, Router, RouterPre};

use super::HostState;
use wasmtime::component::Linker;

/// The interface's types as the host sees them: the newest version's.
pub mod wit {
    pub use super::v0_3::Level;
    pub use super::v0_3::types::*;
}

/// The WIT package plugins are built against.
pub const INTERFACE_PACKAGE: &str = "switchyard:policy";

/// The custom section in which the SDK records the interface version a
/// component was built against.
pub const VERSION_SECTION: &str = "switchyard:policy-version";

/// A released interface version this host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_1,
    V0_2,
    V0_3,
}

impl Version {
    /// Every version this host loads, oldest first.
    pub const SUPPORTED: [Version; 3] = [Version::V0_1, Version::V0_2, Version::V0_3];
    /// The version the SDK and new plugins target.
    pub const NEWEST: Version = Version::V0_3;

    /// `0.1.0`, as in the WIT package.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
            Version::V0_3 => "0.3.0",
        }
    }

    /// The supported version written `text`.
    pub fn parse(text: &str) -> Option<Version> {
        Version::SUPPORTED.into_iter().find(|v| v.as_str() == text)
    }

    /// What this host speaks, for messages: `0.1.0–0.3.0`.
    pub fn range() -> String {
        format!(
            "{}–{}",
            Version::SUPPORTED[0].as_str(),
            Version::NEWEST.as_str()
        )
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{INTERFACE_PACKAGE}@{}", self.as_str())
    }
}

/// Implements one version's `host` and `shared` imports for [`HostState`]
/// by calling its version-free methods; `$attribute` turns the host's
/// attribute value into the version's.
macro_rules! host_imports {
    ($host:ident, $shared:ident, $level:ty, $attribute_ty:ty, $attribute:expr) => {
        impl $host::Host for HostState {
            fn log(&mut self, level: $level, message: String) {
                use tracing::Level as L;
                let level = match level {
                    <$level>::Trace => L::TRACE,
                    <$level>::Debug => L::DEBUG,
                    <$level>::Info => L::INFO,
                    <$level>::Warn => L::WARN,
                    <$level>::Error => L::ERROR,
                };
                self.write_log(level, &message);
            }

            fn attribute(&mut self, index: u32) -> $attribute_ty {
                $attribute(self.attribute_value(index))
            }

            fn now(&mut self) -> u64 {
                crate::clock::nanos()
            }

            fn random(&mut self) -> u64 {
                self.next_random()
            }

            fn counter_add(&mut self, name: String, value: u64) {
                self.add_to_counter(name, value);
            }

            fn gauge_set(&mut self, name: String, value: f64) {
                self.set_gauge(name, value);
            }
        }

        fn shared_error(e: crate::shared::SharedError) -> $shared::SharedError {
            match e {
                crate::shared::SharedError::Unavailable(m) => $shared::SharedError::Unavailable(m),
                crate::shared::SharedError::Invalid(m) => $shared::SharedError::Invalid(m),
            }
        }

        impl $shared::Host for HostState {
            fn counter_add(
                &mut self,
                key: String,
                delta: i64,
                ttl_ms: u32,
            ) -> Result<i64, $shared::SharedError> {
                self.shared_call("counter-add", |s, a| s.counter_add(a, &key, delta, ttl_ms))
                    .map_err(shared_error)
            }

            fn counter_get(&mut self, key: String) -> Result<i64, $shared::SharedError> {
                self.shared_call("counter-get", |s, a| s.counter_get(a, &key))
                    .map_err(shared_error)
            }

            fn get(&mut self, key: String) -> Result<Option<String>, $shared::SharedError> {
                self.shared_call("get", |s, a| s.get(a, &key))
                    .map_err(shared_error)
            }

            fn set(
                &mut self,
                key: String,
                value: String,
                ttl_ms: u32,
            ) -> Result<(), $shared::SharedError> {
                self.shared_call("set", |s, a| s.set(a, &key, &value, ttl_ms))
                    .map_err(shared_error)
            }

            fn wall_clock_ms(&mut self) -> u64 {
                crate::clock::wall_clock_ms()
            }
        }
    };
}
use host_imports;

/// Adds every supported version's imports to `linker`; their names differ
/// by version, so they live side by side.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    v0_1::add_to_linker(linker)?;
    v0_2::add_to_linker(linker)?;
    v0_3::add_to_linker(linker)
}

/// The version stamped in a component's [`VERSION_SECTION`], searched in the
/// component and the core modules it embeds; `None` when there is none (a
/// component built before the SDK stamped it, or without the SDK).
pub fn stamped_version(bytes: &[u8]) -> Option<String> {
    let body = bytes.get(8..)?;
    let mut rest = body;
    while !rest.is_empty() {
        let (&id, after) = rest.split_first()?;
        let (size, after) = leb128(after)?;
        let content = after.get(..size)?;
        rest = &after[size..];
        match id {
            0 => {
                let (len, name_rest) = leb128(content)?;
                let name = name_rest.get(..len)?;
                if name == VERSION_SECTION.as_bytes() {
                    let data = &name_rest[len..];
                    return Some(String::from_utf8_lossy(data).trim().to_string());
                }
            }
            // A core module (1) or a nested component (4): a whole binary.
            1 | 4 => {
                if let Some(found) = stamped_version(content) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

/// An unsigned LEB128 number and what follows it.
fn leb128(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: usize = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of every released interface folder's files. A released
    /// version never changes: a change goes into a new folder.
    const RELEASED: &[(&str, &str)] = &[
        (
            "policy@0.1.0/policy.wit",
            "33926dbeec17b0e3ffdc2245499c860e7310ebdd2cb2c086432da8538564f487",
        ),
        (
            "policy@0.2.0/policy.wit",
            "25a0153be8482284f602a62a20773d555d1395267b9f2f736892b89ad0ce0adb",
        ),
        (
            "policy@0.3.0/policy.wit",
            "873333f8918a0564f1399df722a75ab7daeea9a12880a5260c1cf31ccbfd2179",
        ),
    ];

    #[test]
    fn released_interface_folders_never_change() {
        use sha2::{Digest, Sha256};
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for (file, hash) in RELEASED {
            let bytes = std::fs::read(wit.join(file)).expect("released WIT file");
            assert_eq!(
                super::super::hex(&Sha256::digest(&bytes)),
                *hash,
                "wit/{file} changed after its release; put the change in a new version folder"
            );
        }
        // Every file of every version folder is released and listed.
        for entry in std::fs::read_dir(&wit).expect("wit/") {
            let dir = entry.expect("entry").path();
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            for file in std::fs::read_dir(&dir).expect("folder") {
                let listed = format!(
                    "{name}/{}",
                    file.expect("file").file_name().to_string_lossy()
                );
                assert!(
                    RELEASED.iter().any(|(f, _)| *f == listed),
                    "wit/{listed} has no recorded hash: record it when the version is released"
                );
            }
        }
    }

    /// The SDK packages the interface it binds; its copy is the released
    /// folder, byte for byte, so a published SDK builds what the host loads.
    #[test]
    fn the_sdk_packages_the_released_interface_unchanged() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sdk = root.join("plugins/sdk/wit");
        for entry in std::fs::read_dir(&sdk).expect("plugins/sdk/wit") {
            let dir = entry.expect("entry").path();
            let name = dir.file_name().unwrap_or_default().to_owned();
            for file in std::fs::read_dir(&dir).expect("folder") {
                let file = file.expect("file").path();
                let released = root
                    .join("wit")
                    .join(&name)
                    .join(file.file_name().unwrap_or_default());
                assert_eq!(
                    std::fs::read(&file).ok(),
                    std::fs::read(&released).ok(),
                    "{} differs from {}",
                    file.display(),
                    released.display()
                );
            }
        }
    }

    #[test]
    fn every_supported_version_has_its_folder() {
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        for v in Version::SUPPORTED {
            assert!(wit.join(format!("policy@{}", v.as_str())).is_dir(), "{v}");
        }
        assert_eq!(Version::range(), "0.1.0–0.3.0");
        assert_eq!(Version::parse("0.1.0"), Some(Version::V0_1));
        assert_eq!(Version::parse("9.0.0"), None);
    }

    #[test]
    fn stamps_are_found_in_nested_modules() {
        // A component holding a core module holding the custom section.
        let section = |id: u8, content: &[u8]| {
            let mut s = vec![id, content.len() as u8];
            s.extend_from_slice(content);
            s
        };
        let mut custom = vec![VERSION_SECTION.len() as u8];
        custom.extend_from_slice(VERSION_SECTION.as_bytes());
        custom.extend_from_slice(b"0.2.0");
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.extend(section(0, &custom));
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        component.extend(section(1, &module));
        assert_eq!(stamped_version(&component).as_deref(), Some("0.2.0"));
        assert_eq!(stamped_version(b"\0asm\x0d\0\x01\0"), None);
        // Truncated input is no stamp, not a panic.
        assert_eq!(stamped_version(&component[..component.len() - 3]), None);
    }
}
