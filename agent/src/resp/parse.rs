//! A cursor over a command's arguments, with Redis' errors for what does not parse.

use bytes::Bytes;

use super::cmd::CmdError;

/// The arguments after the command name.
pub struct Args {
    items: std::vec::IntoIter<Bytes>,
}

impl Args {
    pub fn new(items: Vec<Bytes>) -> Self {
        Args {
            items: items.into_iter(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.items.len()
    }

    /// The arguments not taken yet.
    pub fn as_slice(&self) -> &[Bytes] {
        self.items.as_slice()
    }

    /// The next argument; arity is checked before a command runs, so a missing one is a
    /// syntax error (an option without its value).
    pub fn arg(&mut self) -> Result<Bytes, CmdError> {
        self.items.next().ok_or(CmdError::Syntax)
    }

    pub fn arg_opt(&mut self) -> Option<Bytes> {
        self.items.next()
    }

    /// The next argument as a 64-bit integer.
    pub fn next_i64(&mut self) -> Result<i64, CmdError> {
        parse_int(&self.arg()?)
    }

    /// Everything left.
    pub fn rest(&mut self) -> Vec<Bytes> {
        self.items.by_ref().collect()
    }

    /// Everything left as (field, value) pairs; an odd count is an arity error of `command`.
    pub fn pairs(&mut self, command: &'static str) -> Result<Vec<(Bytes, Bytes)>, CmdError> {
        if !self.remaining().is_multiple_of(2) || self.remaining() == 0 {
            return Err(CmdError::Arity(command));
        }
        let mut pairs = Vec::with_capacity(self.remaining() / 2);
        while let (Some(a), Some(b)) = (self.items.next(), self.items.next()) {
            pairs.push((a, b));
        }
        Ok(pairs)
    }
}

/// Parses an integer argument as Redis does.
pub fn parse_int(bytes: &[u8]) -> Result<i64, CmdError> {
    crate::store::keyspace::parse_i64(bytes).ok_or(CmdError::NotInteger)
}

/// Whether an argument equals an upper-case keyword, ignoring case.
pub fn is(arg: &[u8], keyword: &str) -> bool {
    arg.eq_ignore_ascii_case(keyword.as_bytes())
}
