#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lifeboat::fuzzing::dr_machine(data));
