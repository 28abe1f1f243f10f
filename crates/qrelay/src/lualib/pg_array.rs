//! PostgreSQL's array literal syntax (the text form of an array value):
//! `{a,"b c",NULL,{1,2}}`, sans-IO. Encoding quotes every element;
//! decoding takes what the server prints (quoted and unquoted elements,
//! backslash escapes, NULL, nested arrays, an optional `[1:3]=` dimension
//! prefix). Nesting is bounded by [`MAX_DEPTH`] (PostgreSQL's own limit
//! on dimensions).

/// The deepest nesting accepted either way (PostgreSQL's MAXDIM).
pub const MAX_DEPTH: usize = 6;
/// The longest dimension prefix (`[1:3][1:2]=`) skipped when decoding.
const MAX_DIMENSION_PREFIX: usize = 256;

/// One element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// SQL NULL.
    Null,
    /// A value, in its text form.
    Text(Vec<u8>),
    /// A nested array.
    Array(Vec<Element>),
}

/// Why a string is not an array literal, or an array cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    /// Something else than what the syntax allows here.
    #[error("malformed array literal at byte {0}")]
    Malformed(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("array nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The array literal of `elements`.
pub fn encode(elements: &[Element]) -> Result<Vec<u8>, ArrayError> {
    let mut out = Vec::new();
    encode_into(elements, 1, &mut out)?;
    Ok(out)
}

fn encode_into(elements: &[Element], depth: usize, out: &mut Vec<u8>) -> Result<(), ArrayError> {
    if depth > MAX_DEPTH {
        return Err(ArrayError::TooDeep);
    }
    out.push(b'{');
    for (i, e) in elements.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match e {
            Element::Null => out.extend_from_slice(b"NULL"),
            Element::Array(inner) => encode_into(inner, depth + 1, out)?,
            Element::Text(t) => {
                out.push(b'"');
                for &b in t {
                    if b == b'"' || b == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
    Ok(())
}

/// The elements of the array literal `s`.
pub fn decode(s: &[u8]) -> Result<Vec<Element>, ArrayError> {
    let mut p = Parser { s, pos: 0 };
    p.skip_space();
    if p.peek() == Some(b'[') {
        // A dimension prefix: `[lower:upper]...=`; the elements tell the shape.
        let end = s[p.pos..].iter().take(MAX_DIMENSION_PREFIX).position(|&b| b == b'=');
        let end = end.ok_or(ArrayError::Malformed(p.pos))?;
        if !s[p.pos..p.pos + end].iter().all(|&b| b"[]:-+0123456789 \t\r\n".contains(&b)) {
            return Err(ArrayError::Malformed(p.pos));
        }
        p.pos += end + 1;
        p.skip_space();
    }
    let elements = p.array(1)?;
    p.skip_space();
    if p.pos != s.len() {
        return Err(ArrayError::Malformed(p.pos));
    }
    Ok(elements)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), ArrayError> {
        if self.peek() != Some(b) {
            return Err(ArrayError::Malformed(self.pos));
        }
        self.pos += 1;
        Ok(())
    }

    /// `{ element, ... }` at `depth`.
    fn array(&mut self, depth: usize) -> Result<Vec<Element>, ArrayError> {
        if depth > MAX_DEPTH {
            return Err(ArrayError::TooDeep);
        }
        self.expect(b'{')?;
        let mut out = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            self.skip_space();
            out.push(self.element(depth)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(ArrayError::Malformed(self.pos)),
            }
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, ArrayError> {
        match self.peek() {
            Some(b'{') => Ok(Element::Array(self.array(depth + 1)?)),
            Some(b'"') => {
                self.pos += 1;
                let mut text = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(ArrayError::Malformed(self.pos)),
                        Some(b'"') => {
                            self.pos += 1;
                            return Ok(Element::Text(text));
                        }
                        Some(b'\\') => {
                            let escaped = self.s.get(self.pos + 1).copied();
                            text.push(escaped.ok_or(ArrayError::Malformed(self.pos + 1))?);
                            self.pos += 2;
                        }
                        Some(b) => {
                            text.push(b);
                            self.pos += 1;
                        }
                    }
                }
            }
            _ => {
                // Unquoted: up to a delimiter; trailing white space is not
                // part of it unless escaped.
                let mut text = Vec::new();
                let mut keep = 0;
                let mut escaped_any = false;
                loop {
                    match self.peek() {
                        None | Some(b'{' | b'"') => return Err(ArrayError::Malformed(self.pos)),
                        Some(b',' | b'}') => break,
                        Some(b'\\') => {
                            let escaped = self.s.get(self.pos + 1).copied();
                            text.push(escaped.ok_or(ArrayError::Malformed(self.pos + 1))?);
                            self.pos += 2;
                            keep = text.len();
                            escaped_any = true;
                        }
                        Some(b) => {
                            text.push(b);
                            self.pos += 1;
                            if !is_space(b) {
                                keep = text.len();
                            }
                        }
                    }
                }
                text.truncate(keep);
                if text.is_empty() {
                    return Err(ArrayError::Malformed(self.pos));
                }
                if !escaped_any && text.eq_ignore_ascii_case(b"NULL") {
                    return Ok(Element::Null);
                }
                Ok(Element::Text(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Element {
        Element::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_what_the_server_prints() {
        let cases: &[(&str, Vec<Element>)] = &[
            ("{}", vec![]),
            ("{1,2,3}", vec![t("1"), t("2"), t("3")]),
            ("{a,\"b c\",NULL,\"NULL\"}", vec![t("a"), t("b c"), Element::Null, t("NULL")]),
            ("{\"x\\\"y\",\"back\\\\slash\"}", vec![t("x\"y"), t("back\\slash")]),
            (
                "{{1,2},{3,NULL}}",
                vec![Element::Array(vec![t("1"), t("2")]), Element::Array(vec![t("3"), Element::Null])],
            ),
            ("  { a , b }  ", vec![t("a"), t("b")]),
            ("{a\\,b,c\\ }", vec![t("a,b"), t("c ")]),
            ("{null,Null}", vec![Element::Null, Element::Null]),
            ("[0:1]={x,y}", vec![t("x"), t("y")]),
            ("{\"\"}", vec![t("")]),
            ("{\"{}\"}", vec![t("{}")]),
            ("{ä,\"ö\"}", vec![t("ä"), t("ö")]),
        ];
        for (input, want) in cases {
            assert_eq!(decode(input.as_bytes()).as_ref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_malformed_input() {
        for bad in ["", "{", "}", "{a", "{a,}", "{,a}", "{\"a}", "{a}x", "{a\"b\"}", "x", "{a{b}}", "[1:2]{a}", "{\\"] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "{".repeat(n), "}".repeat(n));
        assert!(decode(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(decode(deep(MAX_DEPTH + 1).as_bytes()), Err(ArrayError::TooDeep));
        assert_eq!(decode(deep(100_000).as_bytes()), Err(ArrayError::TooDeep));
        let mut e = Element::Array(vec![]);
        for _ in 0..MAX_DEPTH {
            e = Element::Array(vec![e]);
        }
        assert_eq!(encode(&[e]), Err(ArrayError::TooDeep));
    }

    #[test]
    fn encodes_and_decodes_back() {
        let cases: Vec<Vec<Element>> = vec![
            vec![],
            vec![t("a"), t("b c"), Element::Null, t("NULL"), t(""), t("q\"uote"), t("back\\slash"), t("{,}")],
            vec![Element::Array(vec![t("1")]), Element::Array(vec![Element::Null, Element::Array(vec![])])],
            vec![Element::Text(vec![0xff, b' ', 0x80])],
        ];
        for c in cases {
            let text = encode(&c).expect("encode");
            assert_eq!(decode(&text), Ok(c.clone()), "{}", text.escape_ascii());
        }
        assert_eq!(encode(&[t("a"), Element::Null, t("x\"y")]).expect("encode"), b"{\"a\",NULL,\"x\\\"y\"}");
    }
}
