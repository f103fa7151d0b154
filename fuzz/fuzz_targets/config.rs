//! Config YAML → `Config::parse` (serde with deny_unknown_fields, then
//! `validate`). Never a panic; a config that validates must survive the
//! dump (/debug/config serialises it) and parse back to itself.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchyard::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    match Config::parse(text, file) {
        Ok(config) => {
            let dumped = serde_yaml::to_string(&config).expect("a valid config serialises");
            let again = Config::parse(&dumped, file)
                .unwrap_or_else(|e| panic!("dumped config does not parse back: {e}\n{dumped}"));
            assert_eq!(again, config, "config changed through a dump:\n{dumped}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
