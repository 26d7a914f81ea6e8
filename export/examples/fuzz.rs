//! Mutation fuzzing of the `.lmn` reader and runtime.
//!
//!     cargo run --release -p lumijax-export --example fuzz -- [ITERATIONS] [SEED]
//!
//! Starting from the conformance fixtures, each input gets one to four
//! mutations (bit flips, interesting bytes and integers, inserted and deleted
//! runs, truncation), biased towards the preamble and header where the
//! structure is. Every input must be refused with an error or, when it still
//! validates, run without a panic. Any panic stops the run and saves the
//! input; the slowest input and the peak resident memory are reported, and
//! the run fails if either is out of bounds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lumijax_export::{Mode, Model, Runtime};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const SEEDS: [&[u8]; 2] = [include_bytes!("../tests/fixtures/gpt.lmn"), include_bytes!("../tests/fixtures/resnet.lmn")];
const INTERESTING_BYTES: [u8; 12] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xcf, 0xdc, 0xdd, 0xdf];
const SLOW: Duration = Duration::from_millis(500);
const MEMORY_LIMIT_KB: u64 = 2 * 1024 * 1024;

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

fn position(rng: &mut ChaCha8Rng, bytes: &[u8]) -> usize {
    let header_end = bytes.get(8..16).map_or(16, |b| 16 + u64::from_le_bytes(b.try_into().unwrap()).min(1 << 20) as usize);
    if !rng.next_u32().is_multiple_of(5) { below(rng, header_end.min(bytes.len())) } else { below(rng, bytes.len()) }
}

fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        return;
    }
    match rng.next_u32() % 6 {
        0 => {
            let at = position(rng, bytes);
            bytes[at] ^= 1 << (rng.next_u32() % 8);
        }
        1 => {
            let at = position(rng, bytes);
            bytes[at] = INTERESTING_BYTES[below(rng, INTERESTING_BYTES.len())];
        }
        2 => {
            let at = position(rng, bytes).min(bytes.len().saturating_sub(8));
            let values = [0u64, 1, u64::MAX, 1 << 63, 1 << 32, bytes.len() as u64, 64];
            let value = values[below(rng, values.len())].to_le_bytes();
            let width = 8.min(bytes.len());
            bytes[at..at + width].copy_from_slice(&value[..width]);
        }
        3 => {
            let at = position(rng, bytes);
            let len = 1 + below(rng, 8);
            let run: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            bytes.splice(at..at, run);
        }
        4 => {
            let at = position(rng, bytes);
            let len = 1 + below(rng, 16);
            let end = (at + len).min(bytes.len());
            bytes.drain(at..end);
        }
        _ => {
            let at = below(rng, bytes.len());
            bytes.truncate(at);
        }
    }
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    std::panic::set_hook(Box::new(|_| {}));
    let (mut accepted, mut ran) = (0u64, 0u64);
    let mut slowest = (Duration::ZERO, 0u64);
    let start = Instant::now();
    for i in 0..iterations {
        let mut bytes = SEEDS[below(&mut rng, SEEDS.len())].to_vec();
        for _ in 0..1 + below(&mut rng, 4) {
            mutate(&mut rng, &mut bytes);
        }
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(model) = Model::from_bytes(&bytes) else { return (false, false) };
            let runtime = Runtime::new(Arc::new(model));
            let inputs = runtime.zero_inputs();
            let mode = if i % 4 == 0 { Mode::Noisy { seed: i } } else { Mode::Ideal };
            (true, runtime.run(&inputs, mode).is_ok())
        }));
        let elapsed = t.elapsed();
        if elapsed > slowest.0 {
            slowest = (elapsed, i);
        }
        match outcome {
            Ok((valid, run)) => {
                accepted += valid as u64;
                ran += run as u64;
            }
            Err(_) => {
                let path = format!("fuzz-crash-{seed}-{i}.lmn");
                std::fs::write(&path, &bytes).ok();
                eprintln!("input {i} panicked; saved to {path}");
                std::process::exit(1);
            }
        }
        if (i + 1) % 100_000 == 0 {
            eprintln!("{} inputs, {:.0} s", i + 1, start.elapsed().as_secs_f64());
        }
    }
    let rss = peak_rss_kb();
    println!("{iterations} inputs in {:.1} s: {accepted} still valid, {ran} of them ran; no panic", start.elapsed().as_secs_f64());
    println!("slowest input {:.1} ms (#{}), peak resident memory {:.0} MiB", slowest.0.as_secs_f64() * 1e3, slowest.1, rss as f64 / 1024.0);
    if slowest.0 > SLOW || rss > MEMORY_LIMIT_KB {
        eprintln!("out of bounds: slowest input over {SLOW:?} or memory over {} MiB", MEMORY_LIMIT_KB / 1024);
        std::process::exit(1);
    }
}
