//! The PROXY protocol header (v1 and v2): any bytes parse to a header within the buffer,
//! a need for more, or a refusal, and a header's bytes parse the same with anything after them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd::proto::proxy::{parse, Parsed, V2_MAX};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Parsed::Done(header, len) => {
            assert!(len <= data.len() && len <= V2_MAX);
            let mut longer = data[..len].to_vec();
            longer.extend_from_slice(b"\x00\x01 trailing");
            assert_eq!(parse(&longer), Parsed::Done(header, len));
        }
        Parsed::Incomplete => assert!(data.len() < V2_MAX),
        Parsed::Invalid(_) => {}
    }
});
