//! Replies and their encoding in RESP2 or RESP3.

use bytes::{BufMut, Bytes, BytesMut};

/// A reply to one command, independent of the protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(&'static str),
    /// A simple string made at run time (e.g. a type name).
    Status(String),
    /// The text after `-`, starting with the error code (`ERR …`, `WRONGTYPE …`).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing array: `*-1` in RESP2, `_` in RESP3.
    NilArray,
    Array(Vec<Reply>),
    /// A map: a flat array in RESP2, `%` in RESP3.
    Map(Vec<(Reply, Reply)>),
    /// A set: an array in RESP2, `~` in RESP3.
    Set(Vec<Reply>),
    /// A double (a sorted set's score): a bulk string in RESP2, `,` in RESP3, both as
    /// Redis 7.0 prints it (`%.17g`, `inf`, `-inf`).
    Double(f64),
    /// A boolean: `:1`/`:0` in RESP2, `#t`/`#f` in RESP3.
    Bool(bool),
    /// A big number's digits: a bulk string in RESP2, `(` in RESP3.
    BigNumber(Bytes),
    /// An out-of-band message (pub/sub): `>` in RESP3, an array in RESP2.
    Push(Vec<Reply>),
    /// Several replies to one command, one after the other (`SUBSCRIBE a b` answers once
    /// per channel).
    Frames(Vec<Reply>),
    /// A verbatim string with its three-letter format (`txt`): a bulk string of the text in
    /// RESP2, `=` in RESP3.
    Verbatim([u8; 3], Bytes),
}

impl Reply {
    pub const OK: Reply = Reply::Simple("OK");

    pub fn bulk(bytes: impl Into<Bytes>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn text(text: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(text.as_bytes()))
    }

    pub fn bulk_or_nil(value: Option<Bytes>) -> Reply {
        value.map_or(Reply::Nil, Reply::Bulk)
    }

    pub fn array_of_bulks(items: impl IntoIterator<Item = Bytes>) -> Reply {
        Reply::Array(items.into_iter().map(Reply::Bulk).collect())
    }

    pub fn int(n: usize) -> Reply {
        Reply::Int(n as i64)
    }

    pub fn bool(b: bool) -> Reply {
        Reply::Int(i64::from(b))
    }

    /// Encodes this reply for a client speaking `protocol` (2 or 3).
    pub fn encode(&self, protocol: u8, out: &mut BytesMut) {
        match self {
            Reply::Simple(text) => line(out, b'+', text.as_bytes()),
            Reply::Status(text) => line(out, b'+', text.as_bytes()),
            Reply::Error(text) => line(out, b'-', text.as_bytes()),
            Reply::Int(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Reply::Bulk(bytes) => {
                line(
                    out,
                    b'$',
                    itoa::Buffer::new().format(bytes.len()).as_bytes(),
                );
                out.reserve(bytes.len() + 2);
                out.put_slice(bytes);
                out.put_slice(b"\r\n");
            }
            Reply::Nil if protocol >= 3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if protocol >= 3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(
                    out,
                    b'*',
                    itoa::Buffer::new().format(items.len()).as_bytes(),
                );
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Set(items) | Reply::Push(items) => {
                let prefix = match (self, protocol >= 3) {
                    (_, false) => b'*',
                    (Reply::Set(_), true) => b'~',
                    _ => b'>',
                };
                line(
                    out,
                    prefix,
                    itoa::Buffer::new().format(items.len()).as_bytes(),
                );
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Double(value) => {
                let text = format_double(*value);
                if protocol >= 3 {
                    line(out, b',', text.as_bytes());
                } else {
                    Reply::Bulk(Bytes::from(text)).encode(protocol, out);
                }
            }
            Reply::Frames(replies) => {
                for reply in replies {
                    reply.encode(protocol, out);
                }
            }
            Reply::Bool(value) if protocol >= 3 => {
                out.put_slice(if *value { b"#t\r\n" } else { b"#f\r\n" })
            }
            Reply::Bool(value) => out.put_slice(if *value { b":1\r\n" } else { b":0\r\n" }),
            Reply::BigNumber(digits) if protocol >= 3 => line(out, b'(', digits),
            Reply::BigNumber(digits) => Reply::Bulk(digits.clone()).encode(protocol, out),
            Reply::Verbatim(format, text) if protocol >= 3 => {
                line(
                    out,
                    b'=',
                    itoa::Buffer::new().format(text.len() + 4).as_bytes(),
                );
                out.reserve(text.len() + 6);
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(_, text) => Reply::Bulk(text.clone()).encode(protocol, out),
            Reply::Map(pairs) => {
                if protocol >= 3 {
                    line(
                        out,
                        b'%',
                        itoa::Buffer::new().format(pairs.len()).as_bytes(),
                    );
                } else {
                    line(
                        out,
                        b'*',
                        itoa::Buffer::new().format(pairs.len() * 2).as_bytes(),
                    );
                }
                for (key, value) in pairs {
                    key.encode(protocol, out);
                    value.encode(protocol, out);
                }
            }
        }
    }
}

/// A double as Redis 7.0 prints a score: C's `%.17g` (17 significant digits, trailing
/// zeros dropped, an exponent below 1e-4 or from 1e17 on), `inf` and `-inf`.
pub fn format_double(value: f64) -> String {
    format_general(value, 17)
}

/// A double as C's `%.<digits>g` prints it (Lua prints its numbers with `%.14g`), with
/// `inf`, `-inf` and `nan` as Redis writes them.
pub fn format_general(value: f64, digits: usize) -> String {
    if value.is_nan() {
        return "nan".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // `digits` significant digits in scientific notation give the digits and the exponent.
    let scientific = format!("{value:.*e}", digits - 1);
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let trim = |text: String| -> String {
        if !text.contains('.') {
            return text;
        }
        let text = text.trim_end_matches('0');
        text.strip_suffix('.').unwrap_or(text).to_string()
    };
    if exponent < -4 || exponent >= digits as i32 {
        let mantissa = trim(mantissa.to_string());
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exponent.abs());
    }
    let decimals = (digits as i32 - 1 - exponent).max(0) as usize;
    trim(format!("{value:.decimals$}"))
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(prefix);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: Reply, protocol: u8) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        out.to_vec()
    }

    #[test]
    fn encodings() {
        let map = || Reply::Map(vec![(Reply::text("f"), Reply::text("v"))]);
        let table: Vec<(Reply, u8, &[u8])> = vec![
            (Reply::OK, 2, b"+OK\r\n"),
            (Reply::Error("ERR nope".into()), 2, b"-ERR nope\r\n"),
            (Reply::Int(-42), 2, b":-42\r\n"),
            (Reply::text("hi"), 2, b"$2\r\nhi\r\n"),
            (Reply::text(""), 2, b"$0\r\n\r\n"),
            (Reply::Nil, 2, b"$-1\r\n"),
            (Reply::Nil, 3, b"_\r\n"),
            (Reply::NilArray, 2, b"*-1\r\n"),
            (
                Reply::Array(vec![Reply::Int(1), Reply::Nil]),
                2,
                b"*2\r\n:1\r\n$-1\r\n",
            ),
            (map(), 2, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            (Reply::Set(vec![Reply::Int(1)]), 2, b"*1\r\n:1\r\n"),
            (Reply::Set(vec![Reply::Int(1)]), 3, b"~1\r\n:1\r\n"),
            (Reply::Double(1.5), 2, b"$3\r\n1.5\r\n"),
            (Reply::Double(1.5), 3, b",1.5\r\n"),
            (Reply::Double(f64::NEG_INFINITY), 3, b",-inf\r\n"),
            (map(), 3, b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
            (Reply::Push(vec![Reply::Int(1)]), 2, b"*1\r\n:1\r\n"),
            (Reply::Push(vec![Reply::Int(1)]), 3, b">1\r\n:1\r\n"),
            (Reply::Bool(true), 2, b":1\r\n"),
            (Reply::Bool(false), 3, b"#f\r\n"),
            (Reply::BigNumber("123".into()), 2, b"$3\r\n123\r\n"),
            (Reply::BigNumber("123".into()), 3, b"(123\r\n"),
            (Reply::Verbatim(*b"txt", "hi".into()), 2, b"$2\r\nhi\r\n"),
            (
                Reply::Verbatim(*b"txt", "hi".into()),
                3,
                b"=6\r\ntxt:hi\r\n",
            ),
        ];
        for (reply, protocol, expected) in table {
            assert_eq!(
                encoded(reply.clone(), protocol),
                expected,
                "{reply:?} in RESP{protocol}"
            );
        }
    }

    #[test]
    fn doubles_print_as_c_prints_them_with_17_digits() {
        // Replies of redis-server 7.0 (ZSCORE).
        let table = [
            (1.1, "1.1000000000000001"),
            (1.3, "1.3"),
            (2.5, "2.5"),
            (0.1, "0.10000000000000001"),
            (100.0, "100"),
            (-3.0, "-3"),
            (1e17, "1e+17"),
            (1.5e20, "1.5e+20"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1.0000000000000001e-05"),
            (f64::INFINITY, "inf"),
            (1e-300, "1e-300"),
            (12345.678, "12345.678"),
        ];
        for (value, text) in table {
            assert_eq!(format_double(value), text, "{value}");
        }
    }

    #[test]
    fn lua_prints_numbers_with_14_digits() {
        // tostring() in redis-server 7.0's Lua.
        let table = [
            (1.0 / 3.0, "0.33333333333333"),
            (1e20, "1e+20"),
            (9007199254740992.0, "9.007199254741e+15"),
            (0.1, "0.1"),
            (42.0, "42"),
        ];
        for (value, text) in table {
            assert_eq!(format_general(value, 14), text, "{value}");
        }
    }
}
