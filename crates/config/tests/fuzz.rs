//! Bounded fuzzing of the configuration loader on stable Rust: valid
//! configurations (the example shipped in the repository and one per
//! section) mutated at the byte, token and line level go through
//! `Config::parse`, the function `serve` and `config check` use.
//!
//! What must hold for every input: no panic, an answer within a bound, and
//! every refusal located (file, line and column) with a message, since an
//! operator fixing a config at 2 a.m. needs to know where to look.
//!
//! `CUTOVER_FUZZ_CASES` sets the number of inputs (default 100,000, the CI
//! budget); `CUTOVER_FUZZ_SEED` the seed.

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_config::Config;
use cutover_test_support::fuzz::{cases, rng};

const EXAMPLE: &str = include_str!("../../../examples/cutover.toml");

const SECTIONS: &str = r#"
state_dir = "/var/lib/cutover"

[proxy]
listen = ["127.0.0.1:8080", "[::1]:8080"]
workers = 2
max_body = "1MB"
trusted_proxies = ["10.0.0.0/8"]

[webhook]
listen = "127.0.0.1:9000"
github_secret_file = "/etc/cutover/github.secret"

[[app]]
name = "web"
hosts = ["example.com", "*.example.com"]
drain_timeout = "5s"
keep_old = "1m"

[app.health]
path = "/health"
expect_status = "200-299"
healthy_after = 2

[app.docker]
image = "registry.local/web:{version}"
port = 8080
env = { A = "1" }

[[app]]
name = "api"
hosts = ["api.example.com"]

[app.swarm]
image = "registry.local/api:{version}"
port = 9000
replicas = 3
constraints = ["node.role == worker"]
"#;

/// Tokens that matter to TOML and to cutover's validators.
const TOKENS: &[&str] = &[
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    ".",
    "\"",
    "'",
    "\"\"\"",
    "#",
    "\n",
    "\\u202e",
    "\\u0000",
    "0",
    "-1",
    "65536",
    "18446744073709551616",
    "1e309",
    "nan",
    "true",
    "\"\"",
    "\"*\"",
    "\"0s\"",
    "\"1ms\"",
    "\"10000000h\"",
    "\"1TB\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:8080\"",
    "[app]",
    "[[app]]",
    "[proxy]",
    "a.b.c.d.e.f.g",
    "{a={b={c={d={e={}}}}}}",
];

/// One to four edits of `text`: bytes, tokens or whole lines.
fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=bytes.len());
        match rng.u8(..6) {
            0 if at < bytes.len() => bytes[at] = rng.u8(..),
            1 => {
                let token = TOKENS[rng.usize(..TOKENS.len())];
                bytes.splice(at..at, token.bytes());
            }
            2 if at < bytes.len() => {
                let end = rng.usize(at..=bytes.len().min(at + 24));
                bytes.drain(at..end);
            }
            3 => duplicate_line(rng, &mut bytes),
            4 => {
                let value = TOKENS[rng.usize(..TOKENS.len())];
                replace_a_value(rng, &mut bytes, value);
            }
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn duplicate_line(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>) {
    let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    if lines.is_empty() {
        return;
    }
    let line = lines[rng.usize(..lines.len())].to_vec();
    let at = rng.usize(..=bytes.len());
    bytes.splice(at..at, line);
}

/// Replaces the value after one `=` with `value`.
fn replace_a_value(rng: &mut fastrand::Rng, bytes: &mut Vec<u8>, value: &str) {
    let equals: Vec<usize> = (0..bytes.len()).filter(|i| bytes[*i] == b'=').collect();
    if equals.is_empty() {
        return;
    }
    let start = equals[rng.usize(..equals.len())] + 1;
    let end = bytes[start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |p| start + p);
    bytes.splice(start..end, format!(" {value}").into_bytes());
}

#[test]
fn mutated_configs_never_panic_and_every_refusal_is_located() {
    let seeds = [EXAMPLE, SECTIONS];
    let file = Path::new("/etc/cutover/cutover.toml");
    for seed in seeds {
        if let Err(e) = Config::parse(file, seed) {
            panic!("a seed config must be valid: {e}");
        }
    }
    let mut rng = rng(0);
    let (mut refused, mut unlocated, mut slowest) = (0usize, Vec::new(), Duration::ZERO);
    for _ in 0..cases() {
        let seed = seeds[rng.usize(..seeds.len())];
        let text = mutate(&mut rng, seed);
        let started = Instant::now();
        let answer = Config::parse(file, &text);
        slowest = slowest.max(started.elapsed());
        if let Err(e) = answer {
            refused += 1;
            assert!(
                !e.message.trim().is_empty(),
                "an empty message for {text:?}"
            );
            if e.position.is_none() && unlocated.len() < 10 {
                unlocated.push(format!("{e} for {text:?}"));
            }
        }
    }
    println!("{} inputs, {refused} refused, slowest {slowest:?}", cases());
    assert!(refused > 0, "the mutations never produced a bad config");
    assert!(
        unlocated.is_empty(),
        "refusals without a location: {unlocated:#?}"
    );
    // A hang shows as one input taking seconds; a loaded machine takes ms.
    assert!(
        slowest < Duration::from_secs(5),
        "one input took {slowest:?}"
    );
}
