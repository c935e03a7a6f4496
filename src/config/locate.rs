//! Finding the line of a key path (`segment[2].tcp_ports[1]`,
//! `limits.idle_timeout`) in config text, for errors and warnings found
//! after deserialising. Uses the spans of a `toml_edit` parse of the same
//! text, so tables written as headers, dotted keys, inline tables and
//! multi-line arrays are all found exactly.

use toml_edit::{Array, ArrayOfTables, ImDocument, Item, TableLike, Value};

/// The parsed text, reused for many look-ups (one per warning).
pub(crate) struct Locator<'t> {
    text: &'t str,
    doc: Option<ImDocument<&'t str>>,
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a dyn TableLike),
    Tables(&'a ArrayOfTables),
    Array(&'a Array),
    Leaf,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        if let Some(a) = item.as_array_of_tables() {
            Self::Tables(a)
        } else if let Some(t) = item.as_table_like() {
            Self::Table(t)
        } else if let Some(a) = item.as_array() {
            Self::Array(a)
        } else {
            Self::Leaf
        }
    }

    fn of_value(v: &'a Value) -> Self {
        if let Some(t) = v.as_inline_table() {
            Self::Table(t)
        } else if let Some(a) = v.as_array() {
            Self::Array(a)
        } else {
            Self::Leaf
        }
    }

    /// The `i`th element and where it starts.
    fn index(self, i: usize) -> Option<(Self, Option<usize>)> {
        match self {
            Self::Tables(a) => a
                .get(i)
                .map(|t| (Self::Table(t), t.span().map(|s| s.start))),
            Self::Array(a) => a
                .get(i)
                .map(|v| (Self::of_value(v), v.span().map(|s| s.start))),
            Self::Table(_) | Self::Leaf => None,
        }
    }

    /// The value at `key` and where its key starts.
    fn key(self, key: &str) -> Option<(Self, Option<usize>)> {
        let Self::Table(t) = self else { return None };
        let (k, item) = t.get_key_value(key)?;
        let at = k.span().or_else(|| item.span()).map(|s| s.start);
        Some((Self::of_item(item), at))
    }
}

impl<'t> Locator<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        Self {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line of the deepest part of `key` present in the text: the
    /// key itself, or else the table holding it (a missing key with a
    /// default is reported at its table's header).
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut found = None;
        for part in key.split('.') {
            let (name, mut rest) = match part.find('[') {
                Some(i) => part.split_at(i),
                None => (part, ""),
            };
            let Some((next, at)) = node.key(name) else {
                break;
            };
            node = next;
            found = at.or(found);
            while let Some(r) = rest.strip_prefix('[') {
                let Some((n, tail)) = r.split_once(']') else {
                    return found.map(|o| super::line_of_offset(self.text, o));
                };
                rest = tail;
                let Some((next, at)) = n.parse().ok().and_then(|i| node.index(i)) else {
                    return found.map(|o| super::line_of_offset(self.text, o));
                };
                node = next;
                found = at.or(found);
            }
        }
        found.map(|o| super::line_of_offset(self.text, o))
    }
}

#[cfg(test)]
mod tests {
    use super::Locator;

    const TEXT: &str = r#"trust_domain = "x"
dr.trigger = "static:on"
[limits]
idle_timeout = "5s"

[[segment]]
name = "a"
tcp_ports = ["1"]

[[segment]]
name = "b"
domains = [
  "b.example",
  "c.example",
]
[[segment]]
name = "c"
inline = { deep = [1, 2] }
"#;

    #[test]
    fn finds_keys_tables_and_array_items() {
        let l = Locator::new(TEXT);
        let line = |k| l.line(k);
        assert_eq!(line("trust_domain"), Some(1));
        assert_eq!(line("dr.trigger"), Some(2));
        assert_eq!(line("limits"), Some(3));
        assert_eq!(line("limits.idle_timeout"), Some(4));
        assert_eq!(line("segment[0]"), Some(6));
        assert_eq!(line("segment[0].tcp_ports"), Some(8));
        assert_eq!(line("segment[1].name"), Some(11));
        assert_eq!(line("segment[1].domains[1]"), Some(14));
        // Missing key: its table; missing index: the deepest part found.
        assert_eq!(line("segment[1].tcp_ports"), Some(10));
        assert_eq!(line("segment[1].domains[7]"), Some(12));
        assert_eq!(line("segment[2].inline.deep[1]"), Some(18));
        assert_eq!(line("segment[9].name"), Some(6));
        assert_eq!(line("nothing.here"), None);
        assert_eq!(Locator::new("not = [toml").line("not"), None);
    }
}
