//! Splitting a document into chunks to embed: at most `size` characters
//! each, cut where the text has its strongest break (a paragraph, then a
//! sentence or line, then a word), and each starting with up to `overlap`
//! characters from the end of the one before, so a sentence cut off at a
//! chunk's end is still whole in the next.
//!
//! Sizes count characters (Unicode scalar values), not bytes: a limit set
//! for English means the same for text with accents. A word is cut only when
//! it is longer than a whole chunk.

/// Chunk size and overlap, in characters; only valid pairs exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpec {
    size: usize,
    overlap: usize,
}

impl ChunkSpec {
    /// `None` unless `0 < size` and `overlap < size` (an overlap as large
    /// as the chunk would never move forward).
    pub fn new(size: usize, overlap: usize) -> Option<ChunkSpec> {
        (size > 0 && overlap < size).then_some(ChunkSpec { size, overlap })
    }
}

/// The chunks of `text`, in order, each trimmed of surrounding whitespace.
pub fn split(text: &str, spec: ChunkSpec) -> Vec<String> {
    let chars: Vec<char> = text.replace("\r\n", "\n").chars().collect();
    spans(&chars, spec).into_iter().map(|span| chars[span].iter().collect()).collect()
}

/// How strongly the text breaks before a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    Word,
    /// After `.`, `!` or `?` (maybe closed by a quote or bracket), or at a line break.
    Sentence,
    /// After a blank line.
    Paragraph,
}

/// Where a word starts: a chunk may end at `end` (the end of the word
/// before) and the next may begin at `start`.
#[derive(Debug, Clone, Copy)]
struct Break {
    end: usize,
    start: usize,
    strength: Strength,
}

/// Every word start after the first, in order.
fn breaks(chars: &[char]) -> Vec<Break> {
    let mut breaks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let end = i;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if end == 0 || i == chars.len() {
            continue;
        }
        let newlines = chars[end..i].iter().filter(|c| **c == '\n').count();
        let strength = if newlines >= 2 {
            Strength::Paragraph
        } else if newlines == 1 || ends_sentence(&chars[..end]) {
            Strength::Sentence
        } else {
            Strength::Word
        };
        breaks.push(Break { end, start: i, strength });
    }
    breaks
}

fn ends_sentence(before: &[char]) -> bool {
    let mut rest = before;
    while let [head @ .., last] = rest
        && matches!(last, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
    {
        rest = head;
    }
    matches!(rest.last(), Some('.' | '!' | '?' | '…'))
}

/// The chunks as character ranges of `chars`, trimmed, in order.
fn spans(chars: &[char], spec: ChunkSpec) -> Vec<std::ops::Range<usize>> {
    let Some(first) = chars.iter().position(|c| !c.is_whitespace()) else { return Vec::new() };
    let last = chars.iter().rposition(|c| !c.is_whitespace()).expect("a non-whitespace character exists") + 1;
    let breaks = breaks(chars);
    let mut spans = Vec::new();
    let mut start = first;
    loop {
        if last - start <= spec.size {
            spans.push(start..last);
            return spans;
        }
        let limit = start + spec.size;
        // Breaks strictly inside the chunk that fit in it.
        let from = breaks.partition_point(|b| b.start <= start);
        let to = breaks.partition_point(|b| b.end <= limit);
        let inside = &breaks[from..to.max(from)];
        // The strongest break in the chunk's second half (so chunks are not
        // tiny), the last of that strength; else the last word; else the cut
        // has to fall inside a word longer than the chunk.
        let half = start + spec.size / 2;
        let strongest = inside.iter().filter(|b| b.end >= half).map(|b| b.strength).max();
        let cut = match strongest {
            Some(strength) => inside.iter().rfind(|b| b.end >= half && b.strength == strength).copied(),
            None => inside.last().copied(),
        };
        let (end, resume) = cut.map_or((limit, limit), |b| (b.end, b.start));
        spans.push(start..end);

        // The next chunk repeats the end of this one, from the earliest
        // sentence (else word) that starts within `overlap` of its end.
        let window_start = end.saturating_sub(spec.overlap);
        let repeat: Vec<&Break> = breaks[from..]
            .iter()
            .take_while(|b| b.start < end)
            .filter(|b| spec.overlap > 0 && b.start >= window_start && b.start > start)
            .collect();
        let next = repeat.iter().find(|b| b.strength >= Strength::Sentence).or(repeat.first()).map(|b| b.start);
        start = next.unwrap_or(resume);
        while chars[start].is_whitespace() {
            start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize, overlap: usize) -> ChunkSpec {
        ChunkSpec::new(size, overlap).unwrap()
    }

    fn chars(text: &str) -> Vec<char> {
        text.chars().collect()
    }

    /// A sentence of exactly `len` characters (ending with a period), made
    /// of short words, different for each `seed`.
    fn sentence(seed: usize, len: usize) -> String {
        let words = ["grid", "event", "blob", "vector", "chunk", "delivery", "topic", "handler"];
        let mut text = format!("S{seed}");
        let mut i = seed;
        while text.chars().count() + 1 < len {
            i = i.wrapping_mul(31).wrapping_add(7);
            text.push(' ');
            text.push_str(words[i % words.len()]);
        }
        text.truncate(len - 1);
        let text = text.trim_end().to_owned();
        format!("{text}{}.", "x".repeat(len - 1 - text.chars().count()))
    }

    #[test]
    fn a_short_document_is_one_chunk_and_an_empty_one_none() {
        assert_eq!(split("  Hello, world.\n", spec(800, 100)), vec!["Hello, world."]);
        assert!(split(" \n\n \t", spec(800, 100)).is_empty());
        assert!(split("", spec(800, 100)).is_empty());
    }

    #[test]
    fn paragraphs_are_kept_whole_when_they_fit() {
        let first = [sentence(1, 200), sentence(2, 200), sentence(3, 100)].join(" ");
        let second = [sentence(4, 200), sentence(5, 200)].join(" ");
        let third = sentence(6, 300);
        let text = format!("{first}\n\n{second}\n\n{third}\n");
        let chunks = split(&text, spec(800, 0));
        assert_eq!(chunks, vec![first, format!("{second}\n\n{third}")]);
    }

    #[test]
    fn a_long_paragraph_is_cut_after_a_sentence() {
        let sentences: Vec<String> = (0..15).map(|i| sentence(i, 100)).collect();
        let text = sentences.join(" ");
        let chunks = split(&text, spec(450, 0));
        assert_eq!(chunks.len(), 4, "{chunks:#?}");
        for chunk in &chunks {
            assert!(chunk.ends_with('.'), "{chunk:?}");
            assert!(chunk.starts_with('S'), "{chunk:?}");
        }
        assert_eq!(chunks[0], sentences[..4].join(" "));
    }

    #[test]
    fn the_overlap_repeats_the_last_whole_sentence_that_fits() {
        let sentences: Vec<String> = (0..12).map(|i| sentence(i, 90)).collect();
        let text = sentences.join(" ");
        let chunks = split(&text, spec(400, 120));
        // Four sentences fill a chunk (4 × 91 − 1 = 363); the next starts
        // with the fourth again (91 characters back, within the 120).
        assert_eq!(chunks[0], sentences[0..4].join(" "));
        assert_eq!(chunks[1], sentences[3..7].join(" "));
        assert_eq!(chunks[2], sentences[6..10].join(" "));
        assert_eq!(chunks.last().unwrap(), &sentences[9..].join(" "));
    }

    #[test]
    fn without_a_sentence_in_reach_the_overlap_starts_at_a_word() {
        let text = (0..300).map(|i| format!("w{i:03}")).collect::<Vec<_>>().join(" ");
        let chunks = split(&text, spec(100, 12));
        // Words are 4 characters + a space: 20 words fit (99 characters), and
        // the next chunk starts two words back (10 characters of overlap).
        assert_eq!(chunks[0], (0..20).map(|i| format!("w{i:03}")).collect::<Vec<_>>().join(" "));
        assert!(chunks[1].starts_with("w018 w019 w020"), "{}", chunks[1]);
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_cut_where_it_must_be() {
        let long = "a".repeat(250);
        let chunks = split(&format!("start {long} end"), spec(100, 10));
        assert_eq!(chunks[0], "start");
        assert_eq!(chunks[1], "a".repeat(100));
        assert!(chunks.iter().all(|c| c.chars().count() <= 100));
        assert_eq!(chunks.last().unwrap(), &format!("{} end", "a".repeat(50)));
    }

    #[test]
    fn sizes_are_characters_not_bytes() {
        let text = "café crème brûlée ".repeat(20);
        let chunks = split(&text, spec(40, 0));
        assert!(chunks.iter().all(|c| c.chars().count() <= 40), "{chunks:?}");
        assert!(chunks.iter().any(|c| c.len() > 40), "the limit counted bytes: {chunks:?}");
    }

    #[test]
    fn headings_and_list_lines_are_sentence_breaks() {
        let text = format!("# Title\n{}\n- item one\n- item two", "word ".repeat(30).trim_end());
        let chunks = split(&text, spec(160, 0));
        assert_eq!(
            chunks,
            vec![format!("# Title\n{}", "word ".repeat(30).trim_end()), "- item one\n- item two".into()]
        );
    }

    /// Independent of how the cuts are chosen: over many sizes, overlaps and
    /// texts, chunks fit, move forward, overlap by no more than asked, cut
    /// only between words (no word here is longer than a chunk), and
    /// together hold every character of the text that is not whitespace.
    #[test]
    fn chunks_fit_cover_the_text_and_cut_between_words() {
        let mut seed = 17usize;
        let mut next = move |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let mut text = String::new();
            for _ in 0..(1 + next(60)) {
                text.extend("xyzé".chars().cycle().take(1 + next(9)));
                text.push_str(["", ".", "!", "?\"", ","][next(5)]);
                text.push_str([" ", " ", " ", "\n", "\n\n", "  \n \n", "\t"][next(7)]);
            }
            let chars = chars(&text);
            let size = 20 + next(200);
            let overlap = next(size.min(60));
            let ranges = spans(&chars, spec(size, overlap));
            let is_space = |i: usize| i >= chars.len() || chars[i].is_whitespace();
            let mut covered = vec![false; chars.len()];
            for (n, range) in ranges.iter().enumerate() {
                assert!(range.len() <= size && !range.is_empty(), "round {round}: {range:?} of {size}");
                assert!(range.start == 0 || is_space(range.start - 1), "round {round}: starts mid-word {range:?}");
                assert!(is_space(range.end), "round {round}: ends mid-word {range:?}");
                assert!(!is_space(range.start) && !is_space(range.end - 1), "round {round}: not trimmed");
                if n > 0 {
                    let before = &ranges[n - 1];
                    assert!(range.start > before.start, "round {round}: no progress");
                    assert!(before.end.saturating_sub(range.start) <= overlap, "round {round}: overlap too long");
                }
                covered[range.clone()].iter_mut().for_each(|c| *c = true);
            }
            for (i, c) in chars.iter().enumerate() {
                assert!(c.is_whitespace() || covered[i], "round {round}: character {i} ({c:?}) is in no chunk");
            }
        }
    }
}
