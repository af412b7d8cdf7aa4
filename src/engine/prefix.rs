//! Prefix cache: keys and values of recent prompts, so a new prompt that starts with
//! the same tokens (the chat template's system prompt, an earlier turn of the same
//! conversation) skips recomputing them.
//!
//! A key or value at position `i` depends only on tokens `0..=i` and on the weights, so
//! an entry is reusable for any prompt of the same version that shares its first tokens;
//! the longest shared run is copied into the new sequence's cache and only the rest of
//! the prompt is prefilled. Entries are keyed by version (versions are immutable), and
//! the cache is bounded in bytes with least-recently-used eviction. The last prompt
//! token is always recomputed: its logits give the first sampled token.
//!
//! An entry is a compact copy of a finished prompt's cache. A lookup hands out a
//! read-only handle on it; the sequence copies the prefix into its own cache when it
//! first runs and drops the handle, so no sequence ever writes to an entry.

use candle_core::DType;

use crate::model::{KvCache, Result};

/// Fewest shared tokens worth a copy.
const MIN_REUSE: usize = 8;

struct Entry {
    version: String,
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: usize,
    last_used: u64,
}

/// Bounded store of prompt prefixes' keys and values.
pub(super) struct PrefixCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry>,
}

/// Tokens `a` and `b` share at their start.
fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes of keys and values (0: off). One entry
    /// holds at most a quarter of it, so a long prompt keeps only its beginning.
    pub(super) fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// Whether the cache keeps anything (a budget above 0).
    pub(super) fn is_enabled(&self) -> bool {
        self.budget > 0
    }

    /// Bytes held.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    /// The longest cached prefix of `prompt` for `version` in caches of `dtype`: a
    /// handle on the entry's keys and values (no copy) and how many of its tokens to
    /// take. `None` when nothing worth reusing is held.
    pub(super) fn lookup(
        &mut self,
        version: &str,
        prompt: &[u32],
        dtype: DType,
    ) -> Option<(KvCache, usize)> {
        if self.budget == 0 || prompt.len() <= MIN_REUSE {
            return None;
        }
        // The last prompt token is always recomputed (module docs).
        let limit = prompt.len() - 1;
        let (n, entry) = self
            .entries
            .iter_mut()
            .filter(|e| e.version == version && e.cache.dtype() == dtype)
            .map(|e| (shared_prefix(&e.tokens, prompt).min(limit), e))
            .max_by_key(|(n, _)| *n)?;
        if n < MIN_REUSE {
            return None;
        }
        self.clock += 1;
        entry.last_used = self.clock;
        Some((entry.cache.clone(), n))
    }

    /// Whether a sequence about to prefill `prompt` should wait for `other`, a prompt
    /// of the same version being prefilled now: once `other` is done and remembered,
    /// `prompt` would reuse at least [`MIN_REUSE`] more tokens than the cache offers it
    /// today (`per_token`: bytes one token's keys and values take). Prompts that
    /// arrive together with a shared start (the same question twice, `n` choices of
    /// one request, one system prompt) then compute it once instead of side by side.
    pub(super) fn worth_waiting(
        &self,
        version: &str,
        prompt: &[u32],
        dtype: DType,
        other: &[u32],
        per_token: usize,
    ) -> bool {
        if self.budget == 0 || per_token == 0 || prompt.len() <= MIN_REUSE {
            return false;
        }
        let limit = (prompt.len() - 1).min(self.budget / 4 / per_token);
        let later = shared_prefix(other, prompt).min(limit);
        let now = self
            .entries
            .iter()
            .filter(|e| e.version == version && e.cache.dtype() == dtype)
            .map(|e| shared_prefix(&e.tokens, prompt).min(limit))
            .max()
            .unwrap_or(0);
        later >= now + MIN_REUSE
    }

    /// Remembers the first tokens of `prompt`, whose keys and values `cache` holds.
    pub(super) fn insert(&mut self, version: &str, prompt: &[u32], cache: &KvCache) -> Result<()> {
        if self.budget == 0 || prompt.len() <= MIN_REUSE {
            return Ok(());
        }
        let per_token = cache.bytes_per_token();
        if per_token == 0 {
            return Ok(());
        }
        let len = prompt
            .len()
            .min(cache.len())
            .min(self.budget / 4 / per_token);
        if len <= MIN_REUSE {
            return Ok(());
        }
        let tokens = &prompt[..len];
        self.clock += 1;
        // Already covered by an entry that starts with these tokens.
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.version == version && e.tokens.starts_with(tokens))
        {
            e.last_used = self.clock;
            return Ok(());
        }
        let mut copy = KvCache::with_dtype(cache.num_layers(), cache.dtype()).reserving(len);
        copy.extend_from(cache, len)?;
        let bytes = copy.size_in_bytes();
        // Entries this one extends (an earlier turn of the same conversation) are
        // superseded.
        self.remove_where(|e| e.version == version && tokens.starts_with(&e.tokens));
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let e = self.entries.swap_remove(oldest);
            self.used -= e.bytes;
        }
        self.used += bytes;
        self.entries.push(Entry {
            version: version.to_string(),
            tokens: tokens.to_vec(),
            cache: copy,
            bytes,
            last_used: self.clock,
        });
        Ok(())
    }

    fn remove_where(&mut self, pred: impl Fn(&Entry) -> bool) {
        let mut freed = 0;
        self.entries.retain(|e| {
            let drop = pred(e);
            if drop {
                freed += e.bytes;
            }
            !drop
        });
        self.used -= freed;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    const LAYERS: usize = 2;

    /// A cache of `tokens` whose keys and values encode each token's id and position,
    /// as a model's would depend on them.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut c = KvCache::new(LAYERS);
        for (pos, &t) in tokens.iter().enumerate() {
            for layer in 0..LAYERS {
                let v = t as f32 * 1000.0 + pos as f32 + layer as f32 * 0.5;
                let k = Tensor::full(v, (2, 1, 4), &Device::Cpu).expect("k");
                let vv = Tensor::full(-v, (2, 1, 4), &Device::Cpu).expect("v");
                c.append(layer, &k, &vv).expect("append");
            }
        }
        c
    }

    fn prompt(start: &[u32], rest: std::ops::Range<u32>) -> Vec<u32> {
        start.iter().copied().chain(rest).collect()
    }

    #[test]
    fn the_longest_shared_prefix_of_the_same_version_is_reused_and_copied_exactly() {
        let system: Vec<u32> = (1..=12).collect();
        let a = prompt(&system, 100..110);
        let b = prompt(&system, 200..205);
        let mut pc = PrefixCache::new(1 << 20);
        pc.insert("m@v1", &a, &cache_of(&a)).expect("insert");
        assert!(pc.used() > 0);

        let (src, n) = pc.lookup("m@v1", &b, DType::F32).expect("hit");
        assert_eq!(n, system.len());
        let mut fresh = KvCache::new(LAYERS);
        fresh.extend_from(&src, n).expect("copy");
        let want = cache_of(&b[..n]);
        for layer in 0..LAYERS {
            let (gk, gv) = fresh.layer(layer).expect("copied layer");
            let (wk, wv) = want.layer(layer).expect("layer");
            for (got, want) in [(gk, wk), (gv, wv)] {
                let diff: f32 = (got - want)
                    .and_then(|d| d.abs()?.sum_all()?.to_scalar())
                    .expect("diff");
                assert_eq!(diff, 0.0, "layer {layer}: copied keys or values differ");
            }
        }

        // The same prompt again: everything but its last token.
        assert_eq!(
            pc.lookup("m@v1", &a, DType::F32).map(|x| x.1),
            Some(a.len() - 1)
        );
        // Another version, another storage dtype, or too little in common: nothing.
        assert!(pc.lookup("m@v2", &b, DType::F32).is_none());
        assert!(pc.lookup("m@v1", &b, DType::F16).is_none());
        let short = prompt(&system[..MIN_REUSE - 1], 300..320);
        assert!(pc.lookup("m@v1", &short, DType::F32).is_none());
        // Off: nothing stored, nothing found.
        let mut off = PrefixCache::new(0);
        off.insert("m@v1", &a, &cache_of(&a)).expect("insert");
        assert_eq!(off.used(), 0);
        assert!(off.lookup("m@v1", &a, DType::F32).is_none());
    }

    /// A prompt waits for another being prefilled only when that one, once kept, would
    /// give it at least MIN_REUSE more tokens than the cache holds for it now.
    #[test]
    fn prompts_wait_for_a_shared_start_being_computed() {
        let per_token = cache_of(&[1]).bytes_per_token();
        let system: Vec<u32> = (1..=12).collect();
        let q1 = prompt(&system, 100..110);
        let q2 = prompt(&system, 200..210);
        let mut pc = PrefixCache::new(1 << 20);
        // Nothing cached: the same question again, or one sharing the system prompt,
        // is worth waiting for; an unrelated one, another version, or a cache that is
        // off is not.
        assert!(pc.worth_waiting("v", &q1, DType::F32, &q1, per_token));
        assert!(pc.worth_waiting("v", &q2, DType::F32, &q1, per_token));
        let other: Vec<u32> = (500..530).collect();
        assert!(!pc.worth_waiting("v", &other, DType::F32, &q1, per_token));
        let off = PrefixCache::new(0);
        assert!(!off.worth_waiting("v", &q1, DType::F32, &q1, per_token));
        // With the system prompt cached, q2 gains nothing from q1 (they share only
        // that), but the same question again still gains its own 10 tokens.
        pc.insert("v", &q1, &cache_of(&q1)).expect("insert");
        let q3 = prompt(&system, 300..310);
        let mut q3_again = q3.clone();
        q3_again.push(7);
        assert!(!pc.worth_waiting("v", &q2, DType::F32, &q3, per_token));
        assert!(pc.worth_waiting("v", &q3_again, DType::F32, &q3, per_token));
        // What one entry may keep bounds the gain: with room for 7 tokens per entry
        // (a quarter of 28), nothing is worth waiting for.
        let small = PrefixCache::new(28 * per_token);
        assert!(!small.worth_waiting("v", &q1, DType::F32, &q1, per_token));
    }

    #[test]
    fn the_cache_stays_within_its_budget_and_evicts_the_least_recently_used() {
        let per_token = cache_of(&[1]).bytes_per_token();
        // Room for 72 tokens; one entry keeps at most 18.
        let mut pc = PrefixCache::new(72 * per_token);
        let long: Vec<u32> = (0..50).collect();
        pc.insert("v", &long, &cache_of(&long)).expect("insert");
        assert_eq!(
            pc.used(),
            18 * per_token,
            "a long prompt keeps its first quarter"
        );
        assert_eq!(pc.lookup("v", &long, DType::F32).map(|x| x.1), Some(18));

        let prompts: Vec<Vec<u32>> = (1..=5u32)
            .map(|i| (0..16).map(|j| i * 100 + j).collect())
            .collect();
        for p in &prompts[..4] {
            pc.insert("v", p, &cache_of(p)).expect("insert");
            assert!(pc.used() <= 72 * per_token);
        }
        // 18 + 4 x 16 tokens do not fit: the oldest (the long prompt) went first.
        assert!(pc.lookup("v", &long, DType::F32).is_none());
        // Touch prompts[0], then a fifth prompt evicts prompts[1], not prompts[0].
        assert!(pc.lookup("v", &prompts[0], DType::F32).is_some());
        pc.insert("v", &prompts[4], &cache_of(&prompts[4]))
            .expect("insert");
        assert!(pc.lookup("v", &prompts[0], DType::F32).is_some());
        assert!(pc.lookup("v", &prompts[1], DType::F32).is_none());
        assert!(pc.used() <= 72 * per_token);
    }

    #[test]
    fn a_later_turn_supersedes_the_entry_it_extends() {
        let per_token = cache_of(&[1]).bytes_per_token();
        let mut pc = PrefixCache::new(1000 * per_token);
        let turn1: Vec<u32> = (0..20).collect();
        let turn2: Vec<u32> = (0..40).collect();
        pc.insert("v", &turn1, &cache_of(&turn1)).expect("insert");
        pc.insert("v", &turn2, &cache_of(&turn2)).expect("insert");
        assert_eq!(pc.used(), 40 * per_token, "turn 1's entry was dropped");
        // Turn 1's prompt is still served from turn 2's entry.
        assert_eq!(pc.lookup("v", &turn1, DType::F32).map(|x| x.1), Some(19));
        // Inserting a prompt already covered stores nothing new.
        pc.insert("v", &turn1, &cache_of(&turn1)).expect("insert");
        assert_eq!(pc.used(), 40 * per_token);
    }
}
