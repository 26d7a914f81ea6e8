//! Every input is an `.lmn` file: it is refused with an error, or it
//! validates and runs on zero inputs in every mode, within caps small enough
//! that an allocation the file merely claims stands out (libFuzzer's
//! `-rss_limit_mb` and `-malloc_limit_mb` turn one into a crash).
//!
//! Mutations are structure-aware half of the time: the header is decoded,
//! one of its entries (a shape, an attribute, a tensor or value reference, a
//! count) is changed, and the file is laid out again with a valid preamble,
//! padding and checksum, so that the change reaches the validator and the
//! runtime instead of stopping at the first check.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use lumijax_export::{Limits, Model, Runtime};
use rmpv::Value as V;

/// 256 MiB and 2²⁸ multiply-adds: a run within them stays far below the
/// fuzzer's memory limit and takes milliseconds.
const LIMITS: Limits = Limits { max_memory_bytes: 256 << 20, max_work: 1 << 28 };

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = Model::from_bytes_with(data, LIMITS) {
        let _ = Runtime::new(Arc::new(model)).check_on_zeros();
    }
});

/// xorshift64*: the mutator's choices, from libFuzzer's seed.
struct Choices(u64);

impl Choices {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Sizes and counts that sit on the edges the validator and runtime guard.
const INTERESTING: [u64; 22] = [0, 1, 2, 3, 4, 7, 8, 9, 16, 63, 64, 65, 255, 256, 1000, 4096, 40_000, 1 << 16, 1 << 28, 1 << 31, 1 << 32, u64::MAX];

/// Every node of the header tree, as paths of child indices, with the
/// strings seen (names to swap in as references).
fn walk(v: &V, path: &mut Vec<usize>, nodes: &mut Vec<Vec<usize>>, strings: &mut Vec<String>) {
    nodes.push(path.clone());
    match v {
        V::Array(items) => items.iter().enumerate().for_each(|(i, item)| {
            path.push(i);
            walk(item, path, nodes, strings);
            path.pop();
        }),
        V::Map(entries) => entries.iter().enumerate().for_each(|(i, (_, item))| {
            path.push(i);
            walk(item, path, nodes, strings);
            path.pop();
        }),
        V::String(s) => strings.extend(s.as_str().map(str::to_string)),
        _ => {}
    }
}

fn at<'a>(v: &'a mut V, path: &[usize]) -> &'a mut V {
    path.iter().fold(v, |v, &i| match v {
        V::Array(items) => &mut items[i],
        V::Map(entries) => &mut entries[i].1,
        _ => unreachable!("paths come from walk"),
    })
}

/// One structural change to the header.
fn mutate_header(header: &mut V, choices: &mut Choices) {
    let (mut nodes, mut strings) = (Vec::new(), Vec::new());
    walk(header, &mut Vec::new(), &mut nodes, &mut strings);
    let path = nodes[choices.below(nodes.len())].clone();
    let pick = choices.below(8);
    let node = at(header, &path);
    match node {
        V::Integer(i) => {
            let old = i.as_u64().unwrap_or(0);
            *node = match pick {
                0 => V::from(old.wrapping_add(1)),
                1 => V::from(old.saturating_sub(1)),
                2 => V::from(-1),
                3 => V::from(old.saturating_mul(2)),
                _ => V::from(INTERESTING[choices.below(INTERESTING.len())]),
            }
        }
        V::String(_) if !strings.is_empty() => *node = V::from(strings[choices.below(strings.len())].as_str()),
        V::Array(items) => match pick {
            0 if !items.is_empty() => {
                items.remove(choices.below(items.len()));
            }
            1 if !items.is_empty() => {
                let copy = items[choices.below(items.len())].clone();
                items.insert(choices.below(items.len() + 1), copy);
            }
            2 => items.reverse(),
            3 if items.len() > 1 => {
                let (a, b) = (choices.below(items.len()), choices.below(items.len()));
                items.swap(a, b);
            }
            _ => items.push(V::from(INTERESTING[choices.below(INTERESTING.len())])),
        },
        V::Map(entries) if !entries.is_empty() => {
            let i = choices.below(entries.len());
            match pick {
                0 | 1 => {
                    entries.remove(i);
                }
                2 => entries[i].1 = V::Nil,
                3 => entries[i].1 = V::from(INTERESTING[choices.below(INTERESTING.len())]),
                _ => {
                    let j = choices.below(entries.len());
                    let value = entries[j].1.clone();
                    entries[i].1 = value;
                }
            }
        }
        V::F64(_) | V::F32(_) => *node = [V::from(0.0), V::from(-1.0), V::from(f64::NAN), V::from(1e30), V::Nil][choices.below(5)].clone(),
        V::Nil | V::Boolean(_) => *node = V::from(INTERESTING[choices.below(INTERESTING.len())]),
        _ => *node = V::Nil,
    }
}

/// `file` with its header changed structurally and laid out again, or
/// `None` when the header does not decode.
fn restructure(file: &[u8], choices: &mut Choices) -> Option<Vec<u8>> {
    let header_len = usize::try_from(u64::from_le_bytes(file.get(8..16)?.try_into().ok()?)).ok()?;
    let mut raw = file.get(16..16usize.checked_add(header_len)?)?;
    let mut header = rmpv::decode::read_value(&mut raw).ok()?;
    let data = file.get((16 + header_len).next_multiple_of(64)..).unwrap_or(&[]);
    for _ in 0..1 + choices.below(3) {
        mutate_header(&mut header, choices);
    }
    let mut out = file[..8].to_vec();
    let mut encoded = Vec::new();
    rmpv::encode::write_value(&mut encoded, &header).ok()?;
    out.extend((encoded.len() as u64).to_le_bytes());
    out.extend(encoded);
    out.resize(out.len().next_multiple_of(64), 0);
    out.extend(data);
    Some(out)
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut choices = Choices(u64::from(seed) | 1 << 40);
    if choices.below(2) == 0 {
        if let Some(file) = restructure(&data[..size], &mut choices).filter(|f| f.len() <= max_size) {
            data[..file.len()].copy_from_slice(&file);
            return file.len();
        }
    }
    fuzzer_mutate(data, size, max_size)
});
