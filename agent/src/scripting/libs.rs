//! The libraries Redis gives scripts besides Lua's own: `bit` (LuaBitOp), `cjson`,
//! `cmsgpack` and `struct`, with the behaviour scripts written for Redis rely on.
//!
//! Functions that can fail return `(true, values...)` or `(false, message)`; the sandbox
//! wraps them so that a failure is raised as a string error, as a C library would.

use bytes::{BufMut, BytesMut};
use mlua::{LightUserData, Lua, MultiValue, Table, Value};

use crate::resp::reply::format_general;

/// Deepest nesting `cjson` and `cmsgpack` encode or decode (as `cjson`'s default).
const MAX_DEPTH: usize = 1000;

/// Registers the raw libraries as globals `__bit`, `__cjson`, `__cmsgpack` and
/// `__struct`, for the sandbox to wrap.
///
/// # Errors
/// When Lua runs out of memory.
pub fn register(lua: &Lua) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.raw_set("__bit", bit(lua)?)?;
    globals.raw_set("__cjson", cjson(lua)?)?;
    globals.raw_set("__cmsgpack", cmsgpack(lua)?)?;
    globals.raw_set("__struct", structs(lua)?)?;
    Ok(())
}

type Outcome = Result<MultiValue, String>;

/// A library function in the `(ok, ...)` convention.
fn fallible(
    lua: &Lua,
    f: impl Fn(&Lua, MultiValue) -> mlua::Result<Outcome> + Send + 'static,
) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, args: MultiValue| {
        Ok(match f(lua, args)? {
            Ok(mut values) => {
                values.push_front(Value::Boolean(true));
                values
            }
            Err(message) => MultiValue::from_vec(vec![
                Value::Boolean(false),
                Value::String(lua.create_string(message)?),
            ]),
        })
    })
}

/// One string as a function's results.
fn one_string(lua: &Lua, bytes: impl AsRef<[u8]>) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![Value::String(
        lua.create_string(bytes)?,
    )]))
}

fn arg_error(n: usize, name: &str, expected: &str, got: Option<&Value>) -> String {
    format!(
        "bad argument #{n} to '{name}' ({expected} expected, got {})",
        got.map_or("no value", Value::type_name)
    )
}

/// Argument `n` (from 1) as bytes, or Lua's error for one that is not a string.
fn string_arg(args: &MultiValue, n: usize, name: &str) -> Result<Vec<u8>, String> {
    match args.get(n - 1) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        other => Err(arg_error(n, name, "string", other)),
    }
}

fn number_arg(args: &MultiValue, n: usize, name: &str) -> Result<f64, String> {
    match args.get(n - 1) {
        Some(Value::Integer(i)) => Ok(*i as f64),
        Some(Value::Number(x)) => Ok(*x),
        Some(Value::String(s)) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| arg_error(n, name, "number", args.get(n - 1))),
        other => Err(arg_error(n, name, "number", other)),
    }
}

/// LuaBitOp: numbers as 32-bit two's complement integers.
fn bit(lua: &Lua) -> mlua::Result<Table> {
    fn tobit(x: f64) -> i32 {
        // As LuaBitOp: the number modulo 2^32, rounded to an integer.
        (x.round() as i64) as i32
    }
    let table = lua.create_table()?;
    let unary = |name: &'static str, op: fn(i32) -> i32| {
        fallible(lua, move |_, args| {
            Ok(number_arg(&args, 1, name)
                .map(|x| MultiValue::from_vec(vec![Value::Number(f64::from(op(tobit(x))))])))
        })
    };
    table.raw_set("tobit", unary("tobit", |x| x)?)?;
    table.raw_set("bnot", unary("bnot", |x| !x)?)?;
    table.raw_set("bswap", unary("bswap", i32::swap_bytes)?)?;
    let fold = |name: &'static str, op: fn(i32, i32) -> i32| {
        fallible(lua, move |_, args| {
            let mut acc = match number_arg(&args, 1, name) {
                Ok(x) => tobit(x),
                Err(e) => return Ok(Err(e)),
            };
            for n in 2..=args.len() {
                match number_arg(&args, n, name) {
                    Ok(x) => acc = op(acc, tobit(x)),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Ok(MultiValue::from_vec(vec![Value::Number(f64::from(
                acc,
            ))])))
        })
    };
    table.raw_set("band", fold("band", |a, b| a & b)?)?;
    table.raw_set("bor", fold("bor", |a, b| a | b)?)?;
    table.raw_set("bxor", fold("bxor", |a, b| a ^ b)?)?;
    let shift = |name: &'static str, op: fn(i32, u32) -> i32| {
        fallible(lua, move |_, args| {
            let x = number_arg(&args, 1, name);
            let n = number_arg(&args, 2, name);
            Ok(x.and_then(|x| {
                n.map(|n| {
                    let result = op(tobit(x), (tobit(n) & 31) as u32);
                    MultiValue::from_vec(vec![Value::Number(f64::from(result))])
                })
            }))
        })
    };
    table.raw_set("lshift", shift("lshift", |x, n| ((x as u32) << n) as i32)?)?;
    table.raw_set("rshift", shift("rshift", |x, n| ((x as u32) >> n) as i32)?)?;
    table.raw_set("arshift", shift("arshift", |x, n| x >> n)?)?;
    table.raw_set(
        "rol",
        shift("rol", |x, n| (x as u32).rotate_left(n) as i32)?,
    )?;
    table.raw_set(
        "ror",
        shift("ror", |x, n| (x as u32).rotate_right(n) as i32)?,
    )?;
    table.raw_set(
        "tohex",
        fallible(lua, |lua, args| {
            let x = match number_arg(&args, 1, "tohex") {
                Ok(x) => tobit(x) as u32,
                Err(e) => return Ok(Err(e)),
            };
            let n = if args.len() >= 2 {
                match number_arg(&args, 2, "tohex") {
                    Ok(n) => tobit(n),
                    Err(e) => return Ok(Err(e)),
                }
            } else {
                8
            };
            let upper = n < 0;
            let digits = n.unsigned_abs().min(8) as usize;
            let text = format!("{x:08x}");
            let mut text = text[8 - digits..].to_string();
            if upper {
                text = text.to_uppercase();
            }
            Ok(Ok(one_string(lua, text)?))
        })?,
    )?;
    Ok(table)
}

/// `cjson.encode`, `cjson.decode` and `cjson.null`, with lua-cjson's defaults: numbers
/// printed with 14 digits, `/` escaped, an empty table as `{}`, a sparse array refused.
fn cjson(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.raw_set(
        "null",
        Value::LightUserData(LightUserData(std::ptr::null_mut())),
    )?;
    table.raw_set(
        "encode",
        fallible(lua, |lua, args| {
            if args.len() != 1 {
                return Ok(Err("expected 1 argument".into()));
            }
            let mut out = Vec::new();
            Ok(match json_encode(&args[0], &mut out, 0) {
                Ok(()) => Ok(one_string(lua, out)?),
                Err(e) => Err(e),
            })
        })?,
    )?;
    table.raw_set(
        "decode",
        fallible(lua, |lua, args| {
            let bytes = match string_arg(&args, 1, "decode") {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(e)),
            };
            let parsed: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(value) => value,
                Err(err) => {
                    return Ok(Err(format!(
                        "Expected value but found invalid token at character {}",
                        err.column()
                    )));
                }
            };
            Ok(Ok(MultiValue::from_vec(vec![json_to_lua(
                lua, &parsed, 0,
            )?])))
        })?,
    )?;
    Ok(table)
}

fn json_encode(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("Cannot serialise, excessive nesting ({})", depth));
    }
    match value {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::LightUserData(ud) if ud.0.is_null() => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(n) => out.extend_from_slice(format_general(*n as f64, 14).as_bytes()),
        Value::Number(n) if !n.is_finite() => {
            return Err("Cannot serialise number: must not be NaN or Inf".into());
        }
        Value::Number(n) => out.extend_from_slice(format_general(*n, 14).as_bytes()),
        Value::String(s) => json_string(&s.as_bytes(), out),
        Value::Table(table) => {
            let length = array_length(table)?;
            if let Some(length) = length.filter(|&n| n > 0) {
                out.push(b'[');
                for i in 1..=length {
                    if i > 1 {
                        out.push(b',');
                    }
                    let item: Value = table.raw_get(i).map_err(|e| e.to_string())?;
                    json_encode(&item, out, depth + 1)?;
                }
                out.push(b']');
            } else {
                out.push(b'{');
                let mut first = true;
                for pair in table.pairs::<Value, Value>() {
                    let (key, item) = pair.map_err(|e| e.to_string())?;
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    match &key {
                        Value::String(s) => json_string(&s.as_bytes(), out),
                        Value::Integer(n) => {
                            json_string(format_general(*n as f64, 14).as_bytes(), out)
                        }
                        Value::Number(n) => json_string(format_general(*n, 14).as_bytes(), out),
                        _ => {
                            return Err(
                                "Cannot serialise table: table key must be a number or string"
                                    .into(),
                            );
                        }
                    }
                    out.push(b':');
                    json_encode(&item, out, depth + 1)?;
                }
                out.push(b'}');
            }
        }
        other => {
            return Err(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            ));
        }
    }
    Ok(())
}

/// The length of a table that is an array (keys 1..n, not too sparse), as lua-cjson
/// decides it: `None` for a table with other keys.
fn array_length(table: &Table) -> Result<Option<usize>, String> {
    let mut max = 0usize;
    let mut items = 0usize;
    for pair in table.pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| e.to_string())?;
        let index = match key {
            Value::Integer(n) if n >= 1 => n as usize,
            Value::Number(n) if n >= 1.0 && n.fract() == 0.0 => n as usize,
            _ => return Ok(None),
        };
        max = max.max(index);
        items += 1;
    }
    if max > 10 && max > items * 2 {
        return Err("Cannot serialise table: excessively sparse array".into());
    }
    Ok(Some(max))
}

fn json_string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b if b < 0x20 || b == 0x7f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            // Bytes past ASCII pass through as they are, as lua-cjson passes them.
            b => out.push(b),
        }
    }
    out.push(b'"');
}

fn json_to_lua(lua: &Lua, value: &serde_json::Value, depth: usize) -> mlua::Result<Value> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::RuntimeError(
            "Found too many nested data structures".into(),
        ));
    }
    Ok(match value {
        serde_json::Value::Null => Value::LightUserData(LightUserData(std::ptr::null_mut())),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let table = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                table.raw_set(i + 1, json_to_lua(lua, item, depth + 1)?)?;
            }
            Value::Table(table)
        }
        serde_json::Value::Object(map) => {
            let table = lua.create_table_with_capacity(0, map.len())?;
            for (key, item) in map {
                table.raw_set(key.as_str(), json_to_lua(lua, item, depth + 1)?)?;
            }
            Value::Table(table)
        }
    })
}

/// `cmsgpack.pack(...)` and `cmsgpack.unpack(data)`, encoding as lua-cmsgpack does:
/// whole numbers as the smallest integer, others as float or double, strings as raw,
/// tables with keys 1..n as arrays and others as maps.
fn cmsgpack(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.raw_set(
        "pack",
        fallible(lua, |lua, args| {
            if args.is_empty() {
                return Ok(Err("MessagePack pack needs input.".into()));
            }
            let mut out = BytesMut::new();
            for value in args.iter() {
                if let Err(e) = msgpack_encode(value, &mut out, 0) {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(one_string(lua, &out)?))
        })?,
    )?;
    table.raw_set(
        "unpack",
        fallible(lua, |lua, args| {
            let data = match string_arg(&args, 1, "unpack") {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(e)),
            };
            let mut at = 0;
            let mut values = Vec::new();
            while at < data.len() {
                match msgpack_decode(lua, &data, &mut at, 0)? {
                    Some(value) => values.push(value),
                    None => return Ok(Err("Missing bytes in input.".into())),
                }
            }
            Ok(Ok(MultiValue::from_vec(values)))
        })?,
    )?;
    Ok(table)
}

fn msgpack_encode(value: &Value, out: &mut BytesMut, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        out.put_u8(0xc0);
        return Ok(());
    }
    match value {
        Value::Nil => out.put_u8(0xc0),
        Value::Boolean(b) => out.put_u8(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(n) => msgpack_int(*n, out),
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => msgpack_int(*n as i64, out),
        Value::Number(n) => {
            let single = *n as f32;
            if f64::from(single) == *n {
                out.put_u8(0xca);
                out.put_f32(single);
            } else {
                out.put_u8(0xcb);
                out.put_f64(*n);
            }
        }
        Value::String(s) => {
            let bytes = s.as_bytes();
            let len = bytes.len();
            if len < 32 {
                out.put_u8(0xa0 | len as u8);
            } else if len <= 0xff {
                out.put_u8(0xd9);
                out.put_u8(len as u8);
            } else if len <= 0xffff {
                out.put_u8(0xda);
                out.put_u16(len as u16);
            } else {
                out.put_u8(0xdb);
                out.put_u32(len as u32);
            }
            out.put_slice(&bytes);
        }
        Value::Table(table) => {
            let length = table.raw_len();
            let pairs: Vec<(Value, Value)> = table
                .pairs::<Value, Value>()
                .filter_map(Result::ok)
                .collect();
            let is_array = pairs.len() == length;
            if is_array {
                msgpack_len(length, 0x90, 0xdc, out);
                for i in 1..=length {
                    let item: Value = table.raw_get(i).map_err(|e| e.to_string())?;
                    msgpack_encode(&item, out, depth + 1)?;
                }
            } else {
                msgpack_len(pairs.len(), 0x80, 0xde, out);
                for (key, item) in &pairs {
                    msgpack_encode(key, out, depth + 1)?;
                    msgpack_encode(item, out, depth + 1)?;
                }
            }
        }
        // Functions, userdata and the like pack as nil, as lua-cmsgpack does.
        _ => out.put_u8(0xc0),
    }
    Ok(())
}

fn msgpack_len(len: usize, fix: u8, wide: u8, out: &mut BytesMut) {
    if len < 16 {
        out.put_u8(fix | len as u8);
    } else if len <= 0xffff {
        out.put_u8(wide);
        out.put_u16(len as u16);
    } else {
        out.put_u8(wide + 1);
        out.put_u32(len as u32);
    }
}

fn msgpack_int(n: i64, out: &mut BytesMut) {
    if n >= 0 {
        if n <= 127 {
            out.put_u8(n as u8);
        } else if n <= 0xff {
            out.put_u8(0xcc);
            out.put_u8(n as u8);
        } else if n <= 0xffff {
            out.put_u8(0xcd);
            out.put_u16(n as u16);
        } else if n <= 0xffff_ffff {
            out.put_u8(0xce);
            out.put_u32(n as u32);
        } else {
            out.put_u8(0xcf);
            out.put_u64(n as u64);
        }
    } else if n >= -32 {
        out.put_i8(n as i8);
    } else if n >= -128 {
        out.put_u8(0xd0);
        out.put_i8(n as i8);
    } else if n >= -32768 {
        out.put_u8(0xd1);
        out.put_i16(n as i16);
    } else if n >= -2_147_483_648 {
        out.put_u8(0xd2);
        out.put_i32(n as i32);
    } else {
        out.put_u8(0xd3);
        out.put_i64(n);
    }
}

/// One value from `data` at `at`; `None` when the data ends inside it.
fn msgpack_decode(
    lua: &Lua,
    data: &[u8],
    at: &mut usize,
    depth: usize,
) -> mlua::Result<Option<Value>> {
    fn take<'a>(data: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
        let slice = data.get(*at..*at + n)?;
        *at += n;
        Some(slice)
    }
    fn uint(data: &[u8], at: &mut usize, n: usize) -> Option<u64> {
        take(data, at, n).map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }
    if depth > MAX_DEPTH {
        return Err(mlua::Error::RuntimeError(
            "Too many nested data structures".into(),
        ));
    }
    let Some(&kind) = data.get(*at) else {
        return Ok(None);
    };
    *at += 1;
    let number = |n: f64| Ok(Some(Value::Number(n)));
    let string = |at: &mut usize, len: Option<u64>| -> mlua::Result<Option<Value>> {
        let Some(len) = len else { return Ok(None) };
        match take(data, at, len as usize) {
            Some(bytes) => Ok(Some(Value::String(lua.create_string(bytes)?))),
            None => Ok(None),
        }
    };
    let array = |at: &mut usize, len: Option<u64>| -> mlua::Result<Option<Value>> {
        let Some(len) = len else { return Ok(None) };
        let table = lua.create_table()?;
        for i in 0..len {
            match msgpack_decode(lua, data, at, depth + 1)? {
                Some(item) => table.raw_set(i + 1, item)?,
                None => return Ok(None),
            }
        }
        Ok(Some(Value::Table(table)))
    };
    let map = |at: &mut usize, len: Option<u64>| -> mlua::Result<Option<Value>> {
        let Some(len) = len else { return Ok(None) };
        let table = lua.create_table()?;
        for _ in 0..len {
            let (Some(key), Some(item)) = (
                msgpack_decode(lua, data, at, depth + 1)?,
                msgpack_decode(lua, data, at, depth + 1)?,
            ) else {
                return Ok(None);
            };
            if !matches!(key, Value::Nil) {
                table.raw_set(key, item)?;
            }
        }
        Ok(Some(Value::Table(table)))
    };
    match kind {
        0x00..=0x7f => number(f64::from(kind)),
        0xe0..=0xff => number(f64::from(kind as i8)),
        0x80..=0x8f => map(at, Some(u64::from(kind & 0x0f))),
        0x90..=0x9f => array(at, Some(u64::from(kind & 0x0f))),
        0xa0..=0xbf => string(at, Some(u64::from(kind & 0x1f))),
        0xc0 => Ok(Some(Value::Nil)),
        0xc2 => Ok(Some(Value::Boolean(false))),
        0xc3 => Ok(Some(Value::Boolean(true))),
        0xc4 | 0xd9 => {
            let len = uint(data, at, 1);
            string(at, len)
        }
        0xc5 | 0xda => {
            let len = uint(data, at, 2);
            string(at, len)
        }
        0xc6 | 0xdb => {
            let len = uint(data, at, 4);
            string(at, len)
        }
        0xca => Ok(take(data, at, 4)
            .map(|b| Value::Number(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))))),
        0xcb => Ok(take(data, at, 8)
            .map(|b| Value::Number(f64::from_be_bytes(b.try_into().unwrap_or([0; 8]))))),
        0xcc => Ok(uint(data, at, 1).map(|n| Value::Number(n as f64))),
        0xcd => Ok(uint(data, at, 2).map(|n| Value::Number(n as f64))),
        0xce => Ok(uint(data, at, 4).map(|n| Value::Number(n as f64))),
        0xcf => Ok(uint(data, at, 8).map(|n| Value::Number(n as f64))),
        0xd0 => Ok(uint(data, at, 1).map(|n| Value::Number(f64::from(n as u8 as i8)))),
        0xd1 => Ok(uint(data, at, 2).map(|n| Value::Number(f64::from(n as u16 as i16)))),
        0xd2 => Ok(uint(data, at, 4).map(|n| Value::Number(f64::from(n as u32 as i32)))),
        0xd3 => Ok(uint(data, at, 8).map(|n| Value::Number(n as i64 as f64))),
        0xdc => {
            let len = uint(data, at, 2);
            array(at, len)
        }
        0xdd => {
            let len = uint(data, at, 4);
            array(at, len)
        }
        0xde => {
            let len = uint(data, at, 2);
            map(at, len)
        }
        0xdf => {
            let len = uint(data, at, 4);
            map(at, len)
        }
        _ => Err(mlua::Error::RuntimeError(
            "Bad data format in input.".into(),
        )),
    }
}

/// `struct.pack(format, ...)`, `struct.unpack(format, data [, init])` and
/// `struct.size(format)`: Roberto Ierusalimschy's struct library (`<` `>` `!` `=`
/// endianness, `b B h H l L T i I`[n] integers, `f d n` floats, `s` zero-terminated,
/// `c`[n] fixed, `x` padding).
fn structs(lua: &Lua) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    table.raw_set(
        "pack",
        fallible(lua, |lua, args| {
            let format = match string_arg(&args, 1, "pack") {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(e)),
            };
            let mut out = Vec::new();
            let mut next = 1;
            let mut little = true;
            for item in StructFormat::new(&format) {
                match item {
                    Err(e) => return Ok(Err(e)),
                    Ok(StructItem::Endian(l)) => little = l,
                    Ok(StructItem::Pad) => out.push(0),
                    Ok(StructItem::Int { size, .. }) => {
                        next += 1;
                        let x = match number_arg(&args, next, "pack") {
                            Ok(x) => x as i64,
                            Err(e) => return Ok(Err(e)),
                        };
                        let bytes = x.to_le_bytes();
                        let mut field: Vec<u8> = bytes[..size.min(8)].to_vec();
                        field.resize(size, if x < 0 { 0xff } else { 0 });
                        if !little {
                            field.reverse();
                        }
                        out.extend(field);
                    }
                    Ok(StructItem::Float(size)) => {
                        next += 1;
                        let x = match number_arg(&args, next, "pack") {
                            Ok(x) => x,
                            Err(e) => return Ok(Err(e)),
                        };
                        let mut field = if size == 4 {
                            (x as f32).to_le_bytes().to_vec()
                        } else {
                            x.to_le_bytes().to_vec()
                        };
                        if !little {
                            field.reverse();
                        }
                        out.extend(field);
                    }
                    Ok(StructItem::Chars(len)) => {
                        next += 1;
                        let Some(Value::String(s)) = args.get(next - 1) else {
                            return Ok(Err(arg_error(next, "pack", "string", args.get(next - 1))));
                        };
                        let bytes = s.as_bytes();
                        let len = len.unwrap_or(bytes.len());
                        if bytes.len() < len {
                            return Ok(Err(format!(
                                "bad argument #{next} to 'pack' (string too short)"
                            )));
                        }
                        out.extend_from_slice(&bytes[..len]);
                    }
                    Ok(StructItem::Zstring) => {
                        next += 1;
                        let Some(Value::String(s)) = args.get(next - 1) else {
                            return Ok(Err(arg_error(next, "pack", "string", args.get(next - 1))));
                        };
                        let bytes = s.as_bytes();
                        if bytes.contains(&0) {
                            return Ok(Err(format!(
                                "bad argument #{next} to 'pack' (string contains zeros)"
                            )));
                        }
                        out.extend_from_slice(&bytes);
                        out.push(0);
                    }
                }
            }
            Ok(Ok(one_string(lua, &out)?))
        })?,
    )?;
    table.raw_set(
        "unpack",
        fallible(lua, |lua, args| {
            let (Some(Value::String(format)), Some(Value::String(data))) =
                (args.front(), args.get(1))
            else {
                return Ok(Err(arg_error(
                    if matches!(args.front(), Some(Value::String(_))) {
                        2
                    } else {
                        1
                    },
                    "unpack",
                    "string",
                    None,
                )));
            };
            let format = format.as_bytes().to_vec();
            let data = data.as_bytes().to_vec();
            let mut at = match args.get(2) {
                None | Some(Value::Nil) => 0,
                Some(_) => match number_arg(&args, 3, "unpack") {
                    Ok(init) if init >= 1.0 => init as usize - 1,
                    Ok(_) => {
                        return Ok(Err(
                            "bad argument #3 to 'unpack' (offset must be 1 or greater)".into(),
                        ));
                    }
                    Err(e) => return Ok(Err(e)),
                },
            };
            let mut little = true;
            let mut values = Vec::new();
            let short = || Err("bad argument #2 to 'unpack' (data string too short)".to_string());
            for item in StructFormat::new(&format) {
                match item {
                    Err(e) => return Ok(Err(e)),
                    Ok(StructItem::Endian(l)) => little = l,
                    Ok(StructItem::Pad) => at += 1,
                    Ok(StructItem::Int { size, signed }) => {
                        let Some(field) = data.get(at..at + size) else {
                            return Ok(short());
                        };
                        let mut field = field.to_vec();
                        if !little {
                            field.reverse();
                        }
                        let mut value: u64 = 0;
                        for (i, byte) in field.iter().take(8).enumerate() {
                            value |= u64::from(*byte) << (8 * i);
                        }
                        let number = if signed && size < 8 && size > 0 {
                            let shift = 64 - 8 * size as u32;
                            (((value << shift) as i64) >> shift) as f64
                        } else if signed {
                            value as i64 as f64
                        } else {
                            value as f64
                        };
                        values.push(Value::Number(number));
                        at += size;
                    }
                    Ok(StructItem::Float(size)) => {
                        let Some(field) = data.get(at..at + size) else {
                            return Ok(short());
                        };
                        let mut field = field.to_vec();
                        if !little {
                            field.reverse();
                        }
                        let number = if size == 4 {
                            f64::from(f32::from_le_bytes(field.try_into().unwrap_or([0; 4])))
                        } else {
                            f64::from_le_bytes(field.try_into().unwrap_or([0; 8]))
                        };
                        values.push(Value::Number(number));
                        at += size;
                    }
                    Ok(StructItem::Chars(len)) => {
                        let len = match len {
                            Some(len) => len,
                            None => match values.pop() {
                                Some(Value::Number(n)) => n as usize,
                                _ => return Ok(Err("format 'c0' needs a previous size".into())),
                            },
                        };
                        let Some(field) = data.get(at..at + len) else {
                            return Ok(short());
                        };
                        values.push(Value::String(lua.create_string(field)?));
                        at += len;
                    }
                    Ok(StructItem::Zstring) => {
                        let Some(end) = data
                            .get(at..)
                            .and_then(|rest| rest.iter().position(|&b| b == 0))
                        else {
                            return Ok(Err("unfinished string in data".into()));
                        };
                        values.push(Value::String(lua.create_string(&data[at..at + end])?));
                        at += end + 1;
                    }
                }
            }
            values.push(Value::Number((at + 1) as f64));
            Ok(Ok(MultiValue::from_vec(values)))
        })?,
    )?;
    table.raw_set(
        "size",
        fallible(lua, |_, args| {
            let format = match string_arg(&args, 1, "size") {
                Ok(bytes) => bytes,
                Err(e) => return Ok(Err(e)),
            };
            let mut size = 0usize;
            for item in StructFormat::new(&format) {
                match item {
                    Err(e) => return Ok(Err(e)),
                    Ok(StructItem::Endian(_)) => {}
                    Ok(StructItem::Pad) => size += 1,
                    Ok(StructItem::Int { size: n, .. } | StructItem::Float(n)) => size += n,
                    Ok(StructItem::Chars(Some(n))) => size += n,
                    Ok(StructItem::Chars(None) | StructItem::Zstring) => {
                        return Ok(Err("options 'c0' - 's' have undefined sizes".into()));
                    }
                }
            }
            Ok(Ok(MultiValue::from_vec(vec![Value::Number(size as f64)])))
        })?,
    )?;
    Ok(table)
}

enum StructItem {
    Endian(bool),
    Pad,
    Int {
        size: usize,
        signed: bool,
    },
    Float(usize),
    /// `c<n>`; `c0` (`None`) takes its length from the previous value.
    Chars(Option<usize>),
    Zstring,
}

struct StructFormat<'a> {
    format: &'a [u8],
    at: usize,
}

impl<'a> StructFormat<'a> {
    fn new(format: &'a [u8]) -> Self {
        StructFormat { format, at: 0 }
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.at;
        while self.format.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        std::str::from_utf8(&self.format[start..self.at])
            .ok()
            .and_then(|s| s.parse().ok())
    }
}

impl Iterator for StructFormat<'_> {
    type Item = Result<StructItem, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let &option = self.format.get(self.at)?;
            self.at += 1;
            let int = |size, signed| Some(Ok(StructItem::Int { size, signed }));
            return match option {
                b' ' => continue,
                b'<' | b'=' => Some(Ok(StructItem::Endian(true))),
                b'>' => Some(Ok(StructItem::Endian(false))),
                b'!' => {
                    let _ = self.number();
                    continue;
                }
                b'x' => Some(Ok(StructItem::Pad)),
                b'b' => int(1, true),
                b'B' => int(1, false),
                b'h' => int(2, true),
                b'H' => int(2, false),
                b'l' => int(8, true),
                b'L' | b'T' => int(8, false),
                b'i' | b'I' => {
                    let size = self.number().unwrap_or(4);
                    if !(1..=8).contains(&size) {
                        return Some(Err(format!(
                            "integral size {size} is larger than limit of 8"
                        )));
                    }
                    int(size, option == b'i')
                }
                b'f' => Some(Ok(StructItem::Float(4))),
                b'd' | b'n' => Some(Ok(StructItem::Float(8))),
                b'c' => {
                    let n = self.number().unwrap_or(1);
                    Some(Ok(StructItem::Chars((n > 0).then_some(n))))
                }
                b's' => Some(Ok(StructItem::Zstring)),
                other => Some(Err(format!(
                    "invalid format option '{}'",
                    char::from(other)
                ))),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval<R: mlua::FromLuaMulti>(code: &str) -> R {
        let lua = Lua::new();
        register(&lua).unwrap();
        lua.load(code).eval().unwrap()
    }

    #[test]
    fn bit_operations_on_32_bit_integers() {
        let (a, b, c, d): (f64, f64, String, f64) = eval(
            "local _, a = __bit.band(0xff, 0x0f) local _, b = __bit.bnot(0) \
             local _, c = __bit.tohex(255, -4) local _, d = __bit.lshift(1, 31) return a, b, c, d",
        );
        assert_eq!((a, b, c.as_str(), d), (15.0, -1.0, "00FF", -2147483648.0));
    }

    #[test]
    fn cjson_encodes_as_lua_cjson_and_decodes_back() {
        let text: String = eval("local _, s = __cjson.encode({1, 2.5, 'a/b', true}) return s");
        assert_eq!(text, r#"[1,2.5,"a\/b",true]"#);
        let text: String = eval("local _, s = __cjson.encode({}) return s");
        assert_eq!(text, "{}");
        let (ok, message): (bool, String) = eval("return __cjson.encode({[1] = 1, [100] = 2})");
        assert!(!ok);
        assert_eq!(message, "Cannot serialise table: excessively sparse array");
        let value: f64 =
            eval(r#"local _, t = __cjson.decode('{"a":[1,2,{"b":3}]}') return t.a[3].b"#);
        assert_eq!(value, 3.0);
    }

    #[test]
    fn cmsgpack_round_trips_and_uses_the_smallest_encodings() {
        let hex: String = eval(
            "local _, s = __cmsgpack.pack({1, -1, 300, 'hi', 1.5}) \
             return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end))",
        );
        assert_eq!(hex, "9501ffcd012ca26869ca3fc00000");
        let (a, b): (String, f64) = eval(
            "local _, s = __cmsgpack.pack({x = 'y'}, 7) local _, t, n = __cmsgpack.unpack(s) return t.x, n",
        );
        assert_eq!((a.as_str(), b), ("y", 7.0));
    }

    #[test]
    fn struct_packs_and_unpacks() {
        let (a, b, c, next): (f64, f64, String, f64) = eval(
            "local _, s = __struct.pack('>I2i4s', 258, -2, 'ab') \
             local _, a, b, c, n = __struct.unpack('>I2i4s', s) return a, b, c, n",
        );
        assert_eq!((a, b, c.as_str(), next), (258.0, -2.0, "ab", 10.0));
        let size: f64 = eval("local _, n = __struct.size('<hId') return n");
        assert_eq!(size, 14.0);
    }
}
