//! `Config::parse` on arbitrary text never panics, and whatever it accepts
//! is typed (privd's section checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sapper_shared::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(cfg) => {
            if let Some(p) = &cfg.privd {
                assert!((576..=65535).contains(&p.tun.mtu));
            }
            if let Some(n) = &cfg.netd {
                assert!(n.ping_miss_limit.get() >= 1);
            }
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            let _ = e.to_string();
        }
    }
});
