//! Bounded capture of a command's output: the head and the tail are kept, the middle is counted.
//!
//! A model reading command output needs the start (what ran) and above all the end (the test
//! summary, the final error), so a long stream loses its middle, never its tail. Memory stays at
//! `limit` bytes per stream however much the command prints.

use std::collections::VecDeque;

/// The first and last `limit / 2` bytes of a stream, and how many bytes it had in all.
#[derive(Debug)]
pub struct HeadTail {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    half: usize,
    total: u64,
}

impl HeadTail {
    pub fn new(limit: usize) -> Self {
        Self {
            head: Vec::new(),
            tail: VecDeque::new(),
            half: (limit / 2).max(1),
            total: 0,
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        self.total = self.total.saturating_add(chunk.len() as u64);
        let room = self.half - self.head.len();
        if room > 0 {
            let take = room.min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
        }
        if chunk.len() >= self.half {
            self.tail.clear();
            chunk = &chunk[chunk.len() - self.half..];
        }
        self.tail.extend(chunk);
        let excess = self.tail.len().saturating_sub(self.half);
        self.tail.drain(..excess);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    /// The stream as text in at most about `budget` bytes: whole if it fits, else its first and
    /// last `budget / 2` bytes around a marker saying how much was cut.
    pub fn render(&self, budget: usize) -> String {
        let kept = self.head.len() + self.tail.len();
        if self.total == kept as u64 && kept <= budget {
            let mut all = self.head.clone();
            all.extend(&self.tail);
            return String::from_utf8_lossy(&all).into_owned();
        }
        let head_len = (budget / 2).min(self.head.len());
        let tail_len = (budget - head_len).min(self.tail.len());
        let tail: Vec<u8> = self
            .tail
            .range(self.tail.len() - tail_len..)
            .copied()
            .collect();
        let omitted = self.total - (head_len + tail_len) as u64;
        format!(
            "{}\n[... output truncated: {omitted} bytes omitted ...]\n{}",
            String::from_utf8_lossy(&self.head[..head_len]),
            String::from_utf8_lossy(&tail),
        )
    }
}

/// Splits `budget` between two streams of `a` and `b` bytes: a short stream keeps all of its
/// bytes and the long one gets the rest, so a one-line stderr is never cut for a chatty stdout.
pub fn split_budget(budget: usize, a: u64, b: u64) -> (usize, usize) {
    let half = budget / 2;
    let fits = |n: u64| usize::try_from(n).ok().filter(|&n| n <= half);
    match (fits(a), fits(b)) {
        (Some(a), _) => (a, budget - a),
        (None, Some(b)) => (budget - b, b),
        (None, None) => (half, budget - half),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(limit: usize, chunks: &[&[u8]]) -> HeadTail {
        let mut out = HeadTail::new(limit);
        for chunk in chunks {
            out.push(chunk);
        }
        out
    }

    #[test]
    fn short_output_is_kept_whole() {
        let out = capture(100, &[b"hello ", b"world"]);
        assert_eq!(out.render(100), "hello world");
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_counts_the_middle() {
        let body: Vec<u8> = (0..1000u32)
            .flat_map(|i| format!("{i:04}\n").into_bytes())
            .collect();
        let out = capture(100, &body.chunks(7).collect::<Vec<_>>());
        let text = out.render(100);
        assert!(text.starts_with("0000\n0001\n"), "{text}");
        assert!(text.ends_with("0998\n0999\n"), "{text}");
        assert!(
            text.contains("[... output truncated: 4900 bytes omitted ...]"),
            "{text}"
        );
    }

    #[test]
    fn a_smaller_budget_cuts_more() {
        let out = capture(100, &[&[b'a'; 60], &[b'z'; 60]]);
        let text = out.render(20);
        assert!(text.starts_with("aaaaaaaaaa\n[..."), "{text}");
        assert!(text.ends_with("...]\nzzzzzzzzzz"), "{text}");
        assert!(text.contains("100 bytes omitted"), "{text}");
    }

    #[test]
    fn budget_goes_to_the_longer_stream() {
        assert_eq!(split_budget(100, 10, 500), (10, 90));
        assert_eq!(split_budget(100, 500, 0), (100, 0));
        assert_eq!(split_budget(100, 500, 500), (50, 50));
    }
}
