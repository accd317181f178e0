//! The config parser: any text gives a config or a positioned error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd::config::{Config, Source};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Config::parse(text, Source::Embedded) {
            Ok(c) => {
                // The effective config is itself a valid config with the same meaning
                // (secrets are redacted in it, so compare the printed forms).
                let again = Config::parse(&c.to_toml(), Source::Embedded).expect("effective config reparses");
                assert_eq!(c.to_toml(), again.to_toml());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
