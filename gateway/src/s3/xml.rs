//! S3 XML: a writer for responses and a small strict reader for the request bodies S3 defines
//! (`CompleteMultipartUpload`, `Delete`, `Tagging`, `CreateBucketConfiguration`). The reader
//! builds an element tree, ignores the XML declaration, comments, namespaces and attributes,
//! decodes the five predefined entities and numeric references, and refuses anything
//! malformed (unbalanced tags, stray text, bad entities, too deep) with a message.

/// Builds an XML document.
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: String,
}

pub const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

impl XmlWriter {
    pub fn new() -> Self {
        XmlWriter {
            out: String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"),
        }
    }

    /// Opens the root element with the S3 namespace.
    pub fn root(&mut self, name: &str) {
        self.out.push_str(&format!("<{name} xmlns=\"{S3_NS}\">"));
    }

    pub fn open(&mut self, name: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
    }

    pub fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    pub fn elem(&mut self, name: &str, text: &str) {
        self.open(name);
        escape_into(&mut self.out, text);
        self.close(name);
    }

    /// Appends markup that is already well-formed.
    pub fn out_raw(&mut self, markup: &str) {
        self.out.push_str(markup);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `s` with the XML special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry literally: as references (S3 does the same).
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {
                out.push_str(&format!("&#x{:X};", c as u32))
            }
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// One element of a parsed document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child called `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of the first child called `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

const MAX_DEPTH: usize = 16;

/// Parses a document; returns the root element.
pub fn parse(input: &[u8]) -> Result<Element, String> {
    let s = std::str::from_utf8(input).map_err(|_| "the document is not UTF-8".to_string())?;
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    let mut p = Parser { s, i: 0 };
    p.skip_misc()?;
    let root = p.element(0)?;
    p.skip_misc()?;
    if p.i != p.s.len() {
        return Err("content after the root element".into());
    }
    Ok(root)
}

struct Parser<'a> {
    s: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }

    fn skip_ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    /// Skips whitespace, the XML declaration, processing instructions and comments.
    fn skip_misc(&mut self) -> Result<(), String> {
        loop {
            self.skip_ws();
            if self.rest().starts_with("<?") {
                let end = self.rest().find("?>").ok_or("unterminated declaration")?;
                self.i += end + 2;
            } else if self.rest().starts_with("<!--") {
                let end = self.rest().find("-->").ok_or("unterminated comment")?;
                self.i += end + 3;
            } else if self.rest().starts_with("<!") {
                return Err("DOCTYPE and CDATA are not accepted here".into());
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let r = self.rest();
        let n = r
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(r.len());
        if n == 0 {
            return Err("an element without a name".into());
        }
        let name = r[..n].to_string();
        if name.contains(['<', '&', '"', '\'', '=']) {
            return Err(format!("bad element name {name:?}"));
        }
        self.i += n;
        // Drop a namespace prefix.
        Ok(name.rsplit(':').next().unwrap_or(&name).to_string())
    }

    /// Skips attributes up to `>` or `/>`; returns true for an empty element.
    fn attrs(&mut self) -> Result<bool, String> {
        loop {
            self.skip_ws();
            let r = self.rest();
            if r.starts_with("/>") {
                self.i += 2;
                return Ok(true);
            }
            if r.starts_with('>') {
                self.i += 1;
                return Ok(false);
            }
            let eq = r.find('=').ok_or("an attribute without a value")?;
            self.i += eq + 1;
            self.skip_ws();
            let q = self
                .rest()
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or("an attribute value without quotes")?;
            self.i += 1;
            let end = self.rest().find(q).ok_or("unterminated attribute value")?;
            self.i += end + 1;
        }
    }

    fn element(&mut self, depth: usize) -> Result<Element, String> {
        if depth > MAX_DEPTH {
            return Err("the document is nested too deeply".into());
        }
        if !self.rest().starts_with('<') {
            return Err("expected an element".into());
        }
        self.i += 1;
        let name = self.name()?;
        let mut el = Element {
            name,
            ..Default::default()
        };
        if self.attrs()? {
            return Ok(el);
        }
        loop {
            let r = self.rest();
            if r.is_empty() {
                return Err(format!("element <{}> is not closed", el.name));
            }
            if r.starts_with("</") {
                self.i += 2;
                let n = self.name()?;
                self.skip_ws();
                if !self.rest().starts_with('>') {
                    return Err("malformed closing tag".into());
                }
                self.i += 1;
                if n != el.name {
                    return Err(format!("<{}> closed by </{n}>", el.name));
                }
                if !el.children.is_empty() {
                    if !el.text.trim().is_empty() {
                        return Err(format!("text mixed with elements in <{}>", el.name));
                    }
                    el.text.clear();
                }
                return Ok(el);
            }
            if r.starts_with("<!--") {
                let end = r.find("-->").ok_or("unterminated comment")?;
                self.i += end + 3;
                continue;
            }
            if r.starts_with("<![CDATA[") {
                let end = r.find("]]>").ok_or("unterminated CDATA")?;
                el.text.push_str(&r[9..end]);
                self.i += end + 3;
                continue;
            }
            if r.starts_with('<') {
                let child = self.element(depth + 1)?;
                el.children.push(child);
                continue;
            }
            let end = r.find('<').unwrap_or(r.len());
            decode_into(&mut el.text, &r[..end])?;
            self.i += end;
        }
    }
}

fn decode_into(out: &mut String, s: &str) -> Result<(), String> {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';').ok_or("an unterminated entity")?;
        let ent = &after[..semi];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{e};"))?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad character reference &{e};"))?,
            e => return Err(format!("unknown entity &{e};")),
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_bodies_and_refuses_malformed_ones() {
        let doc = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Part><PartNumber>1</PartNumber><ETag>"a&amp;b"</ETag></Part>
  <!-- c -->
  <Part><PartNumber>2</PartNumber><ETag>&quot;x&#x41;&#66;&quot;</ETag></Part>
</CompleteMultipartUpload>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "CompleteMultipartUpload");
        let parts: Vec<_> = root.all("Part").collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].child_text("ETag"), Some("\"a&b\""));
        assert_eq!(parts[1].child_text("ETag"), Some("\"xAB\""));
        assert_eq!(parse(b"<a><b/></a>").unwrap().children.len(), 1);
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"<a></a><b></b>",
            b"<a>&bogus;</a>",
            b"not xml",
            b"",
            b"<a>x<b/></a>",
            b"<!DOCTYPE a><a/>",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "<a>".repeat(40) + &"</a>".repeat(40);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writer_escapes() {
        let mut w = XmlWriter::new();
        w.elem("Key", "a<b>&\"c'\u{1}");
        assert!(
            w.finish()
                .ends_with("<Key>a&lt;b&gt;&amp;&quot;c&apos;&#x1;</Key>")
        );
    }
}
