//! Replies and their encoding in RESP2 or RESP3.

use bytes::{BufMut, Bytes, BytesMut};

/// A reply to one command, independent of the protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
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
            (map(), 3, b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        ];
        for (reply, protocol, expected) in table {
            assert_eq!(
                encoded(reply.clone(), protocol),
                expected,
                "{reply:?} in RESP{protocol}"
            );
        }
    }
}
