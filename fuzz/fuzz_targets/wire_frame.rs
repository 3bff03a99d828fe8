//! The ring's frame decoder on arbitrary bytes: `runtime::wire::decode` must never panic, and
//! whatever it accepts must re-encode to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runtime::wire::{decode, encode, unpack_hidden};
use runtime::{Control, Data};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode::<Data>(data) {
        let again = decode::<Data>(&encode(&msg)).expect("a re-encoded frame decodes");
        assert_eq!(again, msg);
        if let Data::Activations(a) = &msg {
            let mut out = Vec::new();
            let _ = unpack_hidden(&a.hidden, a.f16, &mut out);
        }
    }
    if let Ok(msg) = decode::<Control>(data) {
        let again = decode::<Control>(&encode(&msg)).expect("a re-encoded frame decodes");
        assert_eq!(again, msg);
    }
});
